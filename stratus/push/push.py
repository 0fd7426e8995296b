"""push_oci_layout: the whole push of one image from a local layout to a repository in the bucket.

The steps, each finished before the next starts:

1. open the layout, choose the image, walk its graph and check every blob is present;
2. check which blobs the bucket already holds, and abort multipart uploads left behind
   by pushes that died;
3. upload the missing blobs, children before parents;
4. write `oci-layout` if the repository has none, then merge index.json.

index.json is written last and in one conditional PUT, so a push that fails or is killed
leaves it either as it was or fully updated, never pointing at a blob that is absent.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import orjson

from stratus.config import Config
from stratus.oci.descriptor import Descriptor
from stratus.oci.mediatypes import OCI_LAYOUT_HEADER
from stratus.oci.reference import Digest
from stratus.push.errors import IndexUpdateFailed, UploadFailed, UsageError
from stratus.push.graph import PlannedBlob, walk_image
from stratus.push.layout import Layout, open_layout, read_index_document
from stratus.push.merge import DEFAULT_MAX_WRITTEN_INDEX_SIZE, update_index
from stratus.push.names import validate_target
from stratus.push.parts import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MAX_OBJECT_SIZE, MIN_PART_SIZE
from stratus.push.progress import format_bytes, open_progress
from stratus.push.selection import group_images, select_image
from stratus.push.upload import BlobUploader, TransferSettings, abort_stale_uploads
from stratus.storage import NotFound, PreconditionFailed, Storage, StorageError, layout_key, open_storage

__all__ = ["DEFAULT_STALE_UPLOAD_AGE", "PushResult", "push_oci_layout"]

logger = logging.getLogger(__name__)

# Multipart uploads older than this are taken to belong to a push that died. A day is
# far longer than any single blob upload takes.
DEFAULT_STALE_UPLOAD_AGE = 24 * 60 * 60.0

_LAYOUT_FILE = orjson.dumps({"imageLayoutVersion": "1.0.0"})


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of a push.

    `uploaded` and `skipped` list blob digests (manifests included) in plan order, children
    before parents; `bytes_sent` counts blob bytes only. `part_worker_pids` contains the ids of the
    processes that sent multipart parts, empty when no blob needed parts.
    """

    repository: str
    tag: str
    digest: Digest
    media_type: str
    uploaded: tuple[Digest, ...]
    skipped: tuple[Digest, ...]
    bytes_sent: int
    part_worker_pids: frozenset[int]


def push_oci_layout(
    storage: Storage,
    bucket: str,
    layout: str | os.PathLike[str],
    image_name: str,
    tag: str,
    *,
    log_output: TextIO | None = sys.stderr,
    blob_upload_concurrency: int = 4,
    config: Config | None = None,
    storage_factory: Callable[[], Storage] | None = None,
    layout_reference: str | None = None,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
    min_part_size: int = MIN_PART_SIZE,
    stale_upload_age: float = DEFAULT_STALE_UPLOAD_AGE,
) -> PushResult:
    """Push the image of an OCI layout (directory or uncompressed tarball) as `image_name:tag`.

    `storage` must be open on `bucket`. Blobs larger than `multipart_threshold` bytes go
    up as multipart uploads whose parts (about `part_size` bytes, at least `min_part_size`)
    are sent by `blob_upload_concurrency` worker processes, and as many blobs are uploaded
    at once. Each worker builds its own storage, from `config` with open_storage() or by
    calling `storage_factory`, which must be picklable. With neither, threads of this
    process send the parts through `storage`. S3 rejects parts under 5 MiB except the
    last, so lower `min_part_size` only for an endpoint configured to accept them.

    `layout_reference` chooses the image when the layout contains several: a tag, a short
    or full reference, or a digest. Multipart uploads under the repository that started
    more than `stale_upload_age` seconds ago are aborted first. Progress goes to `log_output` (a bar on a terminal, lines
    otherwise, nothing for None). Raises a PushError subclass on any failure, and then
    index.json in the bucket is unchanged.
    """
    validate_target(image_name, tag)
    factory = _resolve_storage_factory(config, storage_factory)
    settings = _transfer_settings(blob_upload_concurrency, multipart_threshold, part_size, min_part_size)
    storage_bucket = getattr(storage, "bucket", bucket)
    if storage_bucket != bucket:
        raise UsageError(f"the storage is open on bucket {storage_bucket!r}, not {bucket!r}")
    progress = open_progress(log_output)

    opened = open_layout(layout)
    entry, blobs = _plan_push(opened, layout_reference)
    total = sum(blob.size for blob in blobs)
    progress.message(
        f"Pushing {entry.digest} from {opened.description} to {image_name}:{tag} "
        f"in bucket {bucket}: {len(blobs)} blobs, {format_bytes(total)}"
    )

    with BlobUploader(storage, bucket, image_name, settings, factory, progress) as uploader:
        missing = uploader.find_missing(blobs)
        if any(blob.size > settings.multipart_threshold and not blob.is_manifest for blob in missing):
            uploader.start_part_workers()
        abort_stale_uploads(storage, image_name, stale_upload_age, progress)
        try:
            uploader.upload(missing)
        finally:
            progress.finish()
    stats = uploader.stats
    plan_order = {blob.digest: position for position, blob in enumerate(blobs)}

    _write_layout_file(storage, image_name)
    limit = config.max_index_bytes if config is not None else DEFAULT_MAX_WRITTEN_INDEX_SIZE
    attempts = update_index(storage, image_name, entry.raw, tag, max_written_size=limit)
    if attempts > 1:
        logger.info("index.json of %s merged after %d attempts.", image_name, attempts)

    logger.info(
        "Pushed %s:%s as %s: %d blobs uploaded, %d skipped, %d bytes sent.",
        image_name, tag, entry.digest, len(stats.uploaded), len(stats.skipped), stats.bytes_sent,
    )
    progress.message(
        f"Pushed {image_name}:{tag} as {entry.digest}: {len(stats.uploaded)} blobs uploaded, "
        f"{len(stats.skipped)} already present, {format_bytes(stats.bytes_sent)} sent"
    )
    return PushResult(
        repository=image_name,
        tag=tag,
        digest=entry.digest,
        media_type=entry.media_type,
        uploaded=tuple(sorted(stats.uploaded, key=plan_order.__getitem__)),
        skipped=tuple(sorted(stats.skipped, key=plan_order.__getitem__)),
        bytes_sent=stats.bytes_sent,
        part_worker_pids=frozenset(stats.part_worker_pids),
    )


def _plan_push(layout: Layout, layout_reference: str | None) -> tuple[Descriptor, list[PlannedBlob]]:
    """Choose the image and list its blobs, checking all are present before any upload."""
    images = group_images(read_index_document(layout).descriptors)
    entry = select_image(images, layout_reference, layout.description)
    blobs = walk_image(layout, entry)
    for blob in blobs:
        if blob.size > MAX_OBJECT_SIZE:
            raise UploadFailed(f"blob {blob.digest} is {blob.size} bytes, more than the S3 object limit of 5 TiB")
    return entry, blobs


def _resolve_storage_factory(
    config: Config | None, storage_factory: Callable[[], Storage] | None
) -> Callable[[], Storage] | None:
    if config is not None and storage_factory is not None:
        raise UsageError("give config or storage_factory, not both")
    if config is not None:
        # A partial of a module-level function and a frozen dataclass pickles, unlike a client.
        return functools.partial(open_storage, config)
    return storage_factory


def _transfer_settings(concurrency: int, threshold: int, part_size: int, min_part_size: int) -> TransferSettings:
    if concurrency < 1:
        raise UsageError(f"invalid blob upload concurrency {concurrency}: expected at least 1")
    if threshold < 0:
        raise UsageError(f"invalid multipart threshold {threshold}: expected 0 or more bytes")
    if part_size < 1 or min_part_size < 1:
        raise UsageError(f"invalid part size {part_size} (minimum {min_part_size}): expected at least 1 byte")
    return TransferSettings(concurrency, threshold, part_size, min_part_size)


def _write_layout_file(storage: Storage, repository: str) -> None:
    key = layout_key(repository)
    try:
        storage.stat(key)
        return
    except NotFound:
        pass
    except StorageError as error:
        raise IndexUpdateFailed(f"checking {key} failed: {error}") from error

    try:
        storage.put(key, _LAYOUT_FILE, content_type=OCI_LAYOUT_HEADER, if_none_match="*")
    except PreconditionFailed:
        logger.debug("%s was written by a concurrent push.", key)
    except StorageError as error:
        raise IndexUpdateFailed(f"writing {key} failed: {error}") from error
