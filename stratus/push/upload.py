"""Uploading the planned blobs: existence checks, single PUTs, multipart uploads, stale upload cleanup.

Configs and layers go up first, several at a time from a thread pool, and the parts of a
large one are spread over the part workers. Manifests and indexes follow one by one in
plan order, which puts children before parents. A blob is verified against its digest
before it becomes visible under its key. A small blob is hashed in memory before its PUT.
A large one is hashed by the uploading thread while the workers send its parts, and
CompleteMultipartUpload is sent only when the hash matched.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from stratus.oci.reference import Digest
from stratus.push.errors import DigestMismatch, LayoutError, UploadFailed
from stratus.push.graph import PlannedBlob
from stratus.push.layout import BlobSource
from stratus.push.parts import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MIN_PART_SIZE, plan_parts
from stratus.push.progress import Progress, format_bytes
from stratus.push.workers import (
    PartJob,
    PartResult,
    StorageFactory,
    UploadVanished,
    send_part,
    start_part_workers,
    upload_part,
)
from stratus.storage import NotFound, Storage, StorageError, blob_key, repository_prefix

__all__ = ["BlobUploader", "TransferSettings", "UploadStats", "abort_stale_uploads"]

logger = logging.getLogger(__name__)

# Blobs are read for hashing in chunks of this many bytes.
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TransferSettings:
    """Transfer settings: concurrency, and the sizes that decide between one PUT and parts."""

    concurrency: int = 4
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = DEFAULT_PART_SIZE
    min_part_size: int = MIN_PART_SIZE


@dataclass(slots=True)
class UploadStats:
    """Counters of an upload run, updated from several threads under `lock`."""

    uploaded: list[Digest] = field(default_factory=list)
    skipped: list[Digest] = field(default_factory=list)
    bytes_sent: int = 0
    part_worker_pids: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BlobUploader:
    """Sends planned blobs to one repository. Use as a context manager so the part workers stop."""

    def __init__(
        self,
        storage: Storage,
        bucket: str,
        repository: str,
        settings: TransferSettings,
        storage_factory: StorageFactory | None,
        progress: Progress,
    ) -> None:
        self._storage = storage
        self._bucket = bucket
        self._repository = repository
        self._settings = settings
        self._storage_factory = storage_factory
        self._progress = progress
        self._part_executor: Executor | None = None
        self._executor_lock = threading.Lock()
        self._failed = threading.Event()
        self._first_error: BaseException | None = None
        self.stats = UploadStats()

    def __enter__(self) -> BlobUploader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._part_executor is not None:
            self._part_executor.shutdown(wait=True, cancel_futures=True)
            self._part_executor = None

    def start_part_workers(self) -> None:
        """Start the part upload workers ahead of the first multipart upload."""
        self._executor()

    def find_missing(self, blobs: list[PlannedBlob]) -> list[PlannedBlob]:
        """Return the blobs the bucket lacks or stores with another size; count the others as skipped."""
        with ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="stratus-stat") as threads:
            present = list(threads.map(self._is_present, blobs))

        missing: list[PlannedBlob] = []
        for blob, is_present in zip(blobs, present):
            if is_present:
                self.stats.skipped.append(blob.digest)
                self._progress.message(f"{blob.digest}: already in the bucket, skipped")
            else:
                missing.append(blob)
        return missing

    def upload(self, blobs: list[PlannedBlob]) -> None:
        """Upload `blobs`: configs and layers concurrently, then manifests in list order.

        Raises the first failure after the other uploads in flight have ended. A failed
        multipart upload is aborted, so no partial or wrong object is ever completed.
        """
        self._progress.start(sum(blob.size for blob in blobs))
        plain = [blob for blob in blobs if not blob.is_manifest]
        manifests = [blob for blob in blobs if blob.is_manifest]

        with ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="stratus-upload") as threads:
            futures = [threads.submit(self._upload_blob, blob) for blob in plain]
            try:
                wait(futures)
            except BaseException:
                # Ctrl-C: let the upload threads stop at their next check instead of finishing.
                self._failed.set()
                raise
        if self._first_error is not None:
            raise self._first_error

        for blob in manifests:
            self._upload_blob(blob)

    def _is_present(self, blob: PlannedBlob) -> bool:
        key = blob_key(self._repository, blob.digest)
        try:
            info = self._storage.stat(key)
        except NotFound:
            return False
        except StorageError as error:
            raise UploadFailed(f"checking {key} in the bucket failed: {error}") from error
        if info.size != blob.size:
            logger.warning("%s is %d bytes in the bucket, not %d; uploading it again.", key, info.size, blob.size)
            return False
        return True

    def _upload_blob(self, blob: PlannedBlob) -> None:
        if self._failed.is_set():
            return
        try:
            if blob.size > self._settings.multipart_threshold and not blob.is_manifest:
                self._upload_multipart_with_retry(blob)
            else:
                self._upload_single(blob)
        except BaseException as error:
            with self.stats.lock:
                if self._first_error is None:
                    self._first_error = error
            self._failed.set()
            raise

        with self.stats.lock:
            self.stats.uploaded.append(blob.digest)
        self._progress.message(f"{blob.digest}: uploaded {format_bytes(blob.size)}")

    def _upload_single(self, blob: PlannedBlob) -> None:
        key = blob_key(self._repository, blob.digest)
        content = blob.content if blob.content is not None else _read_whole(blob)
        if not blob.digest.matches(content):
            actual = Digest.of(content, blob.digest.algorithm)
            raise DigestMismatch(str(blob.digest), blob.referenced_by, f"its bytes hash to {actual}")
        try:
            self._storage.put(key, content, content_type=blob.content_type)
        except StorageError as error:
            raise UploadFailed(f"upload of blob {blob.digest} to {key} failed: {error}") from error
        logger.debug("Uploaded %s (%d bytes) in one PUT.", key, blob.size)
        self._count_sent(blob.size)

    def _upload_multipart_with_retry(self, blob: PlannedBlob) -> None:
        try:
            self._upload_multipart(blob)
        except UploadFailed as error:
            # Parts were already retried by botocore. The usual remaining cause is another
            # push aborting this upload as stale (some S3 servers then return 500, not 404).
            # The blob is content-addressed, so if another push completed it, it is right.
            if self._failed.is_set() and not isinstance(error, UploadVanished):
                raise
            key = blob_key(self._repository, blob.digest)
            if self._is_present(blob):
                logger.warning("%s; %s is in the bucket now, uploaded by another push.", error, key)
                return
            logger.warning("%s; uploading %s once more.", error, key)
            self._upload_multipart(blob)

    def _upload_multipart(self, blob: PlannedBlob) -> None:
        key = blob_key(self._repository, blob.digest)
        parts = plan_parts(blob.size, self._settings.part_size, min_part_size=self._settings.min_part_size)
        try:
            upload_id = self._storage.create_multipart_upload(key, content_type=blob.content_type)
        except StorageError as error:
            raise UploadFailed(f"starting the multipart upload of {key} failed: {error}") from error
        logger.debug("Started multipart upload %s of %s: %d parts.", upload_id, key, len(parts))

        futures: list[Future[PartResult]] = []
        completed = False
        try:
            for part in parts:
                job = PartJob(
                    blob.source.path, blob.source.offset + part.offset, part.length, key, upload_id, part.number
                )
                future = self._submit_part(job)
                future.add_done_callback(functools.partial(self._count_part, key))
                futures.append(future)

            actual = _hash_source(blob.digest, blob.source)
            if actual != blob.digest:
                raise DigestMismatch(str(blob.digest), blob.referenced_by, f"its bytes hash to {actual}")
            if self._failed.is_set():
                raise UploadFailed(f"upload of {key} stopped because another upload failed")

            etags = [self._part_result(future).etag for future in futures]
            try:
                self._storage.complete_multipart_upload(key, upload_id, etags)
            except NotFound as error:
                raise UploadVanished(f"multipart upload {upload_id} of {key} was aborted by someone else") from error
            except StorageError as error:
                raise UploadFailed(f"completing the multipart upload of {key} failed: {error}") from error
            completed = True
            logger.debug("Completed multipart upload %s of %s.", upload_id, key)
        finally:
            if not completed:
                self._abort(key, upload_id, futures)

    def _submit_part(self, job: PartJob) -> Future[PartResult]:
        try:
            if self._storage_factory is None:
                return self._executor().submit(send_part, self._storage, job)
            return self._executor().submit(upload_part, job)
        except BrokenProcessPool as error:
            raise UploadFailed(f"the part upload processes stopped unexpectedly: {error}") from error

    def _executor(self) -> Executor:
        with self._executor_lock:
            if self._part_executor is None:
                if self._storage_factory is None:
                    logger.debug("No storage factory given: parts are sent by threads of this process.")
                    self._part_executor = ThreadPoolExecutor(self._settings.concurrency, "stratus-part")
                else:
                    logger.debug("Starting %d part upload processes.", self._settings.concurrency)
                    self._part_executor = start_part_workers(
                        self._storage_factory, self._bucket, self._settings.concurrency
                    )
            return self._part_executor

    def _part_result(self, future: Future[PartResult]) -> PartResult:
        try:
            return future.result()
        except BrokenProcessPool as error:
            raise UploadFailed(f"the part upload processes stopped unexpectedly: {error}") from error

    def _count_part(self, key: str, future: Future[PartResult]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        # Logged here, in the pushing process, because spawned workers have no log handlers.
        logger.debug(
            "Part %d of %s (%d bytes) uploaded by process %d.", result.part_number, key, result.length, result.pid
        )
        with self.stats.lock:
            self.stats.part_worker_pids.add(result.pid)
        self._count_sent(result.length)

    def _count_sent(self, size: int) -> None:
        with self.stats.lock:
            self.stats.bytes_sent += size
        self._progress.advance(size)

    def _abort(self, key: str, upload_id: str, futures: list[Future[PartResult]]) -> None:
        # Parts still in flight could land after the abort and be kept, so wait for them.
        for future in futures:
            future.cancel()
        wait(futures)
        try:
            self._storage.abort_multipart_upload(key, upload_id)
        except StorageError as error:
            logger.warning(
                "Aborting multipart upload %s of %s failed (%s); the next push to this repository aborts it.",
                upload_id, key, error,
            )
            return
        logger.info("Aborted multipart upload %s of %s.", upload_id, key)


def abort_stale_uploads(
    storage: Storage,
    repository: str,
    max_age: float,
    progress: Progress,
    *,
    now: Callable[[], float] = time.time,
) -> int:
    """Abort unfinished multipart uploads left in the repository by pushes that died.

    An upload is stale when it started more than `max_age` seconds ago. A younger one may
    belong to a push still running (of another tag sharing the blob), so it is left alone.
    Returns how many were aborted. Failures are logged and do not stop the push, since
    leftover parts only cost storage.
    """
    prefix = repository_prefix(repository) + "/"
    try:
        uploads = storage.list_multipart_uploads(prefix)
    except StorageError as error:
        logger.warning("Listing unfinished multipart uploads under %s failed: %s", prefix, error)
        return 0

    aborted = 0
    current_time = now()
    for upload in uploads:
        age = current_time - upload.initiated
        if age <= max_age:
            continue
        try:
            storage.abort_multipart_upload(upload.key, upload.upload_id)
        except StorageError as error:
            logger.warning("Aborting stale multipart upload %s of %s failed: %s", upload.upload_id, upload.key, error)
            continue
        aborted += 1
        logger.info("Aborted stale multipart upload %s of %s, started %.0f s ago.", upload.upload_id, upload.key, age)
        progress.message(f"{upload.key}: aborted an unfinished multipart upload started {age:.0f} s ago")
    return aborted


def _read_whole(blob: PlannedBlob) -> bytes:
    try:
        with open(blob.source.path, "rb") as file:
            file.seek(blob.source.offset)
            content = file.read(blob.size)
    except OSError as error:
        raise LayoutError(f"cannot read blob {blob.digest}: {error.strerror}") from error
    if len(content) != blob.size:
        raise LayoutError(f"blob {blob.digest} ends after {len(content)} of {blob.size} bytes")
    return content


def _hash_source(digest: Digest, source: BlobSource) -> Digest:
    hasher = digest.hasher()
    remaining = source.size
    try:
        with open(source.path, "rb") as file:
            file.seek(source.offset)
            while remaining > 0:
                chunk = file.read(min(_HASH_CHUNK, remaining))
                if not chunk:
                    raise LayoutError(f"blob {digest} ends after {source.size - remaining} of {source.size} bytes")
                hasher.update(chunk)
                remaining -= len(chunk)
    except OSError as error:
        raise LayoutError(f"cannot read blob {digest}: {error.strerror}") from error
    return Digest(digest.algorithm, hasher.hexdigest())
