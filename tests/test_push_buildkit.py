"""Pushing every generated BuildKit layout shape, as a tarball and as a directory, to moto S3."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from stratus.config import load_config
from stratus.push import PushResult, push_oci_layout
from stratus.storage import Storage
from support.layouts import (
    ARM64,
    AMD64,
    ARTIFACT,
    DIRECTORY,
    REF_NAME,
    SHAPES,
    TARBALL,
    LayoutDescription,
    LayoutSpec,
    generate_layout,
)

MIB = 1024 * 1024
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def bucket_objects(client: Any, bucket: str, prefix: str) -> dict[str, tuple[bytes, str]]:
    objects: dict[str, tuple[bytes, str]] = {}
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    for item in listing.get("Contents", []):
        response = client.get_object(Bucket=bucket, Key=item["Key"])
        objects[item["Key"]] = (response["Body"].read(), response["ContentType"])
    return objects


def assert_pushed(client: Any, bucket: str, prefix: str, layout: LayoutDescription, tag: str, result: PushResult) -> None:
    objects = bucket_objects(client, bucket, prefix)
    expected_keys = {f"{prefix}/blobs/{digest.replace(':', '/')}" for digest in layout.referenced}
    blob_keys = {key for key in objects if "/blobs/" in key}
    assert blob_keys == expected_keys
    for digest in layout.referenced:
        body, content_type = objects[f"{prefix}/blobs/{digest.replace(':', '/')}"]
        assert body == layout.blobs[digest], digest
        assert content_type == layout.content_type(digest), digest
    for digest in layout.unreferenced:
        assert f"{prefix}/blobs/{digest.replace(':', '/')}" not in objects

    assert str(result.digest) == layout.digest
    assert set(map(str, result.uploaded)) == set(layout.referenced)
    index_body, index_type = objects[f"{prefix}/index.json"]
    assert index_type == OCI_INDEX
    stored = orjson.loads(index_body)
    assert stored["schemaVersion"] == 2
    entry = stored["manifests"][0]
    source = layout.entries[0]
    assert entry["digest"] == layout.digest
    assert entry["mediaType"] == layout.media_type
    assert entry["size"] == layout.size
    assert entry.get("platform") == source.get("platform")
    assert entry["annotations"] == {**(source.get("annotations") or {}), REF_NAME: tag}
    assert set(objects) == blob_keys | {f"{prefix}/index.json", f"{prefix}/oci-layout"}


@pytest.mark.parametrize("output", [TARBALL, DIRECTORY])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_push_buildkit_shape(
    shape: str, output: str, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    spec = dataclasses.replace(SHAPES[shape], output=output)
    layout = generate_layout(tmp_path / ("image.tar" if output == TARBALL else "image"), spec)
    result = push_oci_layout(storage, bucket, layout.path, "acme/app", "pushed", log_output=None)
    assert_pushed(bucket_client, bucket, "acme/app", layout, "pushed", result)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_push_buildkit_tarball_matches_directory(
    shape: str, tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any,
) -> None:
    tarball = generate_layout(tmp_path / "image.tar", dataclasses.replace(SHAPES[shape], output=TARBALL))
    directory = generate_layout(tmp_path / "image", dataclasses.replace(SHAPES[shape], output=DIRECTORY))
    from_tarball = push_oci_layout(storage, bucket, tarball.path, "from/tar", "1", log_output=None)
    from_directory = push_oci_layout(storage, bucket, directory.path, "from/dir", "1", log_output=None)

    tar_objects = bucket_objects(bucket_client, bucket, "from/tar")
    directory_objects = bucket_objects(bucket_client, bucket, "from/dir")
    tar_blobs = {key.removeprefix("from/tar/"): value for key, value in tar_objects.items() if "/blobs/" in key}
    directory_blobs = {key.removeprefix("from/dir/"): value for key, value in directory_objects.items() if "/blobs/" in key}
    assert tar_blobs == directory_blobs
    assert from_tarball.uploaded == from_directory.uploaded
    assert from_tarball.bytes_sent == from_directory.bytes_sent
    assert from_tarball.digest == from_directory.digest


@pytest.mark.parametrize("output", [TARBALL, DIRECTORY])
def test_push_buildkit_large_layers_in_parts(
    output: str, tmp_path: Path, storage: Storage, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    spec = LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT, app_payload_size=11 * MIB, output=output)
    layout = generate_layout(tmp_path / ("image.tar" if output == TARBALL else "image"), spec)
    result = push_oci_layout(
        storage, bucket, layout.path, "acme/big", "1.0", log_output=None, config=load_config(stratus_env),
        blob_upload_concurrency=2, multipart_threshold=5 * MIB, part_size=5 * MIB,
    )
    assert_pushed(bucket_client, bucket, "acme/big", layout, "1.0", result)
    assert result.part_worker_pids
    for image in layout.images.values():
        app_layer = image.layers[-1]
        head = bucket_client.head_object(Bucket=bucket, Key=f"acme/big/blobs/{app_layer.replace(':', '/')}")
        assert head["ETag"].endswith('-3"')


def test_push_buildkit_choice_among_names(tmp_path: Path, storage: Storage, bucket: str, bucket_client: Any) -> None:
    layout = generate_layout(tmp_path / "image.tar", SHAPES["several-names"])
    result = push_oci_layout(
        storage, bucket, layout.path, "acme/app", "2.0", log_output=None, layout_reference="ghcr.io/acme/myapp:1.0",
    )
    assert str(result.digest) == layout.digest
    entry = orjson.loads(bucket_objects(bucket_client, bucket, "acme/app")["acme/app/index.json"][0])["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == "ghcr.io/acme/myapp:1.0"
    assert entry["annotations"][REF_NAME] == "2.0"
