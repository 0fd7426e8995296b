"""The Storage interface, its value types and its errors.

    StorageError
     +-- NotFound             the key does not exist
     +-- NotModified          a conditional GET matched the ETag it was given
     +-- PreconditionFailed   a conditional PUT lost (If-Match / If-None-Match)
     +-- ObjectTooLarge       the object is larger than the caller accepts
     +-- StorageThrottled     the backend asked the caller to slow down
     +-- StorageUnavailable   unreachable, timed out, 5xx, or refused access

All methods are synchronous and thread-safe; the registry calls them from a thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol


class StorageError(Exception):
    """Base of every error a Storage raises."""


class NotFound(StorageError):
    pass


class NotModified(StorageError):
    pass


class PreconditionFailed(StorageError):
    pass


class ObjectTooLarge(StorageError):
    def __init__(self, key: str, size: int, limit: int, etag: str | None = None) -> None:
        super().__init__(f"{key} is {size} bytes, more than the limit of {limit}")
        self.size = size
        self.limit = limit
        self.etag = etag


class StorageThrottled(StorageError):
    pass


class StorageUnavailable(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """Metadata of a stored object."""

    size: int
    etag: str
    content_type: str | None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes with its ETag."""

    body: bytes
    etag: str
    content_type: str | None


@dataclass(slots=True)
class ObjectStream:
    """An open read of bytes `start` to `end` (inclusive) of an object of `size` bytes.

    Iterate `chunks` to read, and call `close` when done, read to the end or not.
    """

    size: int
    start: int
    end: int
    chunks: Iterator[bytes]
    close: Callable[[], None]

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: float


class Storage(Protocol):
    """Keys and bytes in one bucket."""

    #: Whether presign_get works; a storage without it has its blobs sent by the registry.
    can_presign: bool

    @property
    def requests_sent(self) -> int:
        """Return how many requests this storage has sent to its backend, retries included."""
        ...

    def get(self, key: str, *, max_bytes: int, if_none_match: str | None = None) -> StoredObject:
        """Read a whole object of at most `max_bytes` bytes.

        Raises NotModified when `if_none_match` equals the current ETag, and
        ObjectTooLarge, without reading the body, when the object is larger than `max_bytes`.
        """
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Return size, ETag and content type of an object."""
        ...

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        """Open bytes `start` to `end` (inclusive; None means the last byte) for streaming.

        The caller checks the range against the object's size first (see stat).
        """
        ...

    def presign_get(self, key: str, expires_in: int) -> str:
        """Return a URL that lets anyone GET the object for `expires_in` seconds."""
        ...

    def ping(self) -> None:
        """Check that the bucket is reachable, raising a StorageError when it is not."""
        ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> str:
        """Write an object in one request and return its ETag.

        With `if_match` (an ETag) or `if_none_match` (`*`), the write happens only if the
        condition holds; otherwise PreconditionFailed is raised and nothing changes.
        """
        ...

    def put_stream(self, key: str, stream: BinaryIO, length: int, *, content_type: str) -> str:
        """Write an object of `length` bytes read from `stream` and return its ETag."""
        ...

    def create_multipart_upload(self, key: str, *, content_type: str) -> str:
        """Start a multipart upload and return its upload id."""
        ...

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        """Upload one part (numbered from 1) and return its ETag."""
        ...

    def complete_multipart_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        """Join the parts, whose ETags are given in part order, into the object."""
        ...

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Discard a multipart upload and its parts; an unknown upload is not an error."""
        ...

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        """List the unfinished multipart uploads whose keys start with `prefix`."""
        ...
