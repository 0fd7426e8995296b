"""Deployment modes and operations: the local data directory, blob proxying, the public
endpoint, health and readiness, metrics and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stratus.config import load_config
from stratus.push import push_oci_layout
from stratus.storage import open_storage
from support.layouts import AMD64, ARM64, LayoutDescription, LayoutSpec, generate_layout
from support.processes import child_environment
from support.s3 import create_bucket, s3_environment
from support.skopeo import skopeo_available, skopeo_copy_from_registry

needs_skopeo = pytest.mark.skipif(not skopeo_available(), reason="skopeo is not installed")


@pytest.fixture
def layout(tmp_path: Path) -> LayoutDescription:
    spec = LayoutSpec(platforms=(AMD64, ARM64), app_payload_size=300_000)
    return generate_layout(tmp_path / "layout", spec)


def _largest_layer(layout: LayoutDescription) -> str:
    layers = [digest for image in layout.images.values() for digest in image.layers]
    return max(layers, key=lambda digest: len(layout.blobs[digest]))


def _check_blob_bytes(client: httpx.Client, repository: str, layout: LayoutDescription) -> None:
    """Check that blob GETs return the bytes themselves, whole and by range."""
    digest = _largest_layer(layout)
    data = layout.blobs[digest]
    path = f"/v2/{repository}/blobs/{digest}"

    whole = client.get(path)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["docker-content-digest"] == digest

    part = client.get(path, headers={"Range": "bytes=100-299999"})
    assert part.status_code == 206
    assert part.content == data[100:300000]
    assert part.headers["content-range"] == f"bytes 100-299999/{len(data)}"
    assert part.headers["content-length"] == "299900"

    tail = client.get(path, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.content == data[-10:]

    open_ended = client.get(path, headers={"Range": f"bytes={len(data) - 5}-"})
    assert open_ended.content == data[-5:]

    beyond = client.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(data)}"

    several = client.get(path, headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200
    assert several.content == data

    # HEAD carries the headers GET would, range included.
    head = client.head(path, headers={"Range": "bytes=0-1"})
    assert head.status_code == 206
    assert head.content == b""
    assert head.headers["content-length"] == "2"
    assert head.headers["content-range"] == f"bytes 0-1/{len(data)}"

    upper = client.get(path, headers={"Range": "BYTES=0-3"})
    assert upper.status_code == 206
    assert upper.content == data[:4]

    huge = client.get(path, headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert huge.status_code == 200
    assert huge.content == data


# ---------------------------------------------------------------- local data directory


@needs_skopeo
def test_local_directory_push_and_pull(tmp_path: Path, layout: LayoutDescription, registry_factory: Any) -> None:
    data_dir = tmp_path / "data"
    environment = {"STRATUS_DATA_DIR": str(data_dir)}
    pushed = subprocess.run(
        [sys.executable, "-m", "stratus", "push", str(layout.path), "local/app:1.0"],
        env=child_environment(environment), capture_output=True, timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr.decode()
    assert (data_dir / "local/app/index.json").is_file()
    assert (data_dir / "local/app/blobs/sha256" / layout.digest[7:]).read_bytes() == layout.blobs[layout.digest]

    registry = registry_factory(env=environment)
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        _check_blob_bytes(client, "local/app", layout)

    image = layout.images["linux/arm64"]
    pulled = skopeo_copy_from_registry(
        registry.host, "local/app", "1.0", tmp_path / "pulled", preserve_digests=True, override_arch="arm64"
    )
    assert pulled.digest == image.manifest
    assert set(pulled.layout.blobs) == {image.manifest, image.config, *image.layers}
    assert "serving directory" in registry.stderr_text()


def test_local_directory_library_push(tmp_path: Path, layout: LayoutDescription) -> None:
    config = load_config({"STRATUS_DATA_DIR": str(tmp_path / "data")})
    storage = open_storage(config)
    result = push_oci_layout(storage, storage.bucket, layout.path, "alpine", "3", log_output=None, config=config,
                             multipart_threshold=64 * 1024, part_size=5 * 1024 * 1024)
    assert str(result.digest) == layout.digest
    stored = tmp_path / "data/library/alpine/blobs/sha256"
    assert {f"sha256:{path.name}" for path in stored.iterdir()} == set(layout.referenced)


# ---------------------------------------------------------------- S3 proxy mode and public endpoint


@needs_skopeo
def test_s3_proxy_mode_sends_bytes(
    tmp_path: Path, layout: LayoutDescription, storage: Any, stratus_env: dict[str, str], registry_factory: Any
) -> None:
    config = load_config(stratus_env)
    push_oci_layout(storage, config.s3_bucket, layout.path, "proxy/app", "1.0", log_output=None, config=config)
    registry = registry_factory({"STRATUS_BLOB_PROXY": "true"})

    with httpx.Client(base_url=registry.url, timeout=30, follow_redirects=False) as client:
        _check_blob_bytes(client, "proxy/app", layout)

    pulled = skopeo_copy_from_registry(
        registry.host, "proxy/app", "1.0", tmp_path / "pulled", preserve_digests=True, override_arch="amd64"
    )
    assert pulled.digest == layout.images["linux/amd64"].manifest


def test_redirect_signed_for_public_endpoint(
    layout: LayoutDescription, storage: Any, stratus_env: dict[str, str], registry_factory: Any
) -> None:
    config = load_config(stratus_env)
    push_oci_layout(storage, config.s3_bucket, layout.path, "app", "1.0", log_output=None, config=config)
    port = stratus_env["S3_ENDPOINT"].rsplit(":", 1)[1]
    # The server talks to 127.0.0.1, and redirects send clients to localhost, another name for it.
    registry = registry_factory({"S3_PUBLIC_ENDPOINT": f"http://localhost:{port}"})

    digest = _largest_layer(layout)
    with httpx.Client(base_url=registry.url, timeout=30, follow_redirects=False) as client:
        response = client.get(f"/v2/app/blobs/{digest}")
    assert response.status_code == 307
    location = httpx.URL(response.headers["location"])
    assert location.host == "localhost"
    assert location.port == int(port)
    assert location.params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert httpx.get(str(location), timeout=30).content == layout.blobs[digest]


# ---------------------------------------------------------------- health, readiness, metrics


def test_readiness_follows_storage(isolated_s3_server: Any, registry_factory: Any) -> None:
    create_bucket(isolated_s3_server.endpoint, "ready-bucket")
    environment = {**s3_environment(isolated_s3_server.endpoint, "ready-bucket"), "STRATUS_S3_MAX_ATTEMPTS": "1"}
    registry = registry_factory(env=environment)
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}

        isolated_s3_server.stop()
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable", "reason": "the storage backend is unreachable"}
        assert client.get("/healthz").status_code == 200

        isolated_s3_server.start()
        create_bucket(isolated_s3_server.endpoint, "ready-bucket")  # moto lost it when it stopped
        assert client.get("/readyz").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}


def _metric_lines(client: httpx.Client, prefix: str) -> dict[str, float]:
    lines = client.get("/metrics").text.splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines if line.startswith(prefix)
    }


def test_metrics_count_known_requests(
    layout: LayoutDescription, storage: Any, stratus_env: dict[str, str], registry_factory: Any
) -> None:
    config = load_config(stratus_env)
    push_oci_layout(storage, config.s3_bucket, layout.path, "app", "1.0", log_output=None, config=config)
    registry = registry_factory({"STRATUS_INDEX_FRESHNESS": "600"})
    digest = layout.images["linux/amd64"].config

    with httpx.Client(base_url=registry.url, timeout=30, follow_redirects=False) as client:
        for _ in range(3):
            client.get("/v2/app/manifests/1.0")
        client.head("/v2/app/manifests/1.0")
        client.get("/v2/app/manifests/nope")
        client.get(f"/v2/app/blobs/{digest}")
        client.get(f"/v2/app/blobs/{digest}")
        client.put("/v2/app/manifests/1.0")

        requests = _metric_lines(client, "stratus_http_requests_total")
        hits = _metric_lines(client, "stratus_cache_hits_total")
        misses = _metric_lines(client, "stratus_cache_misses_total")
        s3 = _metric_lines(client, "stratus_s3_requests_total")

    assert requests == {
        # The readiness probe of the test fixture.
        'stratus_http_requests_total{method="GET",route="base",status="200"}': 1.0,
        'stratus_http_requests_total{method="GET",route="manifests",status="200"}': 3.0,
        'stratus_http_requests_total{method="HEAD",route="manifests",status="200"}': 1.0,
        'stratus_http_requests_total{method="GET",route="manifests",status="404"}': 1.0,
        'stratus_http_requests_total{method="GET",route="blobs",status="307"}': 2.0,
        'stratus_http_requests_total{method="other",route="unknown",status="405"}': 1.0,
    }
    # Seven lookups of index.json: the first loads it, six find it fresh.
    assert hits['stratus_cache_hits_total{cache="index"}'] == 6.0
    assert misses['stratus_cache_misses_total{cache="index"}'] == 1.0
    assert hits['stratus_cache_hits_total{cache="manifest"}'] == 3.0
    assert misses['stratus_cache_misses_total{cache="manifest"}'] == 1.0
    assert hits['stratus_cache_hits_total{cache="blob"}'] == 1.0
    assert misses['stratus_cache_misses_total{cache="blob"}'] == 1.0
    assert hits['stratus_cache_hits_total{cache="presigned_url"}'] == 1.0
    assert misses['stratus_cache_misses_total{cache="presigned_url"}'] == 1.0
    # index.json, the index blob, and one HEAD for the config blob.
    assert s3 == {"stratus_s3_requests_total": 3.0}


# ---------------------------------------------------------------- shutdown


def test_sigterm_lets_slow_request_finish(
    isolated_s3_server: Any, layout: LayoutDescription, registry_factory: Any
) -> None:
    create_bucket(isolated_s3_server.endpoint, "slow-bucket")
    environment = s3_environment(isolated_s3_server.endpoint, "slow-bucket")
    config = load_config(environment)
    push_oci_layout(open_storage(config), config.s3_bucket, layout.path, "app", "1.0", log_output=None, config=config)
    registry = registry_factory(env={**environment, "STRATUS_S3_READ_TIMEOUT": "60"})

    results: list[httpx.Response] = []

    def slow_request() -> None:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            results.append(client.get("/v2/app/manifests/1.0"))

    isolated_s3_server.pause()  # S3 stops responding, so the request waits for it
    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(1.0)  # let the request reach the server; nothing below is timed
    os.kill(registry.pid, signal.SIGTERM)
    time.sleep(0.5)
    isolated_s3_server.resume()
    thread.join(timeout=60)

    assert len(results) == 1
    assert results[0].status_code == 200
    assert results[0].headers["docker-content-digest"] == layout.digest
    # uvicorn re-raises SIGTERM once it has shut down, as supervisors expect.
    assert registry.wait(timeout=30) == -signal.SIGTERM
    log = registry.stderr_text()
    assert "Stratus worker stopped." in log
    assert "GET /v2/app/manifests/1.0 200" in log
