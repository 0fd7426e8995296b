"""Integration tests of `push_oci_layout` and `stratus push` against moto's S3 server over HTTP.

The layouts are written by umoci 0.4.7 (a directory, and a tarball of it made by tar) and
by the in-test builder of test_push_layout. Every check reads the bucket back through a
separate botocore client.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stratus.config import Config, load_config
from stratus.push import (
    BlobMissing,
    DigestMismatch,
    ImageNotChosen,
    InvalidImageReference,
    LayoutError,
    PushResult,
    push_oci_layout,
)
from stratus.storage import Storage, open_storage
from support.processes import child_environment
from test_push_layout import LayoutFiles, multi_platform_layout

MIB = 1024 * 1024
REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = INDEX_TYPES | {
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
}
PUSH_COMMAND = [sys.executable, "-m", "stratus", "push"]

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")


def run(command: list[str], cwd: Path | None = None) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A umoci layout whose image has a 12 MiB random layer and a small one, plus superseded blobs."""
    work = tmp_path_factory.mktemp("umoci")
    layout = work / "layout"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:1.0"])

    big = work / "big"
    big.mkdir()
    (big / "random").write_bytes(hashlib.shake_256(b"stratus big layer").digest(12 * MIB))
    run(["umoci", "insert", "--rootless", "--image", f"{layout}:1.0", str(big), "/big"])
    small = work / "small"
    small.mkdir()
    (small / "hello").write_text("hello\n")
    run(["umoci", "insert", "--rootless", "--image", f"{layout}:1.0", str(small), "/small"])
    return layout


@pytest.fixture(scope="session")
def umoci_tarball(umoci_layout: Path) -> Path:
    """The umoci layout packed by GNU tar, so member names start with `./`."""
    tarball = umoci_layout.parent / "layout.tar"
    run(["tar", "-C", str(umoci_layout), "-cf", str(tarball), "."])
    return tarball


def copy_layout(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    for path in destination.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return destination


def reachable(layout: Path) -> dict[str, str]:
    """Return digest -> expected Content-Type for every blob the layout's only image reaches.

    Written independently of stratus.push: plain JSON reading of a directory layout.
    """
    index = json.loads((layout / "index.json").read_text())
    found: dict[str, str] = {}

    def visit(descriptor: dict[str, Any]) -> None:
        digest = descriptor["digest"]
        algorithm, encoded = digest.split(":")
        if descriptor["mediaType"] not in MANIFEST_TYPES:
            found[digest] = "application/octet-stream"
            return
        document = json.loads((layout / "blobs" / algorithm / encoded).read_bytes())
        found[digest] = document.get("mediaType", descriptor["mediaType"])
        for child in document.get("manifests", []):
            visit(child)
        if "config" in document:
            visit(document["config"])
        for layer in document.get("layers", []):
            visit(layer)

    digests = {entry["digest"] for entry in index["manifests"]}
    assert len(digests) == 1
    visit(index["manifests"][0])
    return found


def bucket_objects(client: Any, bucket: str) -> dict[str, tuple[bytes, str]]:
    objects: dict[str, tuple[bytes, str]] = {}
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        response = client.get_object(Bucket=bucket, Key=item["Key"])
        objects[item["Key"]] = (response["Body"].read(), response["ContentType"])
    return objects


def assert_bucket_holds_image(client: Any, bucket: str, prefix: str, layout: Path, tag: str, result: PushResult) -> None:
    """Check the bucket contains exactly the reachable blobs, with right bytes and types, and the tag."""
    expected = reachable(layout)
    objects = bucket_objects(client, bucket)
    blob_keys = {key for key in objects if key.startswith(f"{prefix}/blobs/")}
    assert blob_keys == {f"{prefix}/blobs/{digest.replace(':', '/')}" for digest in expected}
    for digest, content_type in expected.items():
        algorithm, encoded = digest.split(":")
        body, stored_type = objects[f"{prefix}/blobs/{algorithm}/{encoded}"]
        assert body == (layout / "blobs" / algorithm / encoded).read_bytes()
        assert stored_type == content_type

    assert orjson.loads(objects[f"{prefix}/oci-layout"][0]) == {"imageLayoutVersion": "1.0.0"}
    index_body, index_type = objects[f"{prefix}/index.json"]
    assert index_type == "application/vnd.oci.image.index.v1+json"
    entries = orjson.loads(index_body)["manifests"]
    tagged = [entry for entry in entries if entry.get("annotations", {}).get(REF_NAME) == tag]
    assert len(tagged) == 1
    assert tagged[0]["digest"] == str(result.digest)
    assert set(objects) == blob_keys | {f"{prefix}/index.json", f"{prefix}/oci-layout"}


def assert_no_wrong_objects(client: Any, bucket: str) -> None:
    """Check every blob object's bytes hash to the digest in its key, and no upload is left open."""
    for key, (body, _) in bucket_objects(client, bucket).items():
        if "/blobs/" not in key:
            continue
        algorithm, encoded = key.split("/")[-2:]
        assert hashlib.new(algorithm, body).hexdigest() == encoded, key
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def index_bytes(client: Any, bucket: str, key: str) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize("form", ["directory", "tarball"])
def test_push_umoci_layout(
    form: str, umoci_layout: Path, umoci_tarball: Path, storage: Storage, stratus_env: dict[str, str],
    bucket: str, bucket_client: Any,
) -> None:
    layout = umoci_layout if form == "directory" else umoci_tarball
    output = io.StringIO()
    result = push_oci_layout(
        storage, bucket, layout, "app", "1.0", log_output=output, config=load_config(stratus_env),
        multipart_threshold=5 * MIB, part_size=5 * MIB,
    )
    assert_bucket_holds_image(bucket_client, bucket, "library/app", umoci_layout, "1.0", result)
    assert len(result.uploaded) == len(reachable(umoci_layout))
    assert result.skipped == ()
    assert result.bytes_sent == sum((umoci_layout / "blobs" / "sha256" / digest.encoded).stat().st_size
                                    for digest in result.uploaded)
    assert output.getvalue().splitlines()[-1].startswith(f"Pushed app:1.0 as {result.digest}: ")


def test_push_directory_and_tarball_upload_same(
    umoci_layout: Path, umoci_tarball: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    from_directory = push_oci_layout(storage, bucket, umoci_layout, "org/dir", "1", log_output=None)
    from_tarball = push_oci_layout(storage, bucket, umoci_tarball, "org/tar", "1", log_output=None)
    objects = bucket_objects(bucket_client, bucket)
    directory_blobs = {key.removeprefix("org/dir/"): value for key, value in objects.items() if key.startswith("org/dir/blobs/")}
    tarball_blobs = {key.removeprefix("org/tar/"): value for key, value in objects.items() if key.startswith("org/tar/blobs/")}
    assert directory_blobs == tarball_blobs
    assert from_directory.uploaded == from_tarball.uploaded
    assert from_directory.bytes_sent == from_tarball.bytes_sent
    assert objects["org/dir/index.json"] == objects["org/tar/index.json"]


@pytest.mark.parametrize("form", ["directory", "buildkit-tar", "dotted-tar"])
def test_push_multi_platform_layout(
    form: str, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    files, entry = multi_platform_layout()
    directory = files.write_directory(tmp_path / "dir")
    layout = {
        "directory": directory,
        "buildkit-tar": files.write_tar(tmp_path / "image.tar"),
        "dotted-tar": files.write_tar(tmp_path / "dotted.tar", prefix="./"),
    }[form]
    result = push_oci_layout(storage, bucket, layout, "team/app", "v1", log_output=None)
    assert result.digest.encoded == entry["digest"].split(":")[1]
    assert_bucket_holds_image(bucket_client, bucket, "team/app", directory, "v1", result)

    stored_entry = orjson.loads(bucket_objects(bucket_client, bucket)["team/app/index.json"][0])["manifests"][0]
    assert stored_entry["annotations"] == {**entry["annotations"], REF_NAME: "v1"}
    assert stored_entry["mediaType"] == entry["mediaType"]
    assert stored_entry["size"] == entry["size"]


def test_push_again_skips_everything(
    umoci_layout: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    first = push_oci_layout(storage, bucket, umoci_layout, "app", "1.0", log_output=None)
    second = push_oci_layout(storage, bucket, umoci_layout, "app", "2.0", log_output=None)
    assert second.uploaded == ()
    assert set(second.skipped) == set(first.uploaded)
    assert second.bytes_sent == 0
    entries = orjson.loads(bucket_objects(bucket_client, bucket)["library/app/index.json"][0])["manifests"]
    assert [entry["annotations"][REF_NAME] for entry in entries] == ["2.0", "1.0"]


def test_push_same_tag_replaces_entry(tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any) -> None:
    first, _ = multi_platform_layout()
    second = LayoutFiles()
    second.set_index([second.add_image([b"another image"])])
    push_oci_layout(storage, bucket, first.write_directory(tmp_path / "a"), "app", "latest", log_output=None)
    result = push_oci_layout(storage, bucket, second.write_directory(tmp_path / "b"), "app", "latest", log_output=None)
    entries = orjson.loads(bucket_objects(bucket_client, bucket)["library/app/index.json"][0])["manifests"]
    assert [entry["digest"] for entry in entries] == [str(result.digest)]


class BarrierStorageFactory:
    """Builds S3 storage whose first part upload in each process waits for a second process.

    With two workers this forces the parts of one blob onto both of them: a worker blocked
    at the barrier cannot take another part, so only the other process can release it.
    """

    def __init__(self, config: Config, barrier: Any) -> None:
        self.config = config
        self.barrier = barrier

    def __call__(self) -> Storage:
        return BarrierStorage(open_storage(self.config), self.barrier)


class BarrierStorage:
    def __init__(self, inner: Any, barrier: Any) -> None:
        self._inner = inner
        self._barrier = barrier
        self._waited = False
        self.bucket = inner.bucket

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        if not self._waited:
            self._waited = True
            # A safety limit for a broken pool, not a timing assertion.
            self._barrier.wait(timeout=120)
        return self._inner.upload_part(key, upload_id, part_number, body)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_push_parts_from_several_processes(
    umoci_layout: Path, storage: Storage, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    factory = BarrierStorageFactory(load_config(stratus_env), barrier)
    result = push_oci_layout(
        storage, bucket, umoci_layout, "app", "1.0", log_output=None, blob_upload_concurrency=2,
        storage_factory=factory, multipart_threshold=5 * MIB, part_size=5 * MIB,
    )
    assert len(result.part_worker_pids) == 2
    assert os.getpid() not in result.part_worker_pids
    assert_bucket_holds_image(bucket_client, bucket, "library/app", umoci_layout, "1.0", result)
    big = max(reachable(umoci_layout), key=lambda digest: (umoci_layout / "blobs/sha256" / digest[7:]).stat().st_size)
    head = bucket_client.head_object(Bucket=bucket, Key=f"library/app/blobs/sha256/{big[7:]}")
    assert head["ContentLength"] > 10 * MIB
    assert head["ETag"].endswith('-3"')


@pytest.fixture
def seeded_bucket(tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any) -> bytes:
    """Push one image as app:stable and return index.json's bytes, to compare after a failure."""
    files = LayoutFiles()
    files.set_index([files.add_image([b"stable image"])])
    push_oci_layout(storage, bucket, files.write_directory(tmp_path / "stable"), "app", "stable", log_output=None)
    content = index_bytes(bucket_client, bucket, "library/app/index.json")
    assert content is not None
    return content


def corrupt_biggest_layer(layout: Path) -> str:
    """Flip one byte of the largest blob, keeping its size; return its digest."""
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda path: path.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    return f"sha256:{blob.name}"


@pytest.mark.parametrize("threshold", [5 * MIB, 64 * MIB], ids=["multipart", "single-put"])
def test_push_corrupt_blob_fails(
    threshold: int, umoci_layout: Path, tmp_path: Path, storage: Storage, stratus_env: dict[str, str],
    bucket: str, bucket_client: Any, seeded_bucket: bytes,
) -> None:
    layout = copy_layout(umoci_layout, tmp_path / "corrupt")
    digest = corrupt_biggest_layer(layout)
    with pytest.raises(DigestMismatch) as caught:
        push_oci_layout(
            storage, bucket, layout, "app", "1.0", log_output=None, config=load_config(stratus_env),
            multipart_threshold=threshold, part_size=5 * MIB,
        )
    assert caught.value.digest == digest
    assert str(caught.value).startswith(f"blob {digest} does not match its digest: its bytes hash to sha256:")
    assert index_bytes(bucket_client, bucket, "library/app/index.json") == seeded_bucket
    assert index_bytes(bucket_client, bucket, f"library/app/blobs/sha256/{digest[7:]}") is None
    assert_no_wrong_objects(bucket_client, bucket)


def test_push_missing_blob_fails_before_upload(
    umoci_layout: Path, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any, seeded_bucket: bytes,
) -> None:
    layout = copy_layout(umoci_layout, tmp_path / "missing")
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_bytes())
    missing = manifest["layers"][-1]["digest"]
    (layout / "blobs/sha256" / missing[7:]).unlink()
    before = set(bucket_objects(bucket_client, bucket))

    with pytest.raises(BlobMissing) as caught:
        push_oci_layout(storage, bucket, layout, "app", "1.0", log_output=None)
    assert str(caught.value) == f"blob {missing} is missing from the layout (referenced by manifest {manifest_digest})"
    assert set(bucket_objects(bucket_client, bucket)) == before
    assert index_bytes(bucket_client, bucket, "library/app/index.json") == seeded_bucket


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-oci-layout", "has no oci-layout: not an OCI image layout"),
        ("broken-index", "index.json of layout directory .* is not valid JSON"),
        ("no-index", "has no index.json: not an OCI image layout"),
    ],
)
def test_push_broken_layout_fails(
    damage: str, message: str, umoci_layout: Path, tmp_path: Path, storage: Storage, bucket: str,
    bucket_client: Any, seeded_bucket: bytes,
) -> None:
    layout = copy_layout(umoci_layout, tmp_path / "broken")
    if damage == "no-oci-layout":
        (layout / "oci-layout").unlink()
    elif damage == "broken-index":
        (layout / "index.json").write_bytes(b'{"schemaVersion":2,"manifests":[{"mediaType"')
    else:
        (layout / "index.json").unlink()
    before = set(bucket_objects(bucket_client, bucket))
    with pytest.raises(LayoutError, match=message):
        push_oci_layout(storage, bucket, layout, "app", "1.0", log_output=None)
    assert set(bucket_objects(bucket_client, bucket)) == before
    assert index_bytes(bucket_client, bucket, "library/app/index.json") == seeded_bucket


def test_push_several_images_needs_choice(
    tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any, seeded_bucket: bytes,
) -> None:
    files = LayoutFiles()
    first = files.add_image([b"first"])
    second = files.add_image([b"second"])
    files.set_index([
        dict(first, annotations={REF_NAME: "docker.io/library/one:1.0"}),
        dict(second, annotations={"io.containerd.image.name": "docker.io/library/two:2.0", REF_NAME: "2.0"}),
    ])
    layout = files.write_tar(tmp_path / "two.tar")
    before = set(bucket_objects(bucket_client, bucket))
    with pytest.raises(ImageNotChosen) as caught:
        push_oci_layout(storage, bucket, layout, "app", "1.0", log_output=None)
    assert str(caught.value) == (
        f"layout tarball {layout} contains 2 images; choose one by tag, reference or digest: "
        f"{first['digest']} (application/vnd.oci.image.manifest.v1+json, linux/amd64) named docker.io/library/one:1.0; "
        f"{second['digest']} (application/vnd.oci.image.manifest.v1+json, linux/amd64) named docker.io/library/two:2.0"
    )
    assert set(bucket_objects(bucket_client, bucket)) == before
    assert index_bytes(bucket_client, bucket, "library/app/index.json") == seeded_bucket

    result = push_oci_layout(storage, bucket, layout, "app", "1.0", log_output=None, layout_reference="two:2.0")
    assert str(result.digest) == second["digest"]


@pytest.mark.parametrize(("name", "tag"), [("App", "1.0"), ("app", "bad tag"), ("a//b", "1"), ("app", "")])
def test_push_invalid_name_or_tag(
    name: str, tag: str, umoci_layout: Path, storage: Storage, bucket: str, bucket_client: Any, seeded_bucket: bytes,
) -> None:
    before = set(bucket_objects(bucket_client, bucket))
    with pytest.raises(InvalidImageReference, match="invalid (repository name|tag)"):
        push_oci_layout(storage, bucket, umoci_layout, name, tag, log_output=None)
    assert set(bucket_objects(bucket_client, bucket)) == before


def test_push_truncated_tarball_fails(
    umoci_tarball: Path, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any, seeded_bucket: bytes,
) -> None:
    data = umoci_tarball.read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    before = set(bucket_objects(bucket_client, bucket))
    with pytest.raises(LayoutError, match=f"layout tarball {truncated} is (truncated|not a readable tar archive)"):
        push_oci_layout(storage, bucket, truncated, "app", "1.0", log_output=None)
    assert set(bucket_objects(bucket_client, bucket)) == before
    assert index_bytes(bucket_client, bucket, "library/app/index.json") == seeded_bucket


def run_push(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PUSH_COMMAND, *arguments], env=child_environment(environment), capture_output=True, text=True, timeout=300,
    )


def test_command_pushes_and_prints_digest(
    umoci_tarball: Path, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    completed = run_push([str(umoci_tarball), "org/app"], stratus_env)
    assert completed.returncode == 0, completed.stderr
    digest = completed.stdout.strip()
    assert digest.startswith("sha256:")
    lines = completed.stderr.splitlines()
    assert lines[0].startswith(f"Pushing {digest} from layout tarball {umoci_tarball} to org/app:latest in bucket {bucket}")
    assert lines[-1].startswith(f"Pushed org/app:latest as {digest}: ")
    assert "\r" not in completed.stderr
    entries = orjson.loads(bucket_objects(bucket_client, bucket)["org/app/index.json"][0])["manifests"]
    assert entries[0]["annotations"][REF_NAME] == "latest"


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        (["{layout}", "Bad/Name:1"], 2, "stratus push: invalid repository name 'Bad/Name': expected lowercase"),
        (["{layout}", "app:-x"], 2, "stratus push: invalid tag '-x': expected 1 to 128 characters"),
        (["{layout}", "app@sha256:" + "a" * 64], 2, "stratus push: invalid image reference"),
        (["{absent}", "app:1"], 1, "stratus push: layout {absent} does not exist"),
        (["{layout}", "app:1", "--from", "nothing"], 1, "stratus push: no image in layout tarball {layout} matches 'nothing'"),
    ],
)
def test_command_failure_is_one_line(
    arguments: list[str], status: int, message: str, umoci_tarball: Path, tmp_path: Path,
    stratus_env: dict[str, str],
) -> None:
    values = {"layout": str(umoci_tarball), "absent": str(tmp_path / "absent.tar")}
    completed = run_push([argument.format(**values) for argument in arguments], stratus_env)
    assert completed.returncode == status
    assert completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
    assert completed.stderr.startswith(message.format(**values))


def test_command_reports_several_images(
    tmp_path: Path, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    files = LayoutFiles()
    files.set_index([
        dict(files.add_image([b"first"]), annotations={REF_NAME: "1.0"}),
        dict(files.add_image([b"second"]), annotations={REF_NAME: "2.0"}),
    ])
    layout = files.write_directory(tmp_path / "two")
    completed = run_push([str(layout), "app:1"], stratus_env)
    assert completed.returncode == 1
    assert completed.stderr.startswith(f"stratus push: layout directory {layout} contains 2 images; choose one by tag")
    assert len(completed.stderr.splitlines()) == 1
    assert bucket_client.list_objects_v2(Bucket=bucket).get("Contents", []) == []

    completed = run_push([str(layout), "app:1", "--from", "2.0"], stratus_env)
    assert completed.returncode == 0, completed.stderr


def test_command_draws_progress_bar_on_terminal(
    umoci_layout: Path, stratus_env: dict[str, str], bucket: str,
) -> None:
    import pty

    controller, terminal = pty.openpty()
    child = subprocess.Popen(
        [*PUSH_COMMAND, str(umoci_layout), "app:1.0"], env=child_environment(stratus_env),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout, _ = child.communicate(timeout=300)

    assert child.returncode == 0
    text = shown.decode()
    assert "\r\x1b[K[" in text
    assert "B/s" in text
    assert f"Pushed app:1.0 as {stdout.decode().strip()}" in text


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_push_skopeo_layout_with_stale_entry(
    umoci_layout: Path, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    destination = tmp_path / "skopeo"
    run(["skopeo", "copy", f"oci:{umoci_layout}:1.0", f"oci:{destination}:docker.io/library/foo:2.0"])
    first = push_oci_layout(storage, bucket, destination, "foo", "2.0", log_output=None)
    assert_bucket_holds_image(bucket_client, bucket, "library/foo", umoci_layout, "2.0", first)

    # Copying another image under the same name leaves the first entry without a name.
    other = LayoutFiles()
    other.set_index([dict(other.add_image([b"second image"]), annotations={REF_NAME: "1.0"})])
    other_path = other.write_directory(tmp_path / "other")
    run(["skopeo", "copy", f"oci:{other_path}:1.0", f"oci:{destination}:docker.io/library/foo:2.0"])
    with pytest.raises(ImageNotChosen, match="contains 2 images"):
        push_oci_layout(storage, bucket, destination, "foo", "3.0", log_output=None)
    second = push_oci_layout(storage, bucket, destination, "foo", "3.0", log_output=None, layout_reference="foo:2.0")
    assert second.digest != first.digest
    index = orjson.loads(bucket_objects(bucket_client, bucket)["library/foo/index.json"][0])
    assert [(entry["annotations"][REF_NAME], entry["digest"]) for entry in index["manifests"]] == [
        ("3.0", str(second.digest)),
        ("2.0", str(first.digest)),
    ]
