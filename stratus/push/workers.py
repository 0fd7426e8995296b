"""Worker processes that upload the parts of multipart uploads.

botocore clients cannot be pickled, so each worker builds its own Storage once, in the
pool initializer, from a picklable factory (for S3, `functools.partial(open_storage,
config)`). A job carries only the file path, byte range, key, upload id and part number.
The worker opens the file and reads its own range, so the parent never reads a large
blob into memory.

Workers are started with the "forkserver" method. A worker forked straight from the
pushing process could inherit a lock that one of its upload threads held at that moment.
The fork server is a fresh single-threaded process, so its children cannot. It imports
botocore once and forks every worker from that state, which makes a worker start in
milliseconds instead of the second a spawned interpreter takes to import botocore.
Every exception a worker raises crosses back to the parent by pickle, so workers raise
only UploadFailed (a single string argument) or LayoutError, never botocore's errors.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from stratus.push.errors import LayoutError, UploadFailed
from stratus.storage import NotFound, Storage, StorageError

__all__ = [
    "PartJob",
    "PartResult",
    "StorageFactory",
    "UploadVanished",
    "send_part",
    "start_part_workers",
    "upload_part",
]

logger = logging.getLogger(__name__)

StorageFactory = Callable[[], Storage]

# The Storage of this worker process, built by _initialize_worker.
_storage: Storage | None = None


@dataclass(frozen=True, slots=True)
class PartJob:
    """One UploadPart call: bytes [offset, offset + length) of `path` become part `part_number` of `key`."""

    path: str
    offset: int
    length: int
    key: str
    upload_id: str
    part_number: int


@dataclass(frozen=True, slots=True)
class PartResult:
    """The ETag S3 returned for a part of `length` bytes, and the id of the process that sent it."""

    part_number: int
    length: int
    etag: str
    pid: int


class UploadVanished(UploadFailed):
    """The multipart upload no longer exists: another push aborted it as stale."""


# Modules the fork server imports before it forks any worker.
_PRELOADED_MODULES = ["stratus.push.workers", "stratus.storage.s3"]


def start_part_workers(storage_factory: StorageFactory, bucket: str, processes: int) -> ProcessPoolExecutor:
    """Start a pool of `processes` workers, each with a Storage built by `storage_factory`.

    The workers are started now, in the background, rather than at the first part, so
    they are ready by the time the first large blob is planned into parts.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOADED_MODULES)
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_initialize_worker,
        initargs=(storage_factory, bucket),
    )
    for _ in range(processes):
        pool.submit(os.getpid)
    return pool


def upload_part(job: PartJob) -> PartResult:
    """Read the job's byte range and upload it as one part; runs in a worker process."""
    if _storage is None:
        raise UploadFailed("part upload worker has no storage: the pool initializer did not run")
    return send_part(_storage, job)


def send_part(storage: Storage, job: PartJob) -> PartResult:
    """Read the job's byte range and upload it through `storage` as one part."""
    try:
        with open(job.path, "rb") as file:
            file.seek(job.offset)
            body = file.read(job.length)
    except OSError as error:
        raise LayoutError(f"cannot read part {job.part_number} of {job.key} from {job.path}: {error.strerror}") from None
    if len(body) != job.length:
        raise LayoutError(
            f"{job.path} ended after {len(body)} of {job.length} bytes of part {job.part_number}: "
            "the layout changed during the push"
        )

    try:
        etag = storage.upload_part(job.key, job.upload_id, job.part_number, body)
    except NotFound:
        raise UploadVanished(f"multipart upload {job.upload_id} of {job.key} was aborted by someone else") from None
    except StorageError as error:
        # `from None`: the botocore exception behind a StorageError may not pickle.
        raise UploadFailed(f"upload of part {job.part_number} of {job.key} failed: {error}") from None
    return PartResult(job.part_number, job.length, etag, os.getpid())


def _initialize_worker(storage_factory: StorageFactory, bucket: str) -> None:
    global _storage
    # The pushing process decides when to stop on Ctrl-C; its workers finish or are cancelled.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    storage = storage_factory()
    storage_bucket = getattr(storage, "bucket", bucket)
    if storage_bucket != bucket:
        # The pool reports a failed initializer only as a broken pool, so log the reason here.
        logger.error("Part upload worker %d: the storage factory opened bucket %r, not %r.",
                     os.getpid(), storage_bucket, bucket)
        raise UploadFailed(f"the storage factory opened bucket {storage_bucket!r}, not {bucket!r}")
    _storage = storage


def _exit_with_parent() -> None:
    """Stop this worker as soon as the pushing process dies, even by SIGKILL.

    The pool's task queue stays open in every worker, so a worker whose parent was
    killed would otherwise wait for work forever. The parent's sentinel becomes ready
    when the parent exits.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
