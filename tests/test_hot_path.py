"""The hot path, by counting: S3 requests the server makes for warm pulls, revalidations and new tags.

The counts come from the server's own `stratus_s3_requests_total`, which a botocore
`before-send` hook increments for every HTTP request to S3, retries included.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stratus.config import load_config
from stratus.push import push_oci_layout
from stratus.storage import Storage
from support.layouts import AMD64, ARM64, ARTIFACT, LayoutDescription, LayoutSpec, generate_layout

REPOSITORY = "org/app"


def _metric(client: httpx.Client, name: str, labels: str = "") -> float:
    text = client.get("/metrics").text
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    raise AssertionError(f"metric {prefix.strip()} not found in:\n{text}")


def _s3_requests(client: httpx.Client) -> int:
    return int(_metric(client, "stratus_s3_requests_total"))


def _push(storage: Storage, env: dict[str, str], layout: LayoutDescription, tag: str) -> None:
    config = load_config(env)
    push_oci_layout(storage, config.s3_bucket, layout.path, REPOSITORY, tag, log_output=None, config=config)


def _pull(client: httpx.Client, layout: LayoutDescription, tag: str) -> None:
    """Make the requests a client makes to pull every platform of a tag."""
    top = client.get(f"/v2/{REPOSITORY}/manifests/{tag}")
    assert top.status_code == 200
    for image in layout.images.values():
        manifest = client.get(f"/v2/{REPOSITORY}/manifests/{image.manifest}")
        assert manifest.status_code == 200
        for blob in (image.config, *image.layers):
            assert client.head(f"/v2/{REPOSITORY}/blobs/{blob}").status_code == 200
            assert client.get(f"/v2/{REPOSITORY}/blobs/{blob}").status_code == 307


@pytest.fixture
def layout(tmp_path: Path) -> LayoutDescription:
    return generate_layout(tmp_path / "layout", LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT))


def test_warm_pull_makes_no_s3_request(
    registry_factory: Any, storage: Storage, stratus_env: dict[str, str], layout: LayoutDescription
) -> None:
    _push(storage, stratus_env, layout, "v1")
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "600"})
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        _pull(client, layout, "v1")
        cold = _s3_requests(client)
        # index.json, the index, two manifests (GET each); config and layers (HEAD each).
        assert cold == 1 + 1 + 2 + 2 * 3

        for _ in range(3):
            _pull(client, layout, "v1")
        assert _s3_requests(client) == cold
        assert client.get(f"/v2/{REPOSITORY}/tags/list").json()["tags"] == ["v1"]
        assert client.get(f"/v2/{REPOSITORY}/referrers/{layout.images['linux/amd64'].manifest}").status_code == 200
        # The referrers walk reads the attestation manifests once; everything else was cached.
        assert _s3_requests(client) == cold + 2
        assert _metric(client, "stratus_cache_hits_total", 'cache="presigned_url"') == 3 * 6


def test_revalidation_is_one_conditional_get(
    registry_factory: Any, storage: Storage, stratus_env: dict[str, str], layout: LayoutDescription
) -> None:
    _push(storage, stratus_env, layout, "v1")
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "1"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _pull(client, layout, "v1")
        before = _s3_requests(client)

    time.sleep(1.2)  # let the freshness window pass; nothing below is timed

    async def many_clients() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            requests = [client.get(f"/v2/{REPOSITORY}/manifests/v1") for _ in range(64)]
            return [response.status_code for response in await asyncio.gather(*requests)]

    assert asyncio.run(many_clients()) == [200] * 64
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # Requests that found the entry stale waited for one shared conditional GET.
        assert _s3_requests(client) == before + 1


def test_new_tag_served_after_window(
    registry_factory: Any, storage: Storage, stratus_env: dict[str, str], layout: LayoutDescription, tmp_path: Path
) -> None:
    _push(storage, stratus_env, layout, "v1")
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "1"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get(f"/v2/{REPOSITORY}/manifests/v1").status_code == 200
        assert client.get(f"/v2/{REPOSITORY}/manifests/v2").status_code == 404

        _push(storage, stratus_env, layout, "v2")
        time.sleep(1.2)  # let the freshness window pass; nothing below is timed
        response = client.get(f"/v2/{REPOSITORY}/manifests/v2")
        assert response.status_code == 200
        assert response.headers["docker-content-digest"] == layout.digest
        assert client.get(f"/v2/{REPOSITORY}/tags/list").json()["tags"] == ["v1", "v2"]


def test_new_repository_served_after_window(
    registry_factory: Any, storage: Storage, stratus_env: dict[str, str], layout: LayoutDescription
) -> None:
    server = registry_factory({"STRATUS_INDEX_FRESHNESS": "1"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        missing = client.get(f"/v2/{REPOSITORY}/manifests/v1")
        assert missing.status_code == 404
        assert orjson.loads(missing.content)["errors"][0]["code"] == "NAME_UNKNOWN"

        _push(storage, stratus_env, layout, "v1")
        time.sleep(1.2)  # let the freshness window pass; nothing below is timed
        assert client.get(f"/v2/{REPOSITORY}/manifests/v1").status_code == 200


def test_caches_stay_within_bounds(
    registry_factory: Any, storage: Storage, stratus_env: dict[str, str], layout: LayoutDescription
) -> None:
    _push(storage, stratus_env, layout, "v1")
    server = registry_factory({"STRATUS_MANIFEST_CACHE_BYTES": "0", "STRATUS_BLOB_CACHE_ENTRIES": "0",
                               "STRATUS_INDEX_FRESHNESS": "600"})
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        _pull(client, layout, "v1")
        first = _s3_requests(client)
        _pull(client, layout, "v1")
        # With no room for manifests or blobs, only index.json stays cached.
        assert _s3_requests(client) == 2 * first - 1
