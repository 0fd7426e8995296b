"""Merging the pushed entry into the bucket's index.json with a compare-and-swap on its ETag.

The read-merge-write loop: read index.json and its ETag, put the new entry first, drop
older entries carrying the same tag, and write back with `If-Match: <etag>` (or
`If-None-Match: *` when there was no index.json). S3 returns 412 when another writer
got there first; the loop then reads again and merges again. Because the write is one
PUT, index.json is always either the old document or the new one.

NOTE: this is only as safe as the endpoint's conditional PUT. AWS S3 has honoured
If-Match and If-None-Match on PutObject since 2024; an endpoint that ignores them lets
two concurrent pushes of different tags lose one of the tags.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from stratus.oci.descriptor import REF_NAME_ANNOTATION
from stratus.oci.mediatypes import OCI_INDEX
from stratus.push.errors import IndexUpdateFailed
from stratus.storage import (
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    Storage,
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    index_key,
)

__all__ = ["MAX_INDEX_SIZE", "merge_index", "update_index"]

logger = logging.getLogger(__name__)

# index.json grows by one small entry per tag, so a larger one is rejected rather than read.
MAX_INDEX_SIZE = 64 * 1024 * 1024
# The registry reads index.json only up to STRATUS_MAX_INDEX_BYTES (16 MiB by default),
# so a push never writes a larger one: every tag in it would stop being served.
DEFAULT_MAX_WRITTEN_INDEX_SIZE = 16 * 1024 * 1024

DEFAULT_ATTEMPTS = 20
# Reads and writes of index.json that fail for a transient reason (throttled, timed out, or
# a connection lost after botocore's own retries) are tried this many times in all. Such a
# failure can come after every blob was uploaded, and the merge is idempotent, so it can be
# repeated.
TRANSIENT_ATTEMPTS = 3
# Backoff after a lost race: full jitter over an exponentially growing window, in seconds.
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 2.0


def merge_index(existing: bytes | None, entry: dict[str, Any], tag: str) -> bytes:
    """Return index.json bytes with `entry` first, tagged `tag`, and no other entry of that tag.

    Entries and top-level fields of `existing` are otherwise kept as they are, including
    entries this code cannot parse. Raises IndexUpdateFailed when `existing` is not an
    image index, because overwriting it would drop every tag it holds.
    """
    document: dict[str, Any]
    if existing is None:
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    else:
        document = _parse_existing(existing)

    tagged_entry = dict(entry)
    annotations = dict(tagged_entry.get("annotations") or {})
    annotations[REF_NAME_ANNOTATION] = tag
    tagged_entry["annotations"] = annotations

    kept = [old for old in document.get("manifests") or [] if _entry_tag(old) != tag]
    document["manifests"] = [tagged_entry, *kept]
    document.setdefault("mediaType", OCI_INDEX)
    return orjson.dumps(document)


def update_index(
    storage: Storage,
    repository: str,
    entry: dict[str, Any],
    tag: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    max_written_size: int = DEFAULT_MAX_WRITTEN_INDEX_SIZE,
) -> int:
    """Merge `entry` under `tag` into the repository's index.json; return the attempts it took.

    A merged index.json larger than `max_written_size` is not written: IndexUpdateFailed.

    Retries with backoff when a concurrent writer wins the race (up to `attempts` in all)
    and after a transient storage failure (up to TRANSIENT_ATTEMPTS in all). Raises
    IndexUpdateFailed when those are used up or the bucket fails otherwise.
    """
    key = index_key(repository)
    transient_failures = 0
    for attempt in range(1, attempts + 1):
        try:
            stored = storage.get(key, max_bytes=MAX_INDEX_SIZE)
            existing: bytes | None = stored.body
            etag: str | None = stored.etag
        except NotFound:
            existing, etag = None, None
        except ObjectTooLarge as error:
            raise IndexUpdateFailed(f"{key} in the bucket is larger than {MAX_INDEX_SIZE} bytes") from error
        except (StorageThrottled, StorageUnavailable) as error:
            transient_failures += 1
            if transient_failures >= TRANSIENT_ATTEMPTS:
                raise IndexUpdateFailed(f"reading {key} failed: {error}") from error
            _back_off(f"reading {key} failed ({error})", attempt, attempts, sleep)
            continue
        except StorageError as error:
            raise IndexUpdateFailed(f"reading {key} failed: {error}") from error

        merged = merge_index(existing, entry, tag)
        if len(merged) > max_written_size:
            raise IndexUpdateFailed(
                f"{key} would grow to {len(merged)} bytes, more than the {max_written_size} bytes the registry "
                "reads (STRATUS_MAX_INDEX_BYTES); remove old tags from it first"
            )
        try:
            if etag is None:
                storage.put(key, merged, content_type=OCI_INDEX, if_none_match="*")
            else:
                storage.put(key, merged, content_type=OCI_INDEX, if_match=etag)
        except PreconditionFailed:
            _back_off(f"{key} changed while merging tag {tag}", attempt, attempts, sleep)
            continue
        except (StorageThrottled, StorageUnavailable) as error:
            # The write may have been applied before the connection was lost. Merging
            # again is still right: the entry replaces itself and nothing else changes.
            transient_failures += 1
            if transient_failures >= TRANSIENT_ATTEMPTS:
                raise IndexUpdateFailed(f"writing {key} failed: {error}") from error
            _back_off(f"writing {key} failed ({error})", attempt, attempts, sleep)
            continue
        except StorageError as error:
            raise IndexUpdateFailed(f"writing {key} failed: {error}") from error
        return attempt

    raise IndexUpdateFailed(
        f"{key} kept changing under concurrent pushes; tag {tag} was not written after {attempts} attempts"
    )


def _back_off(reason: str, attempt: int, attempts: int, sleep: Callable[[float], None]) -> None:
    delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
    logger.warning("%s (attempt %d of %d); retrying in %.2f s.", reason, attempt, attempts, delay)
    sleep(delay)


def _parse_existing(existing: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(existing)
    except orjson.JSONDecodeError as error:
        raise IndexUpdateFailed(f"index.json in the bucket is not valid JSON ({error}); fix or remove it first") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise IndexUpdateFailed("index.json in the bucket is not an image index with schemaVersion 2; fix or remove it first")
    manifests = document.get("manifests")
    if manifests is not None and not isinstance(manifests, list):
        raise IndexUpdateFailed("index.json in the bucket has a manifests field that is not a list; fix or remove it first")
    return document


def _entry_tag(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return None
    annotations = entry.get("annotations")
    if not isinstance(annotations, dict):
        return None
    tag = annotations.get(REF_NAME_ANNOTATION)
    return tag if isinstance(tag, str) else None
