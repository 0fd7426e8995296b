"""Every row of the registry's HTTP contract, against the real server under uvicorn and moto S3.

The images are written straight into the bucket under the layout's keys, so these tests
pin the server's responses byte for byte without depending on the pusher.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from stratus.oci import mediatypes
from stratus.storage import Storage
from support.processes import free_port

ATTESTATION_TYPE = "application/vnd.docker.attestation.manifest.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data), **extra}


def _indent(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


@dataclass
class Image:
    """What a test image wrote to the bucket."""

    repository: str
    blobs: dict[str, bytes] = field(default_factory=dict)
    single: str = ""
    index: str = ""
    amd64: str = ""
    arm64: str = ""
    attestation: str = ""
    layer: str = ""
    config: str = ""

    def put(self, storage: Storage, prefix: str, data: bytes, media_type: str) -> str:
        digest = _digest(data)
        storage.put(f"{prefix}/blobs/sha256/{digest[7:]}", data, content_type=media_type)
        self.blobs[digest] = data
        return digest


def write_image(storage: Storage, repository: str, prefix: str, tags: dict[str, str] | None = None) -> Image:
    """Write a single-platform manifest (`latest`) and a two-platform index with an
    artifact attestation (`v1`) into the repository."""
    image = Image(repository)
    layer = b"\x1f\x8b" + b"layer-bytes" * 200_000  # larger than any manifest may be
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    image.layer = image.put(storage, prefix, layer, mediatypes.OCTET_STREAM)
    image.config = image.put(storage, prefix, config, mediatypes.OCTET_STREAM)
    image.put(storage, prefix, b"{}", mediatypes.OCTET_STREAM)

    def platform_manifest(architecture: str) -> bytes:
        return _indent({
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": _descriptor(mediatypes.OCI_CONFIG, config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
            "annotations": {"org.example.arch": architecture},
        })

    amd64, arm64 = platform_manifest("amd64"), platform_manifest("arm64")
    image.amd64 = image.put(storage, prefix, amd64, mediatypes.OCI_MANIFEST)
    image.arm64 = image.put(storage, prefix, arm64, mediatypes.OCI_MANIFEST)
    statement = b'{"_type":"https://in-toto.io/Statement/v1"}'
    image.put(storage, prefix, statement, mediatypes.OCTET_STREAM)
    attestation = _indent({
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": ATTESTATION_TYPE,
        "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": EMPTY_DIGEST, "size": 2, "data": "e30="},
        "layers": [_descriptor("application/vnd.in-toto+json", statement)],
        "subject": _descriptor(mediatypes.OCI_MANIFEST, amd64),
        "annotations": {"org.example.kind": "provenance"},
    })
    image.attestation = image.put(storage, prefix, attestation, mediatypes.OCI_MANIFEST)
    index = _indent({
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            _descriptor(mediatypes.OCI_MANIFEST, amd64, platform={"architecture": "amd64", "os": "linux"}),
            _descriptor(mediatypes.OCI_MANIFEST, arm64, platform={"architecture": "arm64", "os": "linux"}),
            _descriptor(mediatypes.OCI_MANIFEST, attestation, platform={"architecture": "unknown", "os": "unknown"},
                        annotations={"vnd.docker.reference.digest": _digest(amd64),
                                     "vnd.docker.reference.type": "attestation-manifest"}),
        ],
    })
    image.index = image.put(storage, prefix, index, mediatypes.OCI_INDEX)
    image.single = image.amd64

    tags = tags or {"latest": "single", "v1": "index"}
    entries = []
    for tag, target in tags.items():
        digest = getattr(image, target)
        media_type = mediatypes.OCI_INDEX if target == "index" else mediatypes.OCI_MANIFEST
        entries.append({"mediaType": media_type, "digest": digest, "size": len(image.blobs[digest]),
                        "annotations": {"org.opencontainers.image.ref.name": tag}})
    storage.put(f"{prefix}/index.json", orjson.dumps({"schemaVersion": 2, "manifests": entries}),
                content_type="application/json")
    return image


@pytest.fixture
def image(storage: Storage) -> Image:
    return write_image(storage, "alpine", "library/alpine")


@pytest.fixture
def client(registry: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, follow_redirects=False, timeout=30) as http:
        yield http


def _error_code(response: httpx.Response) -> str:
    return response.json()["errors"][0]["code"]


# ---------------------------------------------------------------- base and manifests


@pytest.mark.parametrize("path", ["/v2/", "/v2"])
def test_base_get_and_head(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.content == b"{}"
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert response.headers["content-type"] == "application/json"

    head = client.head(path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "2"


@pytest.mark.parametrize(
    ("name", "tag", "which", "media_type"),
    [
        ("alpine", "latest", "single", mediatypes.OCI_MANIFEST),
        ("library/alpine", "latest", "single", mediatypes.OCI_MANIFEST),
        ("alpine", "v1", "index", mediatypes.OCI_INDEX),
    ],
)
def test_manifest_by_tag(client: httpx.Client, image: Image, name: str, tag: str, which: str, media_type: str) -> None:
    digest = getattr(image, which)
    response = client.get(f"/v2/{name}/manifests/{tag}")
    assert response.status_code == 200
    assert response.content == image.blobs[digest]
    assert response.headers["content-type"] == media_type
    assert response.headers["content-length"] == str(len(image.blobs[digest]))
    assert response.headers["docker-content-digest"] == digest
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["cache-control"] == "public, max-age=1"
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"

    head = client.head(f"/v2/{name}/manifests/{tag}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(image.blobs[digest]))
    assert head.headers["docker-content-digest"] == digest
    assert head.headers["content-type"] == media_type


@pytest.mark.parametrize("which", ["index", "amd64", "arm64", "attestation"])
def test_manifest_by_digest(client: httpx.Client, image: Image, which: str) -> None:
    digest = getattr(image, which)
    expected_type = mediatypes.OCI_INDEX if which == "index" else mediatypes.OCI_MANIFEST
    for method in ("GET", "HEAD"):
        response = client.request(method, f"/v2/alpine/manifests/{digest}")
        assert response.status_code == 200
        assert response.content == (image.blobs[digest] if method == "GET" else b"")
        assert response.headers["content-type"] == expected_type
        assert response.headers["docker-content-digest"] == digest
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["content-length"] == str(len(image.blobs[digest]))


def test_manifest_if_none_match(client: httpx.Client, image: Image) -> None:
    for value in (f'"{image.single}"', image.single, f'W/"{image.single}"', f'"other", "{image.single}"'):
        response = client.get("/v2/alpine/manifests/latest", headers={"If-None-Match": value})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == f'"{image.single}"'
        assert response.headers["docker-content-digest"] == image.single

    response = client.get("/v2/alpine/manifests/latest", headers={"If-None-Match": '"sha256:other"'})
    assert response.status_code == 200


def test_manifest_docker_types_not_converted(client: httpx.Client, storage: Storage) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    storage.put(f"org/app/blobs/sha256/{_digest(config)[7:]}", config, content_type="application/octet-stream")
    manifest = _indent({
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST,
        "config": _descriptor(mediatypes.DOCKER_CONFIG, config),
        "layers": [],
    })
    manifest_list = _indent({
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST_LIST,
        "manifests": [_descriptor(mediatypes.DOCKER_MANIFEST, manifest,
                                  platform={"architecture": "amd64", "os": "linux"})],
    })
    for data in (manifest, manifest_list):
        storage.put(f"org/app/blobs/sha256/{_digest(data)[7:]}", data, content_type="application/octet-stream")
    storage.put("org/app/index.json", orjson.dumps({"schemaVersion": 2, "manifests": [
        _descriptor(mediatypes.DOCKER_MANIFEST_LIST, manifest_list,
                    annotations={"org.opencontainers.image.ref.name": "1.0"})]}), content_type="application/json")

    accept = {"Accept": mediatypes.OCI_INDEX}
    response = client.get("/v2/org/app/manifests/1.0", headers=accept)
    assert response.status_code == 200
    assert response.headers["content-type"] == mediatypes.DOCKER_MANIFEST_LIST
    assert response.content == manifest_list
    child = client.get(f"/v2/org/app/manifests/{_digest(manifest)}", headers=accept)
    assert child.headers["content-type"] == mediatypes.DOCKER_MANIFEST
    assert child.content == manifest


def test_manifest_type_from_descriptor_when_document_has_none(client: httpx.Client, storage: Storage) -> None:
    # umoci 0.4 writes manifests without a mediaType field.
    manifest = orjson.dumps({"schemaVersion": 2, "config": {"mediaType": mediatypes.OCI_CONFIG,
                             "digest": EMPTY_DIGEST, "size": 2}, "layers": []})
    storage.put(f"a/b/c/blobs/sha256/{_digest(manifest)[7:]}", manifest, content_type="application/octet-stream")
    storage.put("a/b/c/index.json", orjson.dumps({"schemaVersion": 2, "manifests": [
        _descriptor(mediatypes.DOCKER_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": "x"})]}),
        content_type="application/json")
    assert client.get("/v2/a/b/c/manifests/x").headers["content-type"] == mediatypes.DOCKER_MANIFEST
    by_digest = client.get(f"/v2/a/b/c/manifests/{_digest(manifest)}")
    assert by_digest.headers["content-type"] == mediatypes.DOCKER_MANIFEST


def test_manifest_repository_with_route_words(client: httpx.Client, storage: Storage) -> None:
    image = write_image(storage, "team/manifests/app", "team/manifests/app")
    response = client.get("/v2/team/manifests/app/manifests/latest")
    assert response.status_code == 200
    assert response.headers["docker-content-digest"] == image.single


# ---------------------------------------------------------------- blobs


def test_blob_get_redirects_to_presigned_url(client: httpx.Client, image: Image, registry: Any) -> None:
    response = client.get(f"/v2/alpine/blobs/{image.layer}")
    assert response.status_code == 307
    assert response.content == b""
    assert response.headers["docker-content-digest"] == image.layer
    assert response.headers["cache-control"] == "no-store"
    location = httpx.URL(response.headers["location"])
    assert location.path.endswith(f"/library/alpine/blobs/sha256/{image.layer[7:]}")
    assert location.params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert location.params["X-Amz-Expires"] == "3600"
    assert "Signature" not in location.params  # no SigV2 query signature

    fetched = httpx.get(str(location), timeout=30)
    assert fetched.status_code == 200
    assert fetched.content == image.blobs[image.layer]

    again = client.get(f"/v2/alpine/blobs/{image.layer}")
    assert again.headers["location"] == response.headers["location"]

    log = registry.stderr_text()
    assert "X-Amz-Signature" not in log
    assert "stratus-test-secret-key" not in log


def test_blob_head_answered_by_server(client: httpx.Client, image: Image) -> None:
    response = client.head(f"/v2/alpine/blobs/{image.layer}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(image.blobs[image.layer]))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["docker-content-digest"] == image.layer
    assert "location" not in response.headers


# ---------------------------------------------------------------- tags and referrers


def test_tags_list_sorted_and_paginated(client: httpx.Client, storage: Storage) -> None:
    tags = {name: "single" for name in ["v2", "latest", "v10", "1.0", "beta"]}
    write_image(storage, "org/app", "org/app", tags)

    response = client.get("/v2/org/app/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": "org/app", "tags": ["1.0", "beta", "latest", "v10", "v2"]}
    assert "link" not in response.headers

    first = client.get("/v2/org/app/tags/list", params={"n": "2"})
    assert first.json()["tags"] == ["1.0", "beta"]
    assert first.headers["link"] == '</v2/org/app/tags/list?n=2&last=beta>; rel="next"'
    second = client.get("/v2/org/app/tags/list", params={"n": "2", "last": "beta"})
    assert second.json()["tags"] == ["latest", "v10"]
    last = client.get("/v2/org/app/tags/list", params={"n": "2", "last": "v10"})
    assert last.json()["tags"] == ["v2"]
    assert "link" not in last.headers

    for bad in ("-1", "abc", "1.5", ""):
        invalid = client.get("/v2/org/app/tags/list", params={"n": bad})
        assert invalid.status_code == 400
        assert _error_code(invalid) == "PAGINATION_NUMBER_INVALID"


def test_referrers_lists_attestation(client: httpx.Client, image: Image) -> None:
    response = client.get(f"/v2/alpine/referrers/{image.amd64}")
    assert response.status_code == 200
    assert response.headers["content-type"] == mediatypes.OCI_INDEX
    assert response.json() == {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [{
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": image.attestation,
            "size": len(image.blobs[image.attestation]),
            "artifactType": ATTESTATION_TYPE,
            "annotations": {"org.example.kind": "provenance"},
        }],
    }
    assert "oci-filters-applied" not in response.headers

    filtered = client.get(f"/v2/alpine/referrers/{image.amd64}", params={"artifactType": ATTESTATION_TYPE})
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert [entry["digest"] for entry in filtered.json()["manifests"]] == [image.attestation]

    other = client.get(f"/v2/alpine/referrers/{image.amd64}", params={"artifactType": "application/x-other"})
    assert other.headers["oci-filters-applied"] == "artifactType"
    assert other.json()["manifests"] == []

    none = client.get(f"/v2/alpine/referrers/{image.arm64}")
    assert none.status_code == 200
    assert none.json() == {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", ["/v2/", "/v2/alpine/manifests/latest", "/v2/alpine/blobs/uploads/", "/v2/x/y"])
def test_write_methods_not_allowed(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert _error_code(response) == "UNSUPPORTED"
    assert response.json()["errors"][0]["message"] == "this registry is read-only: push images with `stratus push`"


NAME_INVALID_PATHS = [
    "/v2/../library/alpine/manifests/latest",
    "/v2/library/../../etc/manifests/latest",
    "/v2/%2e%2e/alpine/manifests/latest",
    "/v2/library%2Falpine/manifests/latest",
    "/v2/library%2falpine/manifests/latest",
    "/v2/library%5Calpine/manifests/latest",
    "/v2/Alpine/manifests/latest",
    "/v2/" + "a" * 256 + "/manifests/latest",
    "/v2/a/blobs/%2e%2e/blobs/sha256:" + "0" * 64,
]


def _raw_request(port: int, method: str, path: str) -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side path normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        request = f"{method} {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode("latin-1"))
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("path", NAME_INVALID_PATHS + ["/v2/library\\alpine/manifests/latest"])
def test_invalid_names_rejected(registry: Any, image: Image, path: str) -> None:
    status, body = _raw_request(registry.port, "GET", path)
    assert status == 400
    assert orjson.loads(body)["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/missing/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/missing/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/missing/blobs/sha256:" + "0" * 64, 404, "NAME_UNKNOWN"),
        ("/v2/alpine/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("/v2/alpine/manifests/-bad-tag", 404, "MANIFEST_UNKNOWN"),
        ("/v2/alpine/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/alpine/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/alpine/manifests/sha256:../../x", 404, "UNSUPPORTED"),
        ("/v2/alpine/manifests/sha256:..%2F..%2Findex.json", 400, "DIGEST_INVALID"),
        ("/v2/alpine/manifests/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
        ("/v2/alpine/manifests/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
        ("/v2/alpine/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/alpine/blobs/sha256:123", 400, "DIGEST_INVALID"),
        ("/v2/alpine/referrers/latest", 400, "DIGEST_INVALID"),
        ("/v2/_catalog", 404, "UNSUPPORTED"),
        ("/v2/alpine", 404, "UNSUPPORTED"),
        ("/", 404, "UNSUPPORTED"),
    ],
)
def test_error_rows(registry: Any, image: Image, path: str, status: int, code: str) -> None:
    get_status, get_body = _raw_request(registry.port, "GET", path)
    assert get_status == status
    assert orjson.loads(get_body)["errors"][0]["code"] == code

    head_status, head_body = _raw_request(registry.port, "HEAD", path)
    assert head_status == status
    assert head_body == b""


def test_layer_digest_on_manifests_route(client: httpx.Client, image: Image, registry: Any) -> None:
    for digest in (image.layer, image.config):
        response = client.get(f"/v2/alpine/manifests/{digest}")
        assert response.status_code == 404
        assert _error_code(response) == "MANIFEST_UNKNOWN"


def test_corrupt_index_without_good_copy(client: httpx.Client, storage: Storage, registry: Any) -> None:
    storage.put("org/broken/index.json", b"{not json", content_type="application/json")
    for _ in range(3):
        response = client.get("/v2/org/broken/manifests/latest")
        assert response.status_code == 500
        assert response.json()["errors"][0]["code"] == "UNKNOWN"
        assert response.json()["errors"][0]["message"] == "index.json of repository org/broken is corrupt"
    assert registry.stderr_text().count("Repository org/broken: index.json") == 1

    storage.put("org/schema1/index.json", b'{"schemaVersion":1,"manifests":[]}', content_type="application/json")
    assert client.get("/v2/org/schema1/tags/list").status_code == 500


def test_corrupt_index_serves_last_good_copy(registry_factory: Any, storage: Storage) -> None:
    image = write_image(storage, "alpine", "library/alpine")
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "0"})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v2/alpine/manifests/latest").headers["docker-content-digest"] == image.single
        storage.put("library/alpine/index.json", b"garbage", content_type="application/json")
        for _ in range(3):
            response = http.get("/v2/alpine/manifests/latest")
            assert response.status_code == 200
            assert response.headers["docker-content-digest"] == image.single
    assert server.stderr_text().count("serving the last good copy") == 1


# ---------------------------------------------------------------- storage failures


def test_storage_unreachable_503(registry_factory: Any, stratus_env: dict[str, str]) -> None:
    closed_port = free_port()
    server = registry_factory({"S3_ENDPOINT": f"127.0.0.1:{closed_port}", "STRATUS_S3_MAX_ATTEMPTS": "1"})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path in ("/v2/alpine/manifests/latest", "/v2/alpine/tags/list", "/v2/alpine/blobs/sha256:" + "0" * 64):
            response = http.get(path)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert _error_code(response) == "UNAVAILABLE"
            assert response.json()["errors"][0]["message"] == "the storage backend is unavailable"


class _SlowDownHandler(http.server.BaseHTTPRequestHandler):
    """An S3 stand-in that throttles every request."""

    def _throttle(self) -> None:
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _throttle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_storage_throttling_429(registry_factory: Any) -> None:
    throttling = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowDownHandler)
    thread = threading.Thread(target=throttling.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"127.0.0.1:{throttling.server_address[1]}"
        server = registry_factory({"S3_ENDPOINT": endpoint, "STRATUS_S3_MAX_ATTEMPTS": "1"})
        with httpx.Client(base_url=server.url, timeout=30) as http_client:
            response = http_client.get("/v2/alpine/manifests/latest")
            assert response.status_code == 429
            assert response.headers["retry-after"] == "1"
            assert _error_code(response) == "TOOMANYREQUESTS"
    finally:
        throttling.shutdown()
        throttling.server_close()
