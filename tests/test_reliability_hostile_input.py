"""Hostile input against the real server: malformed HTTP, crafted bucket contents, oversized documents.

Malformed requests go over a raw socket, so no client library tidies them first. Each
must get a clean 4xx (or the usual response, where the request is valid HTTP after
all) or a closed connection, and never a 500, a stack trace or a hang. Values that the
registry reads from the bucket (media types, tags, annotations, artifact types) must
never reach a response header unchecked, and index.json and manifests larger than their
limits must be rejected without being read whole (test_reliability_limits.py checks the
errors for them).
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import httpx
import orjson
import pytest

from stratus.storage import Storage
from support.processes import LOOPBACK

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
INJECTION = "\r\nLocation: http://evil.invalid/"
# Upper bound on waiting for the server's response, so that a hang fails the test.
READ_LIMIT = 20.0
MIB = 1024 * 1024


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _exchange(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send raw bytes and return everything the server sends until it closes the connection.

    With `half_close` the write side is shut after sending, so a server waiting for the
    rest of a request reads the end of the stream. A read that waits longer than
    READ_LIMIT fails the test as a hang.
    """
    with socket.create_connection((LOOPBACK, port), timeout=READ_LIMIT) as connection:
        try:
            connection.sendall(data)
            if half_close:
                connection.shutdown(socket.SHUT_WR)
        except OSError:
            # The server closed the connection while the request was still being sent.
            pass
        return _read_until_closed(connection)


def _read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"no end of response within {READ_LIMIT} s; received {received[:300]!r}") from None
        if not chunk:
            return received
        received += chunk


def _statuses(reply: bytes, head_requests: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Return the status codes of the responses in `reply`, in order. The responses whose
    positions are in `head_requests` respond to HEAD, so their Content-Length has no body."""
    statuses: list[int] = []
    position = 0
    while reply.startswith(b"HTTP/1.1 ", position):
        head_end = reply.index(b"\r\n\r\n", position)
        head = reply[position:head_end].lower()
        statuses.append(int(head[9:12]))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
        position = head_end + 4 + (0 if len(statuses) - 1 in head_requests else length)
    return statuses


def _request(target: bytes, *, extra: bytes = b"", method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    return method + b" " + target + b" " + version + b"\r\nHost: registry\r\nConnection: close\r\n" + extra + b"\r\n"


INVALID_HTTP = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "request line without target": b"GET\r\n\r\n",
    "unknown HTTP version": _request(b"/v2/", version=b"HTTP/9.9"),
    "lowercase method": _request(b"/v2/", method=b"get"),
    "NUL byte in path": _request(b"/v2/a\x00b/manifests/latest"),
    "bytes above 0x7f in path": _request(b"/v2/\xff\xfe/manifests/latest"),
    "bare LF line ends": b"GET /v2/ HTTP/1.1\nHost: registry\n\n",
    "header without colon": _request(b"/v2/", extra=b"Broken header\r\n"),
    "space in header name": _request(b"/v2/", extra=b"Bad Name: x\r\n"),
    "CR inside header value": _request(b"/v2/", extra=b"X-Value: a\rInjected: 1\r\n"),
    "negative Content-Length": _request(b"/v2/", extra=b"Content-Length: -1\r\n"),
    "Content-Length with chunked": _request(b"/v2/", extra=b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
    "invalid chunk size": _request(b"/v2/", extra=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n",
    "CONNECT": _request(b"example.invalid:443", method=b"CONNECT"),
}

@pytest.mark.parametrize("case", INVALID_HTTP)
def test_invalid_http_gets_400(registry: Any, case: str) -> None:
    reply = _exchange(registry.port, INVALID_HTTP[case])
    assert _statuses(reply) == [400]
    assert b"Traceback" not in reply


# Requests that are valid HTTP, with the registry's response: status and OCI error code.
VALID_BUT_ODD = {
    "invalid percent-encoding in name": (_request(b"/v2/alp%zzine/manifests/latest"), 400, "NAME_INVALID"),
    "encoded slash in name": (_request(b"/v2/library%2Falpine/manifests/latest"), 400, "NAME_INVALID"),
    "encoded dot segments": (_request(b"/v2/%2e%2e/%2e%2e/manifests/latest"), 400, "NAME_INVALID"),
    "invalid percent-encoding in tag": (_request(b"/v2/hostile/app/manifests/%zz%ff"), 404, "MANIFEST_UNKNOWN"),
    "NUL escape in digest": (_request(b"/v2/hostile/app/blobs/sha256:%00" + b"a" * 63), 400, "DIGEST_INVALID"),
    "CR LF escape in n": (_request(b"/v2/hostile/app/tags/list?n=1%0d%0aX:1"), 400, "PAGINATION_NUMBER_INVALID"),
    "absolute-form target": (_request(b"http://registry.invalid/v2/hostile/app/tags/list"), 200, None),
    "asterisk target": (_request(b"*", method=b"OPTIONS"), 404, "UNSUPPORTED"),
    "HTTP/1.0 without Host": (b"GET /v2/hostile/app/tags/list HTTP/1.0\r\n\r\n", 200, None),
}


@pytest.fixture
def hostile_repository(storage: Storage) -> dict[str, str]:
    """Write `hostile/app` with one good tag and entries crafted to inject headers, and return digests."""
    layer = b"layer bytes"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    good = orjson.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
        "annotations": {"note": "value with" + INJECTION},
    })
    typeless = orjson.dumps({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [],
    })
    injected_type = orjson.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST + INJECTION,
        "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)}, "layers": [],
    })
    referrer = orjson.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x" + INJECTION,
        "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)}, "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": _digest(good), "size": len(good)},
    })
    for data in (layer, config, good, typeless, injected_type, referrer):
        storage.put(f"hostile/app/blobs/sha256/{_digest(data)[7:]}", data, content_type="application/octet-stream")

    def entry(data: bytes, tag: str, media_type: str = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": _digest(data), "size": len(data),
                "annotations": {REF_NAME: tag}, **extra}

    index = {"schemaVersion": 2, "manifests": [
        entry(good, "good"),
        entry(good, "evil-type", OCI_MANIFEST + INJECTION),
        entry(good, "evil-artifact", artifactType="text/plain" + INJECTION),
        entry(good, "bad" + INJECTION),
        entry(good, "../../etc"),
        entry(typeless, "typeless", "text/html"),
        entry(injected_type, "injected-type"),
        entry(referrer, "referrer"),
        {**entry(good, "string-size"), "size": "12"},
    ]}
    storage.put("hostile/app/index.json", orjson.dumps(index), content_type="application/json")
    return {"good": _digest(good), "typeless": _digest(typeless), "injected_type": _digest(injected_type),
            "referrer": _digest(referrer)}


@pytest.mark.parametrize("case", VALID_BUT_ODD)
def test_odd_valid_requests_answered(registry: Any, hostile_repository: dict[str, str], case: str) -> None:
    request, status, code = VALID_BUT_ODD[case]
    # No half-close: uvicorn takes the end of the stream for a client that went away and
    # drops a request still waiting for S3. Each request here ends the connection itself.
    reply = _exchange(registry.port, request, half_close=False)
    assert _statuses(reply) == [status]
    body = reply.split(b"\r\n\r\n", 1)[1]
    if code is None:
        assert orjson.loads(body) == {"name": "hostile/app", "tags": sorted(["good", "typeless", "injected-type",
                                                                            "referrer"])}
    else:
        assert orjson.loads(body)["errors"][0]["code"] == code


PIPELINED = (
    b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n"
    b"GET /v2/hostile/app/manifests/good HTTP/1.1\r\nHost: registry\r\n\r\n"
    b"HEAD /v2/hostile/app/manifests/good HTTP/1.1\r\nHost: registry\r\n\r\n"
    b"GET /v2/hostile/app/manifests/missing HTTP/1.1\r\nHost: registry\r\n\r\n"
)


def test_pipelined_requests_answered_in_order(registry: Any, hostile_repository: dict[str, str]) -> None:
    reply = _exchange(registry.port, PIPELINED + _request(b"/v2/hostile/app/tags/list"), half_close=False)
    assert _statuses(reply, head_requests={2}) == [200, 200, 200, 404, 200]


def test_pipelined_broken_request_closes(registry: Any, hostile_repository: dict[str, str]) -> None:
    reply = _exchange(registry.port, PIPELINED + b"BROKEN\r\n\r\n" + _request(b"/v2/"), half_close=False)
    statuses = _statuses(reply, head_requests={2})
    # NOTE: uvicorn 0.55 with httptools rejects the whole buffer when any request in it is
    # malformed: it sends the 400 at once and closes, so the valid requests before it get
    # no response, and a client may take the 400 for the response to its first request.
    assert statuses[-1] == 400
    assert statuses[:-1] == [200, 200, 200, 404][: len(statuses) - 1]
    assert b"Traceback" not in reply


def test_partial_request_does_not_block_others(registry: Any) -> None:
    with socket.create_connection((LOOPBACK, registry.port), timeout=READ_LIMIT) as stalled:
        stalled.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nX-Unfinished: ")
        with httpx.Client(base_url=registry.url, timeout=READ_LIMIT) as client:
            for _ in range(3):
                assert client.get("/v2/").status_code == 200

        # At the end of the stream the server drops the unfinished request.
        stalled.shutdown(socket.SHUT_WR)
        assert _statuses(_read_until_closed(stalled)) in ([], [400], [408])


def test_bucket_values_never_reach_headers(registry: Any, hostile_repository: dict[str, str]) -> None:
    digests = hostile_repository
    with httpx.Client(base_url=registry.url, timeout=READ_LIMIT, follow_redirects=False) as client:
        good = client.get("/v2/hostile/app/manifests/good")
        assert good.status_code == 200
        assert good.headers["content-type"] == OCI_MANIFEST
        assert good.headers["docker-content-digest"] == digests["good"]

        for tag in ("evil-type", "evil-artifact", "string-size"):
            response = client.get(f"/v2/hostile/app/manifests/{tag}")
            assert response.status_code == 404
            assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

        typeless = client.get("/v2/hostile/app/manifests/typeless")
        assert typeless.status_code == 200
        assert typeless.headers["content-type"] == OCI_MANIFEST

        injected = client.get("/v2/hostile/app/manifests/injected-type")
        assert injected.status_code == 404
        assert injected.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        by_digest = client.get(f"/v2/hostile/app/manifests/{digests['injected_type']}")
        assert by_digest.status_code == 404

        referrers = client.get(f"/v2/hostile/app/referrers/{digests['good']}")
        assert referrers.status_code == 200
        assert referrers.json()["manifests"] == []
        filtered = client.get(f"/v2/hostile/app/referrers/{digests['good']}",
                              params={"artifactType": "application/x" + INJECTION})
        assert filtered.status_code == 200
        assert filtered.json()["manifests"] == []

        tags = client.get("/v2/hostile/app/tags/list", params={"n": "1", "last": "a" + INJECTION})
        assert tags.status_code == 200
        assert tags.json() == {"name": "hostile/app", "tags": ["good"]}

        responses = [good, typeless, injected, by_digest, referrers, filtered, tags]
    for response in responses:
        assert "location" not in response.headers
        for name, value in response.headers.raw:
            assert b"evil" not in name + value
            assert b"\r" not in value
            assert b"\n" not in value
    assert "Traceback" not in registry.stderr_text()


def _resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def test_oversized_manifest_not_read(registry: Any, storage: Storage) -> None:
    config = b"{}"
    padding = " " * (24 * MIB)
    manifest = orjson.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [], "annotations": {"padding": padding},
    })
    digest = _digest(manifest)
    storage.put(f"big/manifest/blobs/sha256/{digest[7:]}", manifest, content_type=OCI_MANIFEST)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest), "annotations": {REF_NAME: "huge"}},
    ]}
    storage.put("big/manifest/index.json", orjson.dumps(index), content_type="application/json")

    with httpx.Client(base_url=registry.url, timeout=READ_LIMIT) as client:
        assert client.get("/v2/").status_code == 200
        before = _resident_bytes(registry.pid)
        for path in ("/v2/big/manifest/manifests/huge", f"/v2/big/manifest/manifests/{digest}"):
            response = client.get(path)
            assert response.status_code == 404
            error = response.json()["errors"][0]
            assert error["code"] == "MANIFEST_UNKNOWN"
            assert error["detail"] == {"digest": digest}
        growth = _resident_bytes(registry.pid) - before
    # Reading the 24 MiB object, even once, would grow the server by more than this.
    assert growth < 12 * MIB
