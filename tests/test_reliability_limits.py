"""Limits the server enforces: request heads and index.json size, with the error for each.

Request heads are sent over a raw socket with test_reliability_hostile_input's helpers. A
head over the limit must get 431 or a closed connection, and index.json over
STRATUS_MAX_INDEX_BYTES must be rejected with an error that names the limit.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from stratus.storage import Storage
from test_reliability_hostile_input import MIB, OCI_MANIFEST, READ_LIMIT, REF_NAME, _digest, _exchange, _request, _statuses

TOO_LARGE_HTTP = {
    "header value of 4 MiB": _request(b"/v2/", extra=b"X-Big: " + b"a" * (4 * MIB) + b"\r\n"),
    "20,000 headers": _request(b"/v2/", extra=b"".join(b"X-H%d: v\r\n" % number for number in range(20_000))),
    "path of 100 KiB": _request(b"/v2/" + b"a" * 100_000 + b"/manifests/latest"),
}


@pytest.mark.parametrize("case", TOO_LARGE_HTTP)
def test_huge_request_heads_rejected(registry: Any, case: str) -> None:
    reply = _exchange(registry.port, TOO_LARGE_HTTP[case])
    # The server may close the connection before it has read the whole request, and a
    # reset can then discard its 431 response before the client reads it.
    assert _statuses(reply) in ([431], [])
    assert b"Traceback" not in reply


def test_oversized_index_rejected(registry_factory: Any, storage: Storage) -> None:
    registry = registry_factory({"STRATUS_MAX_INDEX_BYTES": "2048"})
    entry = {"mediaType": OCI_MANIFEST, "digest": _digest(b"x"), "size": 1}
    index = orjson.dumps({"schemaVersion": 2, "manifests": [
        {**entry, "annotations": {REF_NAME: f"tag-{number}"}} for number in range(40)
    ]})
    assert len(index) > 2048
    storage.put("big/app/index.json", index, content_type="application/json")

    with httpx.Client(base_url=registry.url, timeout=READ_LIMIT) as client:
        response = client.get("/v2/big/app/tags/list")
    assert response.status_code == 500
    error = response.json()["errors"][0]
    assert error["code"] == "UNKNOWN"
    assert error["message"] == "index.json of repository big/app is too large"
    assert error["detail"] == {
        "repository": "big/app",
        "reason": f"too large: big/app/index.json is {len(index)} bytes, more than the limit of 2048",
    }
