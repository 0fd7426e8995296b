"""The layout generator and the tool helpers in tests/support produce what they claim.

Everything else in the suite trusts these layouts, so each property is checked against
the bytes on disk: digests and sizes, document formatting, tar entry metadata, the
index.json shape of each BuildKit version, and acceptance by real tools.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from support.content import zstd_bytes
from support.layout_reader import describe_layout, read_layout_files
from support.layouts import (
    AMD64,
    ARM64,
    ARTIFACT,
    CREATED,
    DIRECTORY,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON_DIGEST,
    IMAGE_NAME,
    IN_TOTO,
    LEGACY,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYOUT_BYTES,
    OCI_MANIFEST,
    REF_NAME,
    REFERENCE_DIGEST,
    REFERENCE_TYPE,
    SHAPES,
    TARBALL,
    LayoutDescription,
    LayoutSpec,
    generate_layout,
    load_layout_into_bucket,
    normalize_name,
)
from support.processes import run_tool
from support.skopeo import run_skopeo, skopeo_available
from support.tools import build_umoci_layout, skopeo_copy_layout, tag_umoci_layout, umoci_available

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"

needs_skopeo = pytest.mark.skipif(not skopeo_available(), reason="skopeo is not installed")
needs_umoci = pytest.mark.skipif(not umoci_available(), reason="umoci is not installed")


def generate(tmp_path: Path, spec: LayoutSpec) -> LayoutDescription:
    suffix = ".tar" if spec.output == TARBALL else ""
    return generate_layout(tmp_path / f"layout{suffix}", spec)


def descriptors_in(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every descriptor an index or manifest document contains."""
    found = list(document.get("manifests") or [])
    if "config" in document:
        found.append(document["config"])
    found += document.get("layers") or []
    if "subject" in document:
        found.append(document["subject"])
    return found


def uncompress_layer(data: bytes) -> bytes:
    if data.startswith(GZIP_MAGIC):
        return gzip.decompress(data)
    assert data.startswith(ZSTD_MAGIC), "layer is neither gzip nor zstd"
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed")
    return subprocess.run(["zstd", "-d", "-c"], input=data, capture_output=True, check=True, timeout=30).stdout


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_blob_digests_match_bytes(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])
    _, _, on_disk = read_layout_files(layout.path)

    assert on_disk == layout.blobs
    for digest, data in on_disk.items():
        algorithm, _, encoded = digest.partition(":")
        assert hashlib.new(algorithm, data).hexdigest() == encoded, digest


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_descriptor_sizes_match(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])
    documents = [json.loads(layout.index_json)]
    documents += [
        json.loads(layout.blobs[digest])
        for digest, media_type in layout.media_types.items()
        if media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
    ]

    checked = 0
    for document in documents:
        for descriptor in descriptors_in(document):
            assert descriptor["digest"] in layout.blobs, descriptor
            assert descriptor["size"] == len(layout.blobs[descriptor["digest"]]), descriptor
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_reader_agrees_with_generator(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])
    described = describe_layout(layout.path)

    assert described.descriptor == layout.descriptor
    assert described.entries == layout.entries
    assert described.images == layout.images
    assert described.nested_index == layout.nested_index
    assert described.media_types == layout.media_types
    assert described.unreferenced == layout.unreferenced
    assert described.names == layout.names


@pytest.mark.parametrize("shape", SHAPES)
def test_diff_ids_hash_uncompressed_layers(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])

    for image in layout.images.values():
        config = json.loads(layout.blobs[image.config])
        assert config["rootfs"]["diff_ids"] == list(image.diff_ids)
        assert len(image.layers) == len(image.diff_ids)
        for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
            uncompressed = uncompress_layer(layout.blobs[layer])
            assert "sha256:" + hashlib.sha256(uncompressed).hexdigest() == diff_id
            assert tarfile.open(fileobj=io.BytesIO(uncompressed)).getnames()


@pytest.mark.parametrize("shape", SHAPES)
def test_documents_use_buildkit_formatting(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])

    assert b"\n" not in layout.index_json
    assert b": " not in layout.index_json
    for digest, media_type in layout.media_types.items():
        data = layout.blobs[digest]
        if media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
            assert data.startswith(b'{\n  "schemaVersion": 2,\n  "mediaType": '), digest
            assert data.endswith(b"\n}"), digest
        elif media_type.endswith("json"):
            assert b"\n" not in data, digest
            assert b'": ' not in data, digest


def test_layout_generation_is_deterministic(tmp_path: Path) -> None:
    spec = SHAPES["multi-platform-artifact-attestations"]
    first = generate_layout(tmp_path / "first.tar", spec)
    second = generate_layout(tmp_path / "second.tar", spec)

    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.digest == second.digest


@pytest.mark.parametrize("shape", [name for name, spec in SHAPES.items() if spec.output == TARBALL])
def test_tarball_entries_match_buildkit(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])
    data = layout.path.read_bytes()
    with tarfile.open(layout.path) as archive:
        members = archive.getmembers()
    names = [member.name for member in members]
    algorithms = sorted({digest.partition(":")[0] for digest in layout.blobs})

    assert not data.startswith(GZIP_MAGIC)
    assert names == sorted(names)
    expected_names = ["blobs"] + [f"blobs/{algorithm}" for algorithm in algorithms]
    expected_names += [f"blobs/{digest.replace(':', '/')}" for digest in layout.blobs]
    expected_names += ["index.json", "oci-layout"]
    if SHAPES[shape].docker_manifest_json:
        expected_names.append("manifest.json")
    assert sorted(names) == sorted(expected_names)
    for member in members:
        assert not member.name.startswith(("./", "/")), member.name
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", ""), member.name
        if member.isdir():
            assert member.mode == 0o755, member.name
        elif member.name.startswith("blobs/") or member.name == "oci-layout":
            assert member.mode == 0o444, member.name
        else:
            assert member.mode == 0o644, member.name
    # Go's tar writer ends with two zero blocks and no padding to a 10 KiB record.
    assert data.endswith(b"\0" * 1024)
    assert data[-1536:-1024] != b"\0" * 512


def test_tarball_sha512_blob_uses_pax_name(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["sha512-layer"])
    (base_layer, _) = layout.images["linux/amd64"].layers
    with tarfile.open(layout.path) as archive:
        member = archive.getmember("blobs/" + base_layer.replace(":", "/"))
        content = archive.extractfile(member)
        assert content is not None

        assert base_layer.startswith("sha512:")
        assert len(member.name) == 141
        assert "path" in member.pax_headers
        assert content.read() == layout.blobs[base_layer]


@pytest.mark.parametrize("shape", [name for name, spec in SHAPES.items() if spec.output == DIRECTORY])
def test_directory_layout_matches_buildkit(shape: str, tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES[shape])
    root = layout.path

    assert (root / "ingest").is_dir()
    assert list((root / "ingest").iterdir()) == []
    assert not (root / "index.json.lock").exists()
    assert (root / "oci-layout").read_bytes() == OCI_LAYOUT_BYTES
    assert stat.S_IMODE((root / "index.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "oci-layout").stat().st_mode) == 0o644
    for digest in layout.blobs:
        blob = root / "blobs" / digest.replace(":", "/")
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444, digest


# shape -> top-level mediaType present, platform on the entry, annotations of each entry
INDEX_JSON_CASES = {
    "single-v0.14-tarball": (True, True, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
    ]),
    "single-v0.11-tarball": (False, True, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
    ]),
    "single-v0.10-tarball": (False, False, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
    ]),
    "several-names": (True, True, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
        {IMAGE_NAME: "ghcr.io/acme/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
    ]),
    "no-name": (True, True, [{CREATED: "2025-06-01T12:00:00Z"}]),
    "directory-v0.19": (True, True, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
        {IMAGE_NAME: "docker.io/library/myapp:latest", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "latest"},
    ]),
    "directory-v0.19-no-name": (True, True, [{CREATED: "2025-06-01T12:00:00Z", REF_NAME: "latest"}]),
    "directory-v0.14": (True, True, [{
        CREATED: "2025-06-01T12:00:00Z",
        REF_NAME: "docker.io/library/myapp:1.0,docker.io/library/myapp:latest",
    }]),
    "multi-platform-artifact-attestations": (True, False, [
        {IMAGE_NAME: "docker.io/library/myapp:1.0", CREATED: "2025-06-01T12:00:00Z", REF_NAME: "1.0"},
    ]),
}


@pytest.mark.parametrize("shape", INDEX_JSON_CASES)
def test_index_json_shape_per_version(shape: str, tmp_path: Path) -> None:
    has_media_type, has_platform, annotations = INDEX_JSON_CASES[shape]
    layout = generate(tmp_path, SHAPES[shape])
    index = json.loads(layout.index_json)

    assert index["schemaVersion"] == 2
    assert list(index) == (["schemaVersion", "mediaType", "manifests"] if has_media_type else ["schemaVersion", "manifests"])
    assert [entry["annotations"] for entry in index["manifests"]] == annotations
    for entry in index["manifests"]:
        assert list(entry["annotations"]) == sorted(entry["annotations"])
        assert entry["digest"] == layout.digest
        assert ("platform" in entry) is has_platform
        expected_keys = ["mediaType", "digest", "size", "annotations"] + (["platform"] if has_platform else [])
        assert list(entry) == expected_keys


def test_nested_index_child_order(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["multi-platform-legacy-attestations"])
    index = json.loads(layout.blobs[layout.digest])
    children = index["manifests"]

    assert layout.nested_index == layout.digest
    assert layout.media_type == OCI_INDEX
    assert [child["platform"] for child in children] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
        {"architecture": "unknown", "os": "unknown"},
        {"architecture": "unknown", "os": "unknown"},
    ]
    assert [child["digest"] for child in children[:2]] == [layout.manifests["linux/amd64"], layout.manifests["linux/arm64"]]
    for child, platform in zip(children[2:], ("linux/amd64", "linux/arm64"), strict=True):
        assert child["digest"] == layout.attestation_manifests[platform]
        assert child["annotations"] == {
            REFERENCE_DIGEST: layout.manifests[platform],
            REFERENCE_TYPE: "attestation-manifest",
        }


def test_legacy_attestation_uses_image_config(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["multi-platform-legacy-attestations"])
    image = layout.images["linux/amd64"]
    assert image.attestation_manifest is not None
    assert image.attestation_config is not None
    manifest = json.loads(layout.blobs[image.attestation_manifest])
    config = json.loads(layout.blobs[image.attestation_config])
    statement = json.loads(layout.blobs[image.statements[0]])

    assert "subject" not in manifest
    assert "artifactType" not in manifest
    assert list(config) == ["architecture", "os", "config", "rootfs"]
    assert config["rootfs"]["diff_ids"] == list(image.statements)
    assert manifest["layers"][0]["mediaType"] == IN_TOTO
    assert manifest["layers"][0]["annotations"] == {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}
    assert statement["_type"] == "https://in-toto.io/Statement/v0.1"
    assert statement["subject"][0]["digest"] == {"sha256": image.manifest.removeprefix("sha256:")}


def test_artifact_attestation_shape(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["multi-platform-artifact-attestations"])

    assert layout.blobs[EMPTY_JSON_DIGEST] == b"{}"
    for platform in ("linux/amd64", "linux/arm64"):
        image = layout.images[platform]
        assert image.attestation_manifest is not None
        manifest = json.loads(layout.blobs[image.attestation_manifest])
        statement = json.loads(layout.blobs[image.statements[0]])

        assert list(manifest) == ["schemaVersion", "mediaType", "artifactType", "config", "layers", "subject"]
        assert manifest["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
        assert manifest["config"] == {"mediaType": OCI_EMPTY, "digest": EMPTY_JSON_DIGEST, "size": 2, "data": "e30="}
        assert manifest["subject"] == {
            "mediaType": OCI_MANIFEST,
            "digest": image.manifest,
            "size": len(layout.blobs[image.manifest]),
        }
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        assert statement["predicateType"] == "https://slsa.dev/provenance/v1"


def test_docker_media_types_throughout(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["docker-manifest-list"])
    index = json.loads(layout.blobs[layout.digest])

    assert layout.media_type == DOCKER_MANIFEST_LIST
    assert index["mediaType"] == DOCKER_MANIFEST_LIST
    for image in layout.images.values():
        manifest = json.loads(layout.blobs[image.manifest])
        assert manifest["mediaType"] == DOCKER_MANIFEST
        assert manifest["config"]["mediaType"] == DOCKER_CONFIG
        assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER_GZIP, DOCKER_LAYER_GZIP]


def test_docker_manifest_json_records(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["docker-single-with-manifest-json"])
    image = layout.images["linux/amd64"]
    with tarfile.open(layout.path) as archive:
        manifest_file = archive.extractfile("manifest.json")
        assert manifest_file is not None
        records = json.loads(manifest_file.read())

    assert records == [{
        "Config": "blobs/" + image.config.replace(":", "/"),
        "RepoTags": ["myapp:1.0"],
        "Layers": ["blobs/" + layer.replace(":", "/") for layer in image.layers],
    }]


def test_zstd_layer_mixed_with_gzip(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["zstd-mixed-with-gzip"])

    for image in layout.images.values():
        base, app = image.layers
        assert layout.media_types[base] == OCI_LAYER_GZIP
        assert layout.media_types[app] == OCI_LAYER_ZSTD
        assert layout.blobs[base].startswith(GZIP_MAGIC)
        assert layout.blobs[app].startswith(ZSTD_MAGIC)


def test_zstd_frame_decodes_with_zstd_tool() -> None:
    if shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed")
    for size in (0, 1, 128 * 1024, 300_000):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        decoded = subprocess.run(["zstd", "-d", "-c"], input=zstd_bytes(data), capture_output=True, timeout=30)
        assert decoded.returncode == 0, decoded.stderr
        assert decoded.stdout == data


def test_unreferenced_blob_not_reachable(tmp_path: Path) -> None:
    layout = generate(tmp_path, SHAPES["unreferenced-blob"])
    (extra,) = layout.unreferenced

    assert extra in layout.blobs
    assert extra not in layout.referenced
    assert set(layout.blobs) == set(layout.referenced) | {extra}


def test_app_payload_grows_the_layer(tmp_path: Path) -> None:
    layout = generate(tmp_path, LayoutSpec(app_payload_size=3 * 1024 * 1024))
    _, app = layout.images["linux/amd64"].layers

    assert len(layout.blobs[app]) > 3 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("myapp", "docker.io/library/myapp:latest"),
        ("myapp:1.0", "docker.io/library/myapp:1.0"),
        ("acme/myapp:1.0", "docker.io/acme/myapp:1.0"),
        ("ghcr.io/acme/myapp:1.0", "ghcr.io/acme/myapp:1.0"),
        ("localhost/myapp", "localhost/myapp:latest"),
        ("127.0.0.1:5000/myapp", "127.0.0.1:5000/myapp:latest"),
    ],
)
def test_normalize_name_matches_buildkit(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"attestations": LEGACY, "media_types": "docker"},
        {"attestations": ARTIFACT, "buildkit": (0, 10)},
        {"docker_manifest_json": True, "platforms": (AMD64, ARM64)},
        {"output": "zip"},
        {"platforms": ()},
    ],
)
def test_layout_spec_rejects_impossible_builds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LayoutSpec(**fields)


def test_bucket_loader_writes_keys(tmp_path: Path, storage: Any, bucket_client: Any, bucket: str) -> None:
    layout = generate(tmp_path, SHAPES["multi-platform-artifact-attestations"])
    load_layout_into_bucket(storage, "team/app", layout, "v1")
    load_layout_into_bucket(bucket_client, "team/app", layout, "v2", bucket=bucket)
    load_layout_into_bucket(storage, "team/app", layout, "v1")

    index = json.loads(storage.get("team/app/index.json", max_bytes=1 << 20).body)
    assert [entry["annotations"][REF_NAME] for entry in index["manifests"]] == ["v1", "v2"]
    assert all(entry["digest"] == layout.digest for entry in index["manifests"])
    assert storage.get("team/app/oci-layout", max_bytes=100).body == OCI_LAYOUT_BYTES
    for digest in layout.referenced:
        stored = storage.get("team/app/blobs/" + digest.replace(":", "/"), max_bytes=1 << 24)
        assert stored.body == layout.blobs[digest]
        assert stored.content_type == layout.content_type(digest)
    assert storage.stat("team/app/blobs/" + layout.digest.replace(":", "/")).content_type == OCI_INDEX
    config = layout.configs["linux/amd64"]
    assert storage.stat("team/app/blobs/" + config.replace(":", "/")).content_type == "application/octet-stream"


def test_bucket_loader_library_namespace(tmp_path: Path, storage: Any) -> None:
    layout = generate(tmp_path, LayoutSpec())
    load_layout_into_bucket(storage, "alpine", layout, "3")

    index = json.loads(storage.get("library/alpine/index.json", max_bytes=1 << 20).body)
    assert index["manifests"][0]["digest"] == layout.digest


@needs_skopeo
@pytest.mark.skopeo
@pytest.mark.parametrize("shape", [
    "multi-platform-legacy-attestations",
    "multi-platform-artifact-attestations",
    "zstd-mixed-with-gzip",
    "directory-v0.19-no-name",
    "single-v0.10-tarball",
])
def test_skopeo_copies_generated_layout(shape: str, tmp_path: Path) -> None:
    spec = SHAPES[shape]
    layout = generate(tmp_path, spec)
    transport = "oci" if spec.output == DIRECTORY else "oci-archive"
    destination = tmp_path / "copy"

    run_skopeo(["copy", "--all", "--preserve-digests", f"{transport}:{layout.path}", f"oci:{destination}:copied"])
    copied = describe_layout(destination, ref_name="copied")

    assert copied.digest == layout.digest
    assert copied.manifests == layout.manifests
    assert copied.attestation_manifests == layout.attestation_manifests


@needs_umoci
def test_umoci_unpacks_generated_layout(tmp_path: Path) -> None:
    layout = generate(tmp_path, LayoutSpec(output=DIRECTORY, buildkit=(0, 19)))
    bundle = tmp_path / "bundle"

    run_tool(["umoci", "unpack", "--image", f"{layout.path}:1.0", str(bundle)], timeout=60)

    assert (bundle / "rootfs" / "app" / "hello.txt").read_text() == "hello from linux/amd64\n"
    assert (bundle / "rootfs" / "etc" / "os-release").exists()


@needs_umoci
def test_umoci_layout_has_umoci_quirks(tmp_path: Path) -> None:
    layout = build_umoci_layout(tmp_path / "umoci", tag="1.0")
    index = json.loads(layout.index_json)
    manifest = json.loads(layout.blobs[layout.digest])

    assert "mediaType" not in index
    assert "mediaType" not in manifest
    assert layout.media_type == OCI_MANIFEST
    assert layout.ref_names == ("1.0",)
    assert len(layout.images) == 1
    assert layout.unreferenced, "umoci keeps the blobs of superseded manifests and configs"
    (image,) = layout.images.values()
    assert len(image.layers) == len(image.diff_ids) == 2


@needs_umoci
def test_umoci_tag_with_full_reference(tmp_path: Path) -> None:
    build_umoci_layout(tmp_path / "umoci", tag="1.0")
    tagged = tag_umoci_layout(tmp_path / "umoci", "1.0", "docker.io/library/foo:2.0")

    assert tagged.ref_names == ("1.0", "docker.io/library/foo:2.0")
    assert tagged.names == ("docker.io/library/foo:2.0",)


@needs_umoci
@needs_skopeo
@pytest.mark.skopeo
def test_skopeo_layout_copy_keeps_digests(tmp_path: Path) -> None:
    source = build_umoci_layout(tmp_path / "umoci", tag="1.0")
    copied = skopeo_copy_layout(tmp_path / "umoci", "1.0", tmp_path / "skopeo", "2.0")
    index = json.loads(copied.index_json)

    assert copied.digest == source.digest
    assert list(index) == ["schemaVersion", "manifests"]
    assert copied.ref_names == ("2.0",)
    assert copied.unreferenced == ()
