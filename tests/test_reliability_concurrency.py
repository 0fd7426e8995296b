"""Many `stratus push` processes at once into one repository.

The bucket is on the moto server that applies writes one at a time (the `atomic_s3`
marker), so a conditional PUT of index.json is atomic as on S3 and the compare-and-swap
merge is what keeps every tag.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from stratus.oci.index import parse_index
from support.layouts import MANIFEST_MEDIA_TYPES, REF_NAME, LayoutSpec, generate_layout
from support.processes import child_environment

REPOSITORY = "team/app"
PUSH_COMMAND = [sys.executable, "-m", "stratus", "push"]
# Upper bound on one child, so that a hang fails the test instead of blocking the run.
HANG_LIMIT = 300.0
DISTINCT_TAGS = 20
SAME_TAG_PUSHES = 5


def _missing_reachable(bucket_client: Any, bucket: str, index: dict[str, Any]) -> list[str]:
    """Return the digests that index.json reaches, through stored manifests, but the bucket lacks."""
    stored = {
        item["Key"].rsplit("/", 2)[-2] + ":" + item["Key"].rsplit("/", 1)[-1]
        for page in bucket_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{REPOSITORY}/blobs/")
        for item in page.get("Contents", [])
    }
    missing: list[str] = []
    pending = list(index["manifests"])
    while pending:
        descriptor = pending.pop()
        digest = descriptor["digest"]
        if digest not in stored:
            missing.append(digest)
            continue
        if descriptor["mediaType"] in MANIFEST_MEDIA_TYPES:
            key = f"{REPOSITORY}/blobs/{digest.replace(':', '/')}"
            document = orjson.loads(bucket_client.get_object(Bucket=bucket, Key=key)["Body"].read())
            pending.extend(document.get("manifests", []))
            pending.extend(document.get("layers", []))
            if "config" in document:
                pending.append(document["config"])
    return missing


@pytest.mark.atomic_s3
def test_concurrent_pushes_keep_every_tag(
    tmp_path: Path, stratus_env: dict[str, str], bucket: str, bucket_client: Any,
) -> None:
    distinct = [
        generate_layout(tmp_path / f"distinct-{number}.tar", LayoutSpec(app_payload_size=1000 + number))
        for number in range(DISTINCT_TAGS)
    ]
    contested = [
        generate_layout(tmp_path / f"contested-{number}.tar", LayoutSpec(app_payload_size=2000 + number))
        for number in range(SAME_TAG_PUSHES)
    ]
    assert len({layout.digest for layout in (*distinct, *contested)}) == DISTINCT_TAGS + SAME_TAG_PUSHES

    targets = [(layout, f"tag-{number}") for number, layout in enumerate(distinct)]
    targets += [(layout, "contested") for layout in contested]
    environment = child_environment(stratus_env)
    children = [
        subprocess.Popen(
            [*PUSH_COMMAND, str(layout.path), f"{REPOSITORY}:{tag}"],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for layout, tag in targets
    ]
    outputs = [child.communicate(timeout=HANG_LIMIT) for child in children]
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr
    for (layout, _), (stdout, _) in zip(targets, outputs):
        assert stdout.strip() == layout.digest

    index_bytes = bucket_client.get_object(Bucket=bucket, Key=f"{REPOSITORY}/index.json")["Body"].read()
    table = parse_index(index_bytes)
    assert table.invalid_entries == ()
    assert len(table.descriptors) == DISTINCT_TAGS + 1
    tags = {tag: str(descriptor.digest) for tag, descriptor in table.tags.items()}
    assert set(tags) == {f"tag-{number}" for number in range(DISTINCT_TAGS)} | {"contested"}
    for number, layout in enumerate(distinct):
        assert tags[f"tag-{number}"] == layout.digest
    assert tags["contested"] in {layout.digest for layout in contested}

    index = orjson.loads(index_bytes)
    assert [entry["annotations"][REF_NAME] for entry in index["manifests"]].count("contested") == 1
    assert _missing_reachable(bucket_client, bucket, index) == []
    assert bucket_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
