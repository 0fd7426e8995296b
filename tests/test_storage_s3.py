"""S3Storage against moto's S3 server over HTTP: every operation and the error each failure maps to."""

from __future__ import annotations

import httpx
import pytest

from stratus.config import load_config
from stratus.oci.reference import Digest
from stratus.storage import (
    NotFound,
    NotModified,
    ObjectTooLarge,
    PreconditionFailed,
    Storage,
    StorageUnavailable,
    blob_key,
    index_key,
    layout_key,
    open_storage,
    repository_prefix,
)
from support.processes import free_port


def test_keys_follow_bucket_layout() -> None:
    digest = Digest("sha256", "a" * 64)
    assert repository_prefix("alpine") == "library/alpine"
    assert index_key("alpine") == "library/alpine/index.json"
    assert layout_key("org/team/app") == "org/team/app/oci-layout"
    assert blob_key("org/app", digest) == f"org/app/blobs/sha256/{'a' * 64}"
    assert blob_key("x", Digest("sha512", "b" * 128)) == f"library/x/blobs/sha512/{'b' * 128}"


@pytest.mark.parametrize("name", ["../etc", "a/../../b", "", "a//b", "A", "a\\b", "a%2Fb"])
def test_keys_reject_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        repository_prefix(name)


def test_get_returns_body_and_etag(storage: Storage) -> None:
    etag = storage.put("k/object", b"hello", content_type="application/vnd.oci.image.manifest.v1+json")
    stored = storage.get("k/object", max_bytes=5)
    assert stored.body == b"hello"
    assert stored.etag == etag
    assert stored.content_type == "application/vnd.oci.image.manifest.v1+json"

    info = storage.stat("k/object")
    assert info.size == 5
    assert info.etag == etag


def test_get_larger_than_limit_is_not_read(storage: Storage) -> None:
    storage.put("k/layer", b"x" * (5 * 1024 * 1024), content_type="application/octet-stream")
    with pytest.raises(ObjectTooLarge) as caught:
        storage.get("k/layer", max_bytes=4096)
    assert caught.value.size == 5 * 1024 * 1024
    assert caught.value.limit == 4096


def test_get_if_none_match(storage: Storage) -> None:
    etag = storage.put("k/index.json", b"{}", content_type="application/json")
    with pytest.raises(NotModified):
        storage.get("k/index.json", max_bytes=100, if_none_match=etag)
    assert storage.get("k/index.json", max_bytes=100, if_none_match='"other"').body == b"{}"


def test_missing_key_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.get("k/missing", max_bytes=10)
    with pytest.raises(NotFound):
        storage.stat("k/missing")


def test_conditional_put(storage: Storage) -> None:
    first = storage.put("k/cas", b"1", content_type="application/json", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        storage.put("k/cas", b"2", content_type="application/json", if_none_match="*")
    with pytest.raises(PreconditionFailed):
        storage.put("k/cas", b"3", content_type="application/json", if_match='"stale"')
    storage.put("k/cas", b"4", content_type="application/json", if_match=first)
    assert storage.get("k/cas", max_bytes=10).body == b"4"


def test_multipart_upload_roundtrip(storage: Storage) -> None:
    part = b"p" * (5 * 1024 * 1024)
    upload_id = storage.create_multipart_upload("k/big", content_type="application/octet-stream")
    assert [upload.upload_id for upload in storage.list_multipart_uploads("k/")] == [upload_id]
    etags = [storage.upload_part("k/big", upload_id, number, part + bytes([number])) for number in (1, 2)]
    storage.complete_multipart_upload("k/big", upload_id, etags)
    assert storage.stat("k/big").size == 2 * (len(part) + 1)
    assert storage.list_multipart_uploads("k/") == []


def test_abort_multipart_upload(storage: Storage) -> None:
    upload_id = storage.create_multipart_upload("k/aborted", content_type="application/octet-stream")
    storage.abort_multipart_upload("k/aborted", upload_id)
    storage.abort_multipart_upload("k/aborted", upload_id)  # a second abort is not an error
    assert storage.list_multipart_uploads("k/") == []


def test_presigned_url_is_sigv4(storage: Storage) -> None:
    storage.put("k/blob", b"blob-bytes", content_type="application/octet-stream")
    url = httpx.URL(storage.presign_get("k/blob", 900))
    assert url.params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert url.params["X-Amz-Expires"] == "900"
    assert httpx.get(str(url), timeout=10).content == b"blob-bytes"


def test_requests_counted(storage: Storage) -> None:
    before = storage.requests_sent
    storage.put("k/counted", b"1", content_type="application/json")
    storage.stat("k/counted")
    storage.presign_get("k/counted", 900)  # signing sends nothing
    assert storage.requests_sent == before + 2


def test_unreachable_endpoint_unavailable(stratus_env: dict[str, str]) -> None:
    environment = {**stratus_env, "S3_ENDPOINT": f"127.0.0.1:{free_port()}", "STRATUS_S3_MAX_ATTEMPTS": "2"}
    storage = open_storage(load_config(environment))
    with pytest.raises(StorageUnavailable):
        storage.get("k/x", max_bytes=10)
    assert storage.requests_sent == 2
