"""Unit tests of the pusher's layout reading, graph walk, names and image choice (no S3)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from stratus.oci.descriptor import parse_descriptor
from stratus.oci.manifest import parse_manifest
from stratus.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, OCTET_STREAM
from stratus.push.errors import (
    BlobMissing,
    DigestMismatch,
    ImageNotChosen,
    InvalidImageReference,
    LayoutError,
    UploadFailed,
)
from stratus.push.graph import walk_image
from stratus.push.layout import open_layout, read_index_document
from stratus.push.names import image_names, normalize_reference, parse_target
from stratus.push.selection import group_images, select_image
from stratus.push.workers import UploadVanished

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CREATED = "org.opencontainers.image.created"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class LayoutFiles:
    """The files of an OCI layout in memory, written out as a directory or a tarball."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}

    def add_blob(self, data: bytes, media_type: str, algorithm: str = "sha256", **extra: Any) -> dict[str, Any]:
        encoded = hashlib.new(algorithm, data).hexdigest()
        self.files[f"blobs/{algorithm}/{encoded}"] = data
        return {"mediaType": media_type, "digest": f"{algorithm}:{encoded}", "size": len(data), **extra}

    def add_image(self, layers: list[bytes], *, platform: str = "amd64", extra_layers: list[dict[str, Any]] = ()) -> dict[str, Any]:
        config = self.add_blob(orjson.dumps({"architecture": platform, "os": "linux"}), OCI_CONFIG)
        layer_descriptors = [self.add_blob(layer, LAYER) for layer in layers] + list(extra_layers)
        manifest = orjson.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layer_descriptors},
            option=orjson.OPT_INDENT_2,
        )
        return self.add_blob(manifest, OCI_MANIFEST, platform={"architecture": platform, "os": "linux"})

    def add_index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        index = orjson.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        return self.add_blob(index, OCI_INDEX)

    def set_index(self, entries: list[dict[str, Any]], *, media_type: bool = True) -> None:
        document: dict[str, Any] = {"schemaVersion": 2, "manifests": entries}
        if media_type:
            document["mediaType"] = OCI_INDEX
        self.files["index.json"] = orjson.dumps(document)

    def write_directory(self, path: Path) -> Path:
        for name, data in self.files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return path

    def write_tar(self, path: Path, *, prefix: str = "", tar_format: int = tarfile.USTAR_FORMAT) -> Path:
        """Write the files sorted by name after their directories, as BuildKit's exporter does."""
        with tarfile.open(path, "w", format=tar_format) as archive:
            directories = sorted({str(Path(name).parent) + "/" for name in self.files if "/" in name})
            for directory in directories:
                info = tarfile.TarInfo(prefix + directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            for name in sorted(self.files):
                info = tarfile.TarInfo(prefix + name)
                info.size = len(self.files[name])
                info.mode = 0o444
                archive.addfile(info, io.BytesIO(self.files[name]))
        return path


def multi_platform_layout() -> tuple[LayoutFiles, dict[str, Any]]:
    """Return a two-platform BuildKit-like layout with one attestation manifest and a stray blob."""
    layout = LayoutFiles()
    amd64 = layout.add_image([b"base layer", b"amd64 app"], platform="amd64")
    arm64 = layout.add_image([b"base layer", b"arm64 app"], platform="arm64")
    empty = layout.add_blob(b"{}", "application/vnd.oci.empty.v1+json")
    statement = layout.add_blob(b'{"_type":"https://in-toto.io/Statement/v1"}', "application/vnd.in-toto+json")
    attestation = orjson.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.docker.attestation.manifest.v1+json",
        "config": empty,
        "layers": [statement],
        "subject": {key: amd64[key] for key in ("mediaType", "digest", "size")},
    })
    attestation_descriptor = layout.add_blob(
        attestation, OCI_MANIFEST,
        annotations={"vnd.docker.reference.digest": amd64["digest"], "vnd.docker.reference.type": "attestation-manifest"},
        platform={"architecture": "unknown", "os": "unknown"},
    )
    index = layout.add_index([amd64, arm64, attestation_descriptor])
    entry = dict(index, annotations={CONTAINERD_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"})
    layout.set_index([entry])
    layout.add_blob(b"unreferenced leftover", OCTET_STREAM)
    layout.files["ingest/abc/data"] = b"partial"
    return layout, entry


def blob_list(path: Path) -> list[tuple[str, int, str, bytes]]:
    opened = open_layout(path)
    index = read_index_document(opened)
    entry = select_image(group_images(index.descriptors), None, opened.description)
    listing = []
    for blob in walk_image(opened, entry):
        with open(blob.source.path, "rb") as file:
            file.seek(blob.source.offset)
            data = file.read(blob.source.size)
        listing.append((str(blob.digest), blob.size, blob.content_type, data))
    return listing


def test_layout_directory_and_tar_same_blobs(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    directory = blob_list(layout.write_directory(tmp_path / "dir"))
    tarball = blob_list(layout.write_tar(tmp_path / "image.tar"))
    dotted = blob_list(layout.write_tar(tmp_path / "dotted.tar", prefix="./"))
    assert directory == tarball
    assert directory == dotted


def test_layout_walk_reaches_exactly_the_image(tmp_path: Path) -> None:
    layout, entry = multi_platform_layout()
    listing = blob_list(layout.write_directory(tmp_path / "dir"))
    digests = [digest for digest, _, _, _ in listing]
    expected = {
        name.replace("blobs/", "").replace("/", ":", 1)
        for name in layout.files
        if name.startswith("blobs/") and layout.files[name] != b"unreferenced leftover"
    }
    assert set(digests) == expected
    assert len(digests) == len(expected)
    assert digests[-1] == entry["digest"]


def test_layout_walk_children_before_parents(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    entry = read_index_document(opened).descriptors[0]
    blobs = walk_image(opened, entry)
    position = {blob.digest: number for number, blob in enumerate(blobs)}
    for blob in blobs:
        if blob.content is None:
            continue
        for child in parse_manifest(blob.content, blob.content_type).children:
            assert position[child.digest] < position[blob.digest]


def test_layout_content_types(tmp_path: Path) -> None:
    layout, entry = multi_platform_layout()
    listing = blob_list(layout.write_directory(tmp_path / "dir"))
    types = {digest: content_type for digest, _, content_type, _ in listing}
    assert types[entry["digest"]] == OCI_INDEX
    manifests = [digest for digest, content_type in types.items() if content_type == OCI_MANIFEST]
    assert len(manifests) == 3
    others = [content_type for content_type in types.values() if content_type not in (OCI_INDEX, OCI_MANIFEST)]
    assert set(others) == {OCTET_STREAM}


def test_layout_tar_pax_sha512_names(tmp_path: Path) -> None:
    layout = LayoutFiles()
    layer = layout.add_blob(b"layer with a sha512 digest", LAYER, algorithm="sha512")
    config = layout.add_blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
    manifest = layout.add_blob(
        orjson.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}), OCI_MANIFEST
    )
    layout.set_index([manifest])
    tarball = blob_list(layout.write_tar(tmp_path / "pax.tar", tar_format=tarfile.PAX_FORMAT))
    gnu = blob_list(layout.write_tar(tmp_path / "gnu.tar", tar_format=tarfile.GNU_FORMAT))
    directory = blob_list(layout.write_directory(tmp_path / "dir"))
    assert tarball == directory
    assert gnu == directory
    assert layer["digest"] in [digest for digest, _, _, _ in tarball]


def test_layout_tar_hard_link_member(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    path = layout.write_tar(tmp_path / "image.tar")
    expected = blob_list(path)
    target = "blobs/sha256/" + expected[0][0].split(":")[1]
    with tarfile.open(path) as archive:
        members = [(member, archive.extractfile(member).read() if member.isfile() else None) for member in archive]
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as archive:
        archive.addfile(tarfile.TarInfo("holder"), io.BytesIO())
        holder = tarfile.TarInfo("holder-data")
        holder.size = len(layout.files[target])
        archive.addfile(holder, io.BytesIO(layout.files[target]))
        for member, data in members:
            if member.name == target:
                link = tarfile.TarInfo(target)
                link.type = tarfile.LNKTYPE
                link.linkname = "holder-data"
                archive.addfile(link)
            else:
                archive.addfile(member, io.BytesIO(data) if data is not None else None)
    assert blob_list(linked) == expected


def test_layout_truncated_tar(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    layout.files["blobs/sha256/" + "0" * 64] = bytes(20000)
    data = layout.write_tar(tmp_path / "image.tar").read_bytes()
    for cut in (len(data) // 2, 700, len(data) - 1536 - 600):
        truncated = tmp_path / f"cut-{cut}.tar"
        truncated.write_bytes(data[:cut])
        with pytest.raises(LayoutError) as caught:
            blob_list(truncated)
        assert "truncated" in str(caught.value) or "no index.json" in str(caught.value) or "no oci-layout" in str(caught.value)


def test_layout_truncated_inside_member(tmp_path: Path) -> None:
    layout = LayoutFiles()
    layout.set_index([])
    layout.files["zz-big"] = bytes(100_000)
    data = layout.write_tar(tmp_path / "image.tar").read_bytes()
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(data[: len(data) - 60_000])
    with pytest.raises(LayoutError, match="truncated"):
        open_layout(truncated)


def test_layout_gzip_tarball_rejected(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    data = layout.write_tar(tmp_path / "image.tar").read_bytes()
    compressed = tmp_path / "image.tar.gz"
    compressed.write_bytes(gzip.compress(data))
    with pytest.raises(LayoutError, match="gzip-compressed; decompress it first"):
        open_layout(compressed)


def test_layout_not_a_tar(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello " * 200)
    with pytest.raises(LayoutError, match="not a readable tar archive"):
        open_layout(path)


def test_layout_path_missing(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        open_layout(tmp_path / "absent")


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_layout_without_oci_layout_file(tmp_path: Path, form: str) -> None:
    layout, _ = multi_platform_layout()
    del layout.files["oci-layout"]
    path = layout.write_directory(tmp_path / "dir") if form == "directory" else layout.write_tar(tmp_path / "image.tar")
    with pytest.raises(LayoutError, match="has no oci-layout: not an OCI image layout"):
        read_index_document(open_layout(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"schemaVersion":2,"manifests":[', "index.json of .* is not valid JSON"),
        (b'{"schemaVersion":1,"manifests":[]}', "not an image index with schemaVersion 2"),
        (b'{"schemaVersion":2,"manifests":{}}', "manifests is not a list"),
        (b'{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:00","size":1}]}', "entry 0 is invalid"),
    ],
)
def test_layout_broken_index(tmp_path: Path, content: bytes, message: str) -> None:
    layout, _ = multi_platform_layout()
    layout.files["index.json"] = content
    with pytest.raises(LayoutError, match=message):
        read_index_document(open_layout(layout.write_directory(tmp_path / "dir")))


def test_layout_oci_layout_version_checked(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    layout.files["oci-layout"] = b'{"imageLayoutVersion":"2.0.0"}'
    with pytest.raises(LayoutError, match="only version 1 layouts are supported"):
        read_index_document(open_layout(layout.write_directory(tmp_path / "dir")))


def test_layout_null_manifests_is_empty(tmp_path: Path) -> None:
    layout = LayoutFiles()
    layout.files["index.json"] = b'{"schemaVersion":2,"manifests":null}\n'
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    index = read_index_document(opened)
    assert index.descriptors == ()
    with pytest.raises(ImageNotChosen, match="contains no image"):
        select_image(group_images(index.descriptors), None, opened.description)


def test_walk_missing_blob_names_manifest(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    arm64_layer = hashlib.sha256(b"arm64 app").hexdigest()
    del layout.files[f"blobs/sha256/{arm64_layer}"]
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    entry = read_index_document(opened).descriptors[0]
    with pytest.raises(BlobMissing) as caught:
        walk_image(opened, entry)
    assert caught.value.digest == f"sha256:{arm64_layer}"
    assert caught.value.referenced_by.startswith("manifest sha256:")
    assert str(caught.value).startswith(f"blob sha256:{arm64_layer} is missing from the layout (referenced by manifest sha256:")


def test_walk_wrong_size_is_mismatch(tmp_path: Path) -> None:
    layout, _ = multi_platform_layout()
    name = "blobs/sha256/" + hashlib.sha256(b"amd64 app").hexdigest()
    layout.files[name] = b"amd64 app, longer"
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    with pytest.raises(DigestMismatch, match="the layout has 17 bytes, the descriptor says 9"):
        walk_image(opened, read_index_document(opened).descriptors[0])


def test_walk_manifest_bytes_mismatch(tmp_path: Path) -> None:
    layout, entry = multi_platform_layout()
    name = "blobs/sha256/" + entry["digest"].split(":")[1]
    original = layout.files[name]
    layout.files[name] = original.replace(b"schemaVersion", b"schemaVersioN")
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    with pytest.raises(DigestMismatch) as caught:
        walk_image(opened, read_index_document(opened).descriptors[0])
    assert caught.value.digest == entry["digest"]
    assert caught.value.referenced_by == "index.json"


def test_walk_skips_absent_non_distributable(tmp_path: Path) -> None:
    layout = LayoutFiles()
    foreign = {
        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "digest": "sha256:" + "a" * 64,
        "size": 1234,
        "urls": ["https://example.invalid/layer"],
    }
    manifest = layout.add_image([b"own layer"], extra_layers=[foreign])
    layout.set_index([manifest])
    opened = open_layout(layout.write_directory(tmp_path / "dir"))
    digests = [str(blob.digest) for blob in walk_image(opened, read_index_document(opened).descriptors[0])]
    assert foreign["digest"] not in digests
    assert len(digests) == 3


def test_errors_survive_pickle() -> None:
    errors = [
        BlobMissing("sha256:" + "a" * 64, "manifest sha256:" + "b" * 64),
        DigestMismatch("sha256:" + "a" * 64, "index.json", "its bytes hash to sha256:" + "c" * 64),
        UploadFailed("upload of part 2 of key failed"),
        LayoutError("layout broken"),
        UploadVanished("multipart upload x of key was aborted by someone else"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app", ("app", "latest")),
        ("app:1.0", ("app", "1.0")),
        ("org/team/app:v2_rc.1", ("org/team/app", "v2_rc.1")),
        ("a.b/c__d/e-f:latest", ("a.b/c__d/e-f", "latest")),
    ],
)
def test_parse_target_valid(text: str, expected: tuple[str, str]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("App", "invalid repository name 'App'"),
        ("app:", "invalid tag ''"),
        ("app:.hidden", "invalid tag '.hidden'"),
        ("app:" + "t" * 129, "invalid tag"),
        ("app@sha256:" + "a" * 64, "pushing by digest is not supported"),
        ("org//app:1", "invalid repository name 'org//app'"),
        ("../app:1", "invalid repository name '../app'"),
        ("localhost:5000/app:1", "invalid repository name 'localhost:5000/app'"),
        ("a" * 256, "invalid repository name"),
        ("", "invalid repository name ''"),
    ],
)
def test_parse_target_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidImageReference, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_target(text)


@pytest.mark.parametrize(
    ("reference", "normalized"),
    [
        ("app", "docker.io/library/app:latest"),
        ("app:1.0", "docker.io/library/app:1.0"),
        ("docker.io/library/app:1.0", "docker.io/library/app:1.0"),
        ("index.docker.io/library/app:1.0", "docker.io/library/app:1.0"),
        ("acme/app", "docker.io/acme/app:latest"),
        ("ghcr.io/acme/app:1.2", "ghcr.io/acme/app:1.2"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost/app:2", "localhost/app:2"),
        ("app@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
    ],
)
def test_normalize_reference(reference: str, normalized: str) -> None:
    assert normalize_reference(reference) == normalized


def entry_with(annotations: dict[str, str], digest_seed: str = "a") -> Any:
    return parse_descriptor({
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(digest_seed.encode()).hexdigest(),
        "size": 10,
        "annotations": annotations,
    })


@pytest.mark.parametrize(
    ("annotations", "names"),
    [
        ({REF_NAME: "1.0"}, [(None, "1.0")]),
        ({REF_NAME: "docker.io/library/app:1.0"}, [("docker.io/library/app:1.0", "1.0")]),
        ({REF_NAME: "docker.io/library/a:1,docker.io/library/a:2"},
         [("docker.io/library/a:1", "1"), ("docker.io/library/a:2", "2")]),
        ({CONTAINERD_NAME: "ghcr.io/acme/app:1.2", REF_NAME: "1.2"}, [("ghcr.io/acme/app:1.2", "1.2")]),
        ({CREATED: "2025-06-01T12:00:00Z"}, []),
        ({REF_NAME: "docker.io/library/app@sha256:" + "a" * 64}, [("docker.io/library/app@sha256:" + "a" * 64, None)]),
    ],
)
def test_image_names_of_entry(annotations: dict[str, str], names: list[tuple[str | None, str | None]]) -> None:
    assert [(name.reference, name.tag) for name in image_names(entry_with(annotations))] == names


def test_select_single_image_without_choice() -> None:
    first = entry_with({CONTAINERD_NAME: "docker.io/library/app:1.0", REF_NAME: "1.0"})
    second = entry_with({CONTAINERD_NAME: "ghcr.io/acme/app:1.0", REF_NAME: "1.0"})
    images = group_images((first, second))
    assert len(images) == 1
    assert select_image(images, None, "layout") is first


def test_select_several_images_lists_them() -> None:
    images = group_images((
        entry_with({REF_NAME: "1.0"}, "a"),
        entry_with({CONTAINERD_NAME: "docker.io/library/other:latest", REF_NAME: "latest"}, "b"),
        entry_with({}, "c"),
    ))
    with pytest.raises(ImageNotChosen) as caught:
        select_image(images, None, "layout directory x")
    message = str(caught.value)
    assert message.startswith("layout directory x contains 3 images; choose one by tag, reference or digest: ")
    assert "named 1.0" in message
    assert "named docker.io/library/other:latest" in message
    assert "without a name" in message


@pytest.mark.parametrize(
    ("choice", "expected_seed"),
    [
        ("1.0", "a"),
        ("latest", "b"),
        ("other", "b"),
        ("docker.io/library/other:latest", "b"),
        ("other:latest", "b"),
        ("ghcr.io/acme/tool:2", "c"),
        ("2", "c"),
        ("sha256:" + hashlib.sha256(b"d").hexdigest(), "d"),
        ("myapp:1.0", "a"),
    ],
)
def test_select_by_choice(choice: str, expected_seed: str) -> None:
    images = group_images((
        entry_with({REF_NAME: "1.0"}, "a"),
        entry_with({CONTAINERD_NAME: "docker.io/library/other:latest", REF_NAME: "latest"}, "b"),
        entry_with({REF_NAME: "ghcr.io/acme/tool:2,ghcr.io/acme/tool:3"}, "c"),
        entry_with({}, "d"),
    ))
    chosen = select_image(images, choice, "layout")
    assert str(chosen.digest) == "sha256:" + hashlib.sha256(expected_seed.encode()).hexdigest()


def test_select_choice_keeps_matching_entry() -> None:
    first = entry_with({CONTAINERD_NAME: "docker.io/library/app:1.0", REF_NAME: "1.0"})
    second = entry_with({CONTAINERD_NAME: "ghcr.io/acme/app:1.0", REF_NAME: "1.0"})
    images = group_images((first, second))
    assert select_image(images, "ghcr.io/acme/app:1.0", "layout") is second


def test_select_ambiguous_and_unknown_choice() -> None:
    images = group_images((
        entry_with({CONTAINERD_NAME: "docker.io/library/app1:latest", REF_NAME: "latest"}, "a"),
        entry_with({CONTAINERD_NAME: "docker.io/library/app2:latest", REF_NAME: "latest"}, "b"),
    ))
    with pytest.raises(ImageNotChosen, match="'latest' matches 2 images in layout; give a full reference or a digest"):
        select_image(images, "latest", "layout")
    with pytest.raises(ImageNotChosen, match="no image in layout matches 'nope'; it contains: "):
        select_image(images, "nope", "layout")
    assert str(select_image(images, "app2", "layout").digest) == "sha256:" + hashlib.sha256(b"b").hexdigest()
