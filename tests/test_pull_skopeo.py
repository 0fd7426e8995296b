"""End to end: push a layout with the pusher, serve it with `stratus serve`, pull it with skopeo.

Each test compares the digests skopeo reports with the digests the layout stored, so a
manifest that is re-serialised, served under the wrong type or redirected to the wrong
blob fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from stratus.config import load_config
from stratus.push import push_oci_layout
from stratus.storage import Storage
from support.content import sha256_digest
from support.layouts import AMD64, ARM64, ARTIFACT, LEGACY, SHAPES, LayoutDescription, LayoutSpec, generate_layout
from support.processes import child_environment
from support.skopeo import skopeo_available, skopeo_copy_from_registry, skopeo_inspect, skopeo_inspect_raw
from support.tools import build_umoci_layout, umoci_available

pytestmark = [
    pytest.mark.skopeo,
    pytest.mark.skipif(not skopeo_available(), reason="skopeo is not installed"),
]


def _push(storage: Storage, env: dict[str, str], layout: Path, repository: str, tag: str) -> str:
    config = load_config(env)
    result = push_oci_layout(storage, config.s3_bucket, layout, repository, tag, log_output=None, config=config)
    return str(result.digest)


@pytest.mark.skipif(not umoci_available(), reason="umoci is not installed")
def test_umoci_image_pulls_with_identical_digests(
    tmp_path: Path, stratus_env: dict[str, str], registry: Any
) -> None:
    layout = build_umoci_layout(tmp_path / "umoci", tag="1.0")

    # The command line, as a user runs it.
    pushed = subprocess.run(
        [sys.executable, "-m", "stratus", "push", str(layout.path), "hello:1.0"],
        env=child_environment(stratus_env), capture_output=True, timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr.decode()

    pulled = skopeo_copy_from_registry(registry.host, "hello", "1.0", tmp_path / "pulled", preserve_digests=True)
    assert pulled.digest == layout.digest
    assert pulled.manifest_bytes == layout.blobs[layout.digest]
    assert set(pulled.layout.blobs) == set(layout.referenced)

    raw, raw_digest = skopeo_inspect_raw(registry.host, "hello", "1.0")
    assert raw_digest == layout.digest
    assert raw == layout.blobs[layout.digest]

    by_digest = skopeo_copy_from_registry(
        registry.host, "library/hello", layout.digest, tmp_path / "by-digest", preserve_digests=True
    )
    assert by_digest.digest == layout.digest


@pytest.mark.parametrize(
    "shape",
    ["multi-platform-legacy-attestations", "multi-platform-artifact-attestations", "several-names",
     "single-v0.11-tarball", "directory-v0.14", "zstd-mixed-with-gzip", "single-platform-artifact-attestation"],
)
def test_buildkit_shape_pulls_per_platform(
    tmp_path: Path, storage: Storage, stratus_env: dict[str, str], registry: Any, shape: str
) -> None:
    spec = SHAPES[shape]
    layout = generate_layout(tmp_path / "layout", spec)
    pushed_digest = _push(storage, stratus_env, layout.path, "org/team/app", "v1")
    assert pushed_digest == layout.digest

    raw, raw_digest = skopeo_inspect_raw(registry.host, "org/team/app", "v1")
    assert raw_digest == layout.digest
    assert raw == layout.blobs[layout.digest]

    for key, image in layout.images.items():
        platform = image.platform
        pulled = skopeo_copy_from_registry(
            registry.host, "org/team/app", "v1", tmp_path / f"pulled-{key.replace('/', '-')}",
            preserve_digests=True, override_os=platform.os, override_arch=platform.architecture,
            override_variant=platform.variant,
        )
        assert pulled.digest == image.manifest
        assert pulled.manifest_bytes == layout.blobs[image.manifest]
        assert set(pulled.layout.blobs) == {image.manifest, image.config, *image.layers}

        by_digest, child_digest = skopeo_inspect_raw(registry.host, "org/team/app", image.manifest)
        assert child_digest == image.manifest

        if image.attestation_manifest is not None:
            attestation, attestation_digest = skopeo_inspect_raw(
                registry.host, "org/team/app", image.attestation_manifest
            )
            assert attestation_digest == image.attestation_manifest


def test_artifact_attestations_listed_as_referrers(
    tmp_path: Path, storage: Storage, stratus_env: dict[str, str], registry: Any
) -> None:
    layout = generate_layout(tmp_path / "layout", SHAPES["multi-platform-artifact-attestations"])
    _push(storage, stratus_env, layout.path, "app", "v1")

    with httpx.Client(base_url=registry.url, timeout=30) as client:
        for image in layout.images.values():
            response = client.get(f"/v2/app/referrers/{image.manifest}")
            assert response.status_code == 200
            manifests = response.json()["manifests"]
            assert [entry["digest"] for entry in manifests] == [image.attestation_manifest]
            assert manifests[0]["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
            assert manifests[0]["size"] == len(layout.blobs[image.attestation_manifest])


def test_legacy_attestations_have_no_referrers(
    tmp_path: Path, storage: Storage, stratus_env: dict[str, str], registry: Any
) -> None:
    layout = generate_layout(tmp_path / "layout", LayoutSpec(platforms=(AMD64, ARM64), attestations=LEGACY))
    _push(storage, stratus_env, layout.path, "app", "v1")
    with httpx.Client(base_url=registry.url, timeout=30) as client:
        response = client.get(f"/v2/app/referrers/{layout.images['linux/amd64'].manifest}")
    assert response.json()["manifests"] == []


def test_docker_manifest_list_served_unconverted(
    tmp_path: Path, storage: Storage, stratus_env: dict[str, str], registry: Any
) -> None:
    layout = generate_layout(tmp_path / "layout", SHAPES["docker-manifest-list"])
    _push(storage, stratus_env, layout.path, "docker/app", "2.0")

    raw, raw_digest = skopeo_inspect_raw(registry.host, "docker/app", "2.0")
    assert raw_digest == layout.digest
    assert orjson.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"

    for image in layout.images.values():
        inspected = skopeo_inspect(
            registry.host, "docker/app", "2.0",
            override_os=image.platform.os, override_arch=image.platform.architecture,
        )
        # skopeo reports the digest of the manifest list it resolved the tag to.
        assert inspected["Digest"] == layout.digest
        assert inspected["Architecture"] == image.platform.architecture
        assert inspected["Layers"] == list(image.layers)

        child, child_digest = skopeo_inspect_raw(registry.host, "docker/app", image.manifest)
        assert child_digest == image.manifest
        assert orjson.loads(child)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_pull_by_index_digest(tmp_path: Path, storage: Storage, stratus_env: dict[str, str], registry: Any) -> None:
    layout: LayoutDescription = generate_layout(
        tmp_path / "layout", LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT)
    )
    _push(storage, stratus_env, layout.path, "app", "v1")

    pulled = skopeo_copy_from_registry(
        registry.host, "app", layout.digest, tmp_path / "pulled", preserve_digests=True, all_platforms=True
    )
    assert pulled.digest == layout.digest
    assert sha256_digest(pulled.manifest_bytes) == layout.digest
    assert set(pulled.layout.blobs) == set(layout.referenced)
