"""Unit tests of the index.json merge and of blob uploads, against an in-memory Storage."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from stratus.oci.mediatypes import OCI_INDEX, OCI_MANIFEST, OCTET_STREAM
from stratus.oci.reference import Digest
from stratus.push.errors import DigestMismatch, IndexUpdateFailed, UploadFailed
from stratus.push.graph import PlannedBlob
from stratus.push.layout import BlobSource
from stratus.push.merge import merge_index, update_index
from stratus.push.progress import LineProgress, Progress
from stratus.push.upload import BlobUploader, TransferSettings, abort_stale_uploads
from stratus.storage import (
    MultipartUpload,
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    StorageUnavailable,
    StoredObject,
)

REF_NAME = "org.opencontainers.image.ref.name"


class MemoryStorage:
    """A Storage in memory with S3's conditional PUT and multipart semantics."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, str]] = {}
        self.uploads: dict[str, tuple[str, dict[int, bytes], float]] = {}
        self.aborted: list[str] = []
        self.calls: list[str] = []
        self.fail_part: int | None = None
        self.lose_races = 0
        self.lock = threading.Lock()
        self._counter = 0

    def _etag(self, body: bytes) -> str:
        self._counter += 1
        return f'"{hashlib.md5(body).hexdigest()}-{self._counter}"'

    def get(self, key: str, *, max_bytes: int, if_none_match: str | None = None) -> StoredObject:
        self.calls.append(f"get {key}")
        if key not in self.objects:
            raise NotFound(key)
        body, etag, content_type = self.objects[key]
        return StoredObject(body, etag, content_type)

    def stat(self, key: str) -> ObjectInfo:
        self.calls.append(f"stat {key}")
        if key not in self.objects:
            raise NotFound(key)
        body, etag, content_type = self.objects[key]
        return ObjectInfo(len(body), etag, content_type)

    def put(self, key: str, body: bytes, *, content_type: str, if_match: str | None = None,
            if_none_match: str | None = None) -> str:
        with self.lock:
            self.calls.append(f"put {key}")
            if self.lose_races > 0 and (if_match or if_none_match):
                self.lose_races -= 1
                raise PreconditionFailed(key)
            current = self.objects.get(key)
            if if_none_match == "*" and current is not None:
                raise PreconditionFailed(key)
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailed(key)
            etag = self._etag(body)
            self.objects[key] = (body, etag, content_type)
            return etag

    def put_stream(self, key: str, stream: Any, length: int, *, content_type: str) -> str:
        return self.put(key, stream.read(length), content_type=content_type)

    def create_multipart_upload(self, key: str, *, content_type: str) -> str:
        with self.lock:
            upload_id = f"upload-{len(self.uploads) + len(self.aborted)}"
            self.uploads[upload_id] = (key, {}, 0.0)
            self.calls.append(f"create {key}")
            return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        if self.fail_part == part_number:
            raise StorageUnavailable(f"upload_part {key}: 503")
        with self.lock:
            if upload_id not in self.uploads:
                raise NotFound(upload_id)
            self.uploads[upload_id][1][part_number] = body
            return f'"part-{part_number}"'

    def complete_multipart_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        with self.lock:
            self.calls.append(f"complete {key}")
            _, parts, _ = self.uploads.pop(upload_id)
            assert etags == [f'"part-{number}"' for number in range(1, len(parts) + 1)]
            body = b"".join(parts[number] for number in sorted(parts))
            self.objects[key] = (body, self._etag(body), OCTET_STREAM)

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        with self.lock:
            self.calls.append(f"abort {key}")
            self.uploads.pop(upload_id, None)
            self.aborted.append(upload_id)

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        return [
            MultipartUpload(key, upload_id, initiated)
            for upload_id, (key, _, initiated) in self.uploads.items()
            if key.startswith(prefix)
        ]


def entry(seed: str, tag: str | None = None, **extra: Any) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(seed.encode()).hexdigest(),
        "size": 100,
        **extra,
    }
    if tag is not None:
        descriptor["annotations"] = {REF_NAME: tag}
    return descriptor


def test_merge_into_empty_bucket() -> None:
    document = orjson.loads(merge_index(None, entry("a", platform={"os": "linux", "architecture": "amd64"}), "1.0"))
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == OCI_INDEX
    assert document["manifests"] == [entry("a", "1.0", platform={"os": "linux", "architecture": "amd64"})]


def test_merge_replaces_same_tag() -> None:
    existing = orjson.dumps({
        "schemaVersion": 2,
        "manifests": [entry("old", "1.0"), entry("b", "2.0"), entry("c"), "not an entry", entry("old2", "1.0")],
        "annotations": {"kept": "yes"},
    })
    document = orjson.loads(merge_index(existing, entry("new", "ignored-tag"), "1.0"))
    assert document["manifests"] == [entry("new", "1.0"), entry("b", "2.0"), entry("c"), "not an entry"]
    assert document["annotations"] == {"kept": "yes"}
    assert document["mediaType"] == OCI_INDEX


def test_merge_keeps_other_annotations() -> None:
    new = entry("new")
    new["annotations"] = {"io.containerd.image.name": "docker.io/library/app:9", REF_NAME: "9", "x": "y"}
    merged = orjson.loads(merge_index(None, new, "1.0"))["manifests"][0]
    assert merged["annotations"] == {"io.containerd.image.name": "docker.io/library/app:9", REF_NAME: "1.0", "x": "y"}
    assert new["annotations"][REF_NAME] == "9"


@pytest.mark.parametrize("existing", [b"{not json", b'{"schemaVersion":1}', b'{"schemaVersion":2,"manifests":7}'])
def test_merge_rejects_broken_bucket_index(existing: bytes) -> None:
    with pytest.raises(IndexUpdateFailed, match="fix or remove it first"):
        merge_index(existing, entry("a"), "1.0")


def test_update_index_creates_with_if_none_match() -> None:
    storage = MemoryStorage()
    assert update_index(storage, "app", entry("a"), "1.0") == 1
    body, _, content_type = storage.objects["library/app/index.json"]
    assert content_type == OCI_INDEX
    assert orjson.loads(body)["manifests"] == [entry("a", "1.0")]


def test_update_index_retries_lost_races() -> None:
    storage = MemoryStorage()
    update_index(storage, "org/app", entry("a"), "1.0")
    storage.lose_races = 3
    delays: list[float] = []
    attempts = update_index(storage, "org/app", entry("b"), "2.0", sleep=delays.append)
    assert attempts == 4
    assert len(delays) == 3
    tags = [item["annotations"][REF_NAME] for item in orjson.loads(storage.objects["org/app/index.json"][0])["manifests"]]
    assert tags == ["2.0", "1.0"]


def test_update_index_merges_concurrent_writer() -> None:
    storage = MemoryStorage()
    update_index(storage, "app", entry("a"), "1.0")
    original_put = storage.put
    interfered = []

    def put_after_other_writer(key: str, body: bytes, **options: Any) -> str:
        if not interfered:
            interfered.append(True)
            original_put(key, merge_index(storage.objects[key][0], entry("c"), "3.0"), content_type=OCI_INDEX)
        return original_put(key, body, **options)

    storage.put = put_after_other_writer  # type: ignore[method-assign]
    update_index(storage, "app", entry("b"), "2.0", sleep=lambda _: None)
    tags = [item["annotations"][REF_NAME] for item in orjson.loads(storage.objects["library/app/index.json"][0])["manifests"]]
    assert tags == ["2.0", "3.0", "1.0"]


def test_update_index_gives_up_after_attempts() -> None:
    storage = MemoryStorage()
    storage.lose_races = 100
    with pytest.raises(IndexUpdateFailed, match="tag 1.0 was not written after 5 attempts"):
        update_index(storage, "app", entry("a"), "1.0", attempts=5, sleep=lambda _: None)
    assert "library/app/index.json" not in storage.objects


def planned(tmp_path: Path, data: bytes, *, name: str = "blob", digest: Digest | None = None) -> PlannedBlob:
    path = tmp_path / name
    path.write_bytes(b"prefix" + data + b"suffix")
    return PlannedBlob(
        digest or Digest.of(data), len(data), BlobSource(str(path), 6, len(data)), OCTET_STREAM, "manifest sha256:feed"
    )


def uploader(storage: MemoryStorage, **settings: int) -> BlobUploader:
    options = {"concurrency": 3, "multipart_threshold": 100, "part_size": 64, "min_part_size": 1, **settings}
    return BlobUploader(storage, "bucket", "app", TransferSettings(**options), None, Progress())


def test_upload_multipart_from_byte_range(tmp_path: Path) -> None:
    storage = MemoryStorage()
    data = bytes(range(256)) * 3
    blob = planned(tmp_path, data)
    with uploader(storage) as blobs:
        blobs.upload([blob])
    key = f"library/app/blobs/sha256/{blob.digest.encoded}"
    assert storage.objects[key][0] == data
    assert blobs.stats.bytes_sent == len(data)
    assert blobs.stats.uploaded == [blob.digest]
    assert storage.uploads == {}


def test_upload_mismatch_aborts_multipart(tmp_path: Path) -> None:
    storage = MemoryStorage()
    claimed = Digest.of(b"something else")
    blob = planned(tmp_path, bytes(500), digest=claimed)
    with pytest.raises(DigestMismatch) as caught, uploader(storage) as blobs:
        blobs.upload([blob])
    assert str(caught.value) == (
        f"blob {claimed} does not match its digest: its bytes hash to {Digest.of(bytes(500))} "
        "(referenced by manifest sha256:feed)"
    )
    assert f"abort library/app/blobs/sha256/{claimed.encoded}" in storage.calls
    assert not any(call.startswith("complete") for call in storage.calls)
    assert storage.objects == {}


def test_upload_mismatch_single_put_never_written(tmp_path: Path) -> None:
    storage = MemoryStorage()
    blob = planned(tmp_path, b"tiny", digest=Digest.of(b"other"))
    with pytest.raises(DigestMismatch), uploader(storage) as blobs:
        blobs.upload([blob])
    assert storage.objects == {}


def test_upload_part_failure_aborts(tmp_path: Path) -> None:
    storage = MemoryStorage()
    storage.fail_part = 2
    blob = planned(tmp_path, bytes(300))
    with pytest.raises(UploadFailed, match="upload of part 2 of library/app/blobs/sha256/.* failed: upload_part"), \
            uploader(storage) as blobs:
        blobs.upload([blob])
    assert any(call.startswith("abort") for call in storage.calls)
    assert storage.objects == {}
    assert storage.uploads == {}


def test_upload_skips_blobs_with_same_size(tmp_path: Path) -> None:
    storage = MemoryStorage()
    present = planned(tmp_path, b"present", name="a")
    wrong_size = planned(tmp_path, b"wrong size", name="b")
    absent = planned(tmp_path, b"absent", name="c")
    storage.objects[f"library/app/blobs/sha256/{present.digest.encoded}"] = (b"present", '"x"', OCTET_STREAM)
    storage.objects[f"library/app/blobs/sha256/{wrong_size.digest.encoded}"] = (b"short", '"y"', OCTET_STREAM)
    with uploader(storage) as blobs:
        missing = blobs.find_missing([present, wrong_size, absent])
        blobs.upload(missing)
    assert missing == [wrong_size, absent]
    assert blobs.stats.skipped == [present.digest]
    assert storage.objects[f"library/app/blobs/sha256/{wrong_size.digest.encoded}"][0] == b"wrong size"


def test_abort_stale_uploads_only_old() -> None:
    storage = MemoryStorage()
    storage.uploads = {
        "old": ("library/app/blobs/sha256/" + "1" * 64, {}, 1000.0),
        "recent": ("library/app/blobs/sha256/" + "2" * 64, {}, 99_000.0),
        # A young upload of a blob this push also needs may belong to a push still running.
        "same-blob": ("library/app/blobs/sha256/" + "3" * 64, {}, 99_500.0),
        "other-repository": ("library/application/blobs/sha256/" + "4" * 64, {}, 0.0),
    }
    lines = io.StringIO()
    aborted = abort_stale_uploads(storage, "app", 3600.0, LineProgress(lines), now=lambda: 100_000.0)
    assert aborted == 1
    assert storage.aborted == ["old"]
    assert set(storage.uploads) == {"recent", "same-blob", "other-repository"}
    assert "aborted an unfinished multipart upload started 99000 s ago" in lines.getvalue()
