"""S3 faults between Stratus and moto: throttling, resets, stalls, cut responses.

Every test puts a FaultProxy (support/faults.py) in front of moto's S3 server and points
Stratus at the proxy. The registry must respond to each request as it does without faults
or with 429/503, never with a 500 or wrong bytes, and must serve normally again once the
faults stop. The pusher must finish a push through the faults, or fail with one clear
line and leave index.json as it was, so that a rerun completes.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stratus.config import load_config
from stratus.push import IndexUpdateFailed, push_oci_layout
from stratus.storage import Storage, StorageUnavailable, open_storage
from support.faults import ALL_FAULTS, Fault, FaultProxy, ProxiedRequest, running_proxy
from support.layouts import (
    AMD64,
    ARM64,
    ARTIFACT,
    REF_NAME,
    LayoutDescription,
    LayoutSpec,
    generate_layout,
    load_layout_into_bucket,
)
from support.processes import child_environment
from support.s3 import s3_environment

MIB = 1024 * 1024
REPOSITORY = "org/app"
PUSH_COMMAND = [sys.executable, "-m", "stratus", "push"]
# Upper bound on one child process, so that a hang fails the test instead of the run.
HANG_LIMIT = 180.0

# Short windows and timeouts, so that a stall costs little and recovery comes quickly.
FRESHNESS = 0.5
REGISTRY_SETTINGS = {
    "STRATUS_INDEX_FRESHNESS": str(FRESHNESS),
    "STRATUS_S3_READ_TIMEOUT": "0.5",
    "STRATUS_S3_CONNECT_TIMEOUT": "0.5",
    "STRATUS_S3_MAX_ATTEMPTS": "2",
    # No manifest or blob caching, so that every request reaches S3 through the faults.
    "STRATUS_MANIFEST_CACHE_BYTES": "0",
    "STRATUS_BLOB_CACHE_ENTRIES": "0",
}
PUSH_SETTINGS = {
    "STRATUS_S3_READ_TIMEOUT": "1",
    "STRATUS_S3_CONNECT_TIMEOUT": "1",
    "STRATUS_S3_MAX_ATTEMPTS": "6",
}
# The faults that botocore retries by itself. A cut-short response to a PUT is not one of
# them: it parses as a success without an ETag (see the tests of running out of retries).
RETRIED_FAULTS = (Fault.SLOW_DOWN, Fault.RESET, Fault.STALL, Fault.DROP_RESPONSE)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _key(digest: str, repository: str = REPOSITORY) -> str:
    return f"{repository}/blobs/{digest.replace(':', '/')}"


def _upstream_port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def fault_proxy(bucket_endpoint: str) -> Iterator[FaultProxy]:
    with running_proxy(_upstream_port(bucket_endpoint), seed=20240611, stall_limit=10.0) as proxy:
        yield proxy


@pytest.fixture
def proxied_env(fault_proxy: FaultProxy, bucket: str) -> dict[str, str]:
    """The S3_* settings of this test's bucket, reached through the fault proxy."""
    return s3_environment(fault_proxy.endpoint, bucket)


def _is_index_get(request: ProxiedRequest) -> bool:
    return request.method == "GET" and request.key.endswith("/index.json")


def _first(count: int, matcher: Callable[[ProxiedRequest], bool]) -> Callable[[ProxiedRequest], bool]:
    """Return a matcher that accepts only the first `count` requests `matcher` accepts."""
    seen = 0

    def accept(request: ProxiedRequest) -> bool:
        nonlocal seen
        if not matcher(request) or seen >= count:
            return False
        seen += 1
        return True

    return accept


# ---------------------------------------------------------------- storage


def test_storage_cut_responses_unavailable(fault_proxy: FaultProxy, proxied_env: dict[str, str]) -> None:
    storage = open_storage(load_config({**proxied_env, "STRATUS_S3_MAX_ATTEMPTS": "1"}))
    storage.put("org/app/object", b"hello", content_type="application/octet-stream")
    fault_proxy.set_faults(1.0, [Fault.TRUNCATE])

    with pytest.raises(StorageUnavailable) as read_error:
        storage.get("org/app/object", max_bytes=1024)
    assert str(read_error.value) == "get_object org/app/object failed: the connection closed after 2 of 5 bytes"

    with pytest.raises(StorageUnavailable) as stat_error:
        storage.stat("org/app/object")
    assert str(stat_error.value) == "head_object org/app/object failed: the response has no ContentLength, ETag"

    with pytest.raises(StorageUnavailable) as put_error:
        storage.put("org/app/other", b"x", content_type="application/octet-stream")
    assert str(put_error.value) == "put_object org/app/other failed: the response has no ETag"


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Expected:
    """A request and the response it gets when S3 works."""

    method: str
    path: str
    status: int
    digest: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    json_body: Any = None


def _registry_requests(layout: LayoutDescription, *, blob_proxy: bool) -> list[Expected]:
    image = layout.images["linux/amd64"]
    layer = image.layers[-1]
    base = f"/v2/{REPOSITORY}"
    requests = [
        Expected("GET", f"{base}/manifests/v1", 200, layout.digest),
        Expected("GET", f"{base}/manifests/{image.manifest}", 200, image.manifest),
        Expected("GET", f"{base}/manifests/{image.attestation_manifest}", 200, image.attestation_manifest),
        Expected("GET", f"{base}/manifests/{layout.digest}", 304, headers=(("if-none-match", f'"{layout.digest}"'),)),
        Expected("HEAD", f"{base}/blobs/{layer}", 200),
        Expected("GET", f"{base}/tags/list", 200, json_body={"name": REPOSITORY, "tags": ["v1"]}),
        Expected("GET", f"{base}/manifests/missing", 404, json_body="MANIFEST_UNKNOWN"),
    ]
    requests.append(Expected("GET", f"{base}/blobs/{layer}", 200 if blob_proxy else 307, layer))
    return requests


def _check_answer(response: httpx.Response, expected: Expected, layout: LayoutDescription) -> None:
    """Assert that a response is exactly the one `expected` gets when S3 works."""
    assert response.status_code == expected.status, (expected.path, response.status_code, response.text[:300])
    if expected.status == 200 and expected.method == "GET" and expected.digest is not None:
        assert _sha256(response.content) == expected.digest, expected.path
        assert response.headers["docker-content-digest"] == expected.digest
    if expected.method == "HEAD":
        digest = expected.path.rsplit("/", 1)[1]
        assert int(response.headers["content-length"]) == len(layout.blobs[digest])
    if expected.status == 307:
        assert response.headers["location"].split("?", 1)[0].endswith(_key(expected.digest or ""))
    if expected.json_body == "MANIFEST_UNKNOWN":
        assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    elif expected.json_body is not None:
        assert response.json() == expected.json_body


async def _send_round(
    clients: list[tuple[httpx.AsyncClient, list[Expected]]], layout: LayoutDescription, outcomes: Counter[str]
) -> None:
    """Send every request of both registries at once, and check each response or allowed failure."""

    async def send(client: httpx.AsyncClient, expected: Expected) -> None:
        try:
            response = await client.request(expected.method, expected.path, headers=dict(expected.headers))
        except httpx.RemoteProtocolError:
            # Only a blob the registry streams may be cut short: the status line was sent
            # before S3 failed, so the registry closes the connection early.
            assert expected.method == "GET"
            assert expected.status == 200
            assert "/blobs/" in expected.path
            outcomes["blob cut short"] += 1
            return
        assert b"Traceback" not in response.content
        outcomes[str(response.status_code)] += 1
        if response.status_code in (429, 503):
            assert response.headers["retry-after"] == "1"
            if expected.method == "GET":
                code = response.json()["errors"][0]["code"]
                assert code == ("TOOMANYREQUESTS" if response.status_code == 429 else "UNAVAILABLE")
            return
        _check_answer(response, expected, layout)

    await asyncio.gather(*(send(client, expected) for client, requests in clients for expected in requests))


async def _run_rounds(
    urls: list[tuple[str, list[Expected]]], layout: LayoutDescription, rounds: int
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    clients = [
        (httpx.AsyncClient(base_url=url, timeout=60, follow_redirects=False), requests) for url, requests in urls
    ]
    try:
        for _ in range(rounds):
            await _send_round(clients, layout, outcomes)
    finally:
        for client, _ in clients:
            await client.aclose()
    return outcomes


def test_registry_under_faults_recovers(
    tmp_path: Path, storage: Storage, fault_proxy: FaultProxy, proxied_env: dict[str, str], registry_factory: Any,
) -> None:
    layout = generate_layout(tmp_path / "layout", LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT))
    load_layout_into_bucket(storage, REPOSITORY, layout, "v1")
    streaming = registry_factory({**REGISTRY_SETTINGS, "STRATUS_BLOB_PROXY": "true"}, env=proxied_env)
    redirecting = registry_factory(REGISTRY_SETTINGS, env=proxied_env)
    urls = [
        (streaming.url, _registry_requests(layout, blob_proxy=True)),
        (redirecting.url, _registry_requests(layout, blob_proxy=False)),
    ]

    fault_proxy.set_faults(0.3)
    outcomes = asyncio.run(_run_rounds(urls, layout, rounds=14))
    injected = fault_proxy.faults_injected()
    assert all(count > 0 for count in injected.values()), injected
    assert set(outcomes) <= {"200", "304", "307", "404", "429", "503", "blob cut short"}, outcomes
    assert outcomes["503"] > 0, outcomes

    fault_proxy.set_faults(0.0)
    time.sleep(FRESHNESS)
    healed = asyncio.run(_run_rounds(urls, layout, rounds=2))
    assert set(healed) <= {"200", "304", "307", "404"}, healed
    for registry in (streaming, redirecting):
        assert "Traceback" not in registry.stderr_text()


def test_registry_truncated_index_not_kept(
    tmp_path: Path, storage: Storage, fault_proxy: FaultProxy, proxied_env: dict[str, str], registry_factory: Any,
) -> None:
    layout = generate_layout(tmp_path / "layout", LayoutSpec())
    load_layout_into_bucket(storage, REPOSITORY, layout, "v1")
    registry = registry_factory(REGISTRY_SETTINGS, env=proxied_env)

    fault_proxy.set_faults(1.0, [Fault.TRUNCATE], _is_index_get)
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        for _ in range(2):
            response = client.get(f"/v2/{REPOSITORY}/manifests/v1")
            assert response.status_code == 503
            assert response.json() == {"errors": [{
                "code": "UNAVAILABLE", "message": "the storage backend is unavailable", "detail": None,
            }]}

        fault_proxy.set_faults(0.0)
        time.sleep(FRESHNESS)
        response = client.get(f"/v2/{REPOSITORY}/manifests/v1")
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == layout.digest
    assert "is unusable" not in registry.stderr_text()


# ---------------------------------------------------------------- pusher


def _index(bucket_client: Any, bucket: str, repository: str = REPOSITORY) -> bytes:
    return bytes(bucket_client.get_object(Bucket=bucket, Key=f"{repository}/index.json")["Body"].read())


def _tags(index: bytes) -> dict[str, str]:
    return {entry["annotations"][REF_NAME]: entry["digest"] for entry in orjson.loads(index)["manifests"]}


def _assert_blobs_stored(bucket_client: Any, bucket: str, layout: LayoutDescription) -> None:
    for digest in layout.referenced:
        stored = bucket_client.get_object(Bucket=bucket, Key=_key(digest))["Body"].read()
        assert stored == layout.blobs[digest], digest


def test_push_under_faults_completes(
    tmp_path: Path, fault_proxy: FaultProxy, proxied_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    first = generate_layout(tmp_path / "first.tar", LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT))
    second = generate_layout(tmp_path / "second.tar", LayoutSpec(app_payload_size=12 * MIB))
    config = load_config({**proxied_env, **PUSH_SETTINGS})
    storage = open_storage(config)

    fault_proxy.set_faults(0.3, RETRIED_FAULTS)
    for layout, tag in ((first, "v1"), (second, "v2")):
        result = push_oci_layout(
            storage, bucket, layout.path, REPOSITORY, tag, log_output=None, config=config,
            blob_upload_concurrency=2, multipart_threshold=5 * MIB, part_size=5 * MIB,
        )
        assert str(result.digest) == layout.digest
    fault_proxy.set_faults(0.0)

    injected = fault_proxy.faults_injected()
    assert all(injected[fault.value] > 0 for fault in RETRIED_FAULTS), injected
    part_puts = Counter(
        (exchange.request.key, exchange.request.part_number) for exchange in fault_proxy.exchanges
        if exchange.request.method == "PUT" and exchange.request.part_number is not None
    )
    assert len(part_puts) == 3
    assert _tags(_index(bucket_client, bucket)) == {"v1": first.digest, "v2": second.digest}
    _assert_blobs_stored(bucket_client, bucket, first)
    _assert_blobs_stored(bucket_client, bucket, second)

    # NOTE: when S3 starts a multipart upload but its response is lost, botocore's retry
    # starts another, and the first is left unfinished until a later push to the
    # repository aborts it as stale (after a day) or because it uploads that key again.
    lost_starts = fault_proxy.count(
        lambda exchange: exchange.request.method == "POST" and "uploads" in exchange.request.query
        and exchange.outcome == Fault.DROP_RESPONSE.value
    )
    open_uploads = bucket_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert len(open_uploads) == lost_starts


def test_push_retries_cut_index_reads(
    tmp_path: Path, fault_proxy: FaultProxy, proxied_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    config = load_config({**proxied_env, **PUSH_SETTINGS})
    storage = open_storage(config)
    first = generate_layout(tmp_path / "first.tar", LayoutSpec())
    push_oci_layout(storage, bucket, first.path, REPOSITORY, "v1", log_output=None, config=config)
    second = generate_layout(tmp_path / "second.tar", LayoutSpec(app_payload_size=10))

    # Two reads of index.json in a row end part way through its body. botocore does not
    # retry a body that ends early, so the pusher reads a third time on its own.
    fault_proxy.set_faults(1.0, [Fault.TRUNCATE], _first(2, _is_index_get))
    push_oci_layout(storage, bucket, second.path, REPOSITORY, "v2", log_output=None, config=config)

    index_reads = [exchange.outcome for exchange in fault_proxy.exchanges if _is_index_get(exchange.request)]
    assert index_reads == ["forwarded", "truncate", "truncate", "forwarded"]
    assert _tags(_index(bucket_client, bucket)) == {"v2": second.digest, "v1": first.digest}


def test_push_index_read_retries_run_out(
    tmp_path: Path, fault_proxy: FaultProxy, proxied_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    config = load_config({**proxied_env, **PUSH_SETTINGS})
    storage = open_storage(config)
    first = generate_layout(tmp_path / "first.tar", LayoutSpec())
    push_oci_layout(storage, bucket, first.path, REPOSITORY, "v1", log_output=None, config=config)
    before = _index(bucket_client, bucket)
    second = generate_layout(tmp_path / "second.tar", LayoutSpec(app_payload_size=10))

    fault_proxy.set_faults(1.0, [Fault.TRUNCATE], _is_index_get)
    with pytest.raises(IndexUpdateFailed) as error:
        push_oci_layout(storage, bucket, second.path, REPOSITORY, "v2", log_output=None, config=config)
    size = len(before)
    assert str(error.value) == (
        f"reading {REPOSITORY}/index.json failed: get_object {REPOSITORY}/index.json failed: "
        f"the connection closed after {size // 2} of {size} bytes"
    )
    assert _index(bucket_client, bucket) == before


@dataclass(frozen=True)
class RunOut:
    """A request that fails on every attempt, and the line `stratus push` prints for it."""

    fault: Fault
    matcher: Callable[[ProxiedRequest], bool]
    message: Callable[[LayoutDescription], str]


def _big_layer(layout: LayoutDescription) -> str:
    return layout.images["linux/amd64"].layers[-1]


RUN_OUT_CASES = {
    "index write throttled": RunOut(
        Fault.SLOW_DOWN,
        lambda request: request.method == "PUT" and request.key.endswith("/index.json"),
        lambda layout: f"writing {REPOSITORY}/index.json failed: put_object {REPOSITORY}/index.json: SlowDown",
    ),
    "part upload throttled": RunOut(
        Fault.SLOW_DOWN,
        lambda request: request.part_number is not None,
        lambda layout: (
            f"upload of part 1 of {_key(_big_layer(layout))} failed: upload_part {_key(_big_layer(layout))}: SlowDown"
        ),
    ),
    "part upload reset": RunOut(
        Fault.RESET,
        lambda request: request.part_number is not None,
        lambda layout: (
            f"upload of part 1 of {_key(_big_layer(layout))} failed: upload_part {_key(_big_layer(layout))} failed: "
            "Connection was closed before we received a valid response from endpoint URL"
        ),
    ),
    "blob put cut short": RunOut(
        Fault.TRUNCATE,
        lambda request: request.method == "PUT" and "/blobs/" in request.key and request.part_number is None,
        lambda layout: "to {key} failed: put_object {key} failed: the response has no ETag",
    ),
}


@pytest.mark.parametrize("case", RUN_OUT_CASES)
def test_push_retries_run_out(
    tmp_path: Path, case: str, fault_proxy: FaultProxy, proxied_env: dict[str, str], bucket: str,
    bucket_client: Any, storage: Storage, stratus_env: dict[str, str],
) -> None:
    run_out = RUN_OUT_CASES[case]
    earlier = generate_layout(tmp_path / "earlier.tar", LayoutSpec(app_payload_size=10))
    push_oci_layout(storage, bucket, earlier.path, REPOSITORY, "stable", log_output=None)
    before = _index(bucket_client, bucket)
    layout = generate_layout(tmp_path / "image.tar", LayoutSpec(app_payload_size=6 * MIB))

    fault_proxy.set_faults(1.0, [run_out.fault], run_out.matcher)
    environment = child_environment({**proxied_env, **PUSH_SETTINGS, "STRATUS_S3_MAX_ATTEMPTS": "2"})
    child = subprocess.run(
        [*PUSH_COMMAND, str(layout.path), f"{REPOSITORY}:new", "-j", "1", "--part-size", "5MiB",
         "--multipart-threshold", "5MiB"],
        env=environment, capture_output=True, text=True, timeout=HANG_LIMIT,
    )
    assert child.returncode == 1, child.stderr
    last_line = child.stderr.strip().splitlines()[-1]
    assert "Traceback" not in child.stderr
    assert last_line.startswith("stratus push: ")
    message = run_out.message(layout)
    if "{key}" in message:
        failed = [exchange.request.key for exchange in fault_proxy.exchanges if exchange.outcome == run_out.fault.value]
        message = message.format(key=failed[0])
    assert message in last_line
    assert _index(bucket_client, bucket) == before

    fault_proxy.set_faults(0.0)
    result = push_oci_layout(
        storage, bucket, layout.path, REPOSITORY, "new", log_output=None, config=load_config(stratus_env),
        multipart_threshold=5 * MIB, part_size=5 * MIB,
    )
    assert str(result.digest) == layout.digest
    assert _tags(_index(bucket_client, bucket)) == {"new": layout.digest, "stable": earlier.digest}
    _assert_blobs_stored(bucket_client, bucket, layout)
    assert bucket_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
