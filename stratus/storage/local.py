"""Storage in a local directory, laid out exactly like the bucket: `<dir>/<key>`.

Writes go to a temporary file that is renamed over the key, so a reader sees the old
object or the new one, never part of one. Conditional writes hold an exclusive lock
(flock) on a lock file per key, which makes them atomic across processes of one
machine. Bookkeeping lives under `<dir>/.stratus/`, away from the repositories.

An object's ETag is made of its inode, modification time and size, which change with
every write because each write renames a new file into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from stratus.storage.base import (
    MultipartUpload,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStream,
    ObjectTooLarge,
    PreconditionFailed,
    StorageUnavailable,
    StoredObject,
)

STREAM_CHUNK_SIZE = 256 * 1024
# Temporary files older than this belong to no running write and are removed at start-up.
_TEMPORARY_FILE_AGE = 3600.0
_COPY_CHUNK_SIZE = 1024 * 1024
_STATE_DIRECTORY = ".stratus"


class LocalStorage:
    """A directory that contains repositories in the bucket layout."""

    can_presign = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.bucket = str(self.root)
        self._root_prefix = str(self.root) + os.sep
        self._state = self.root / _STATE_DIRECTORY
        self._requests_sent = 0
        for directory in (self._state / "tmp", self._state / "locks", self._state / "uploads"):
            directory.mkdir(parents=True, exist_ok=True)
        self._remove_old_temporary_files()

    @property
    def requests_sent(self) -> int:
        """Return how many objects were read or written; the local counterpart of S3 requests."""
        return self._requests_sent

    def get(self, key: str, *, max_bytes: int, if_none_match: str | None = None) -> StoredObject:
        path = self._path(key)
        self._requests_sent += 1
        try:
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                etag = _etag(status)
                if if_none_match is not None and if_none_match == etag:
                    raise NotModified(key)
                if status.st_size > max_bytes:
                    raise ObjectTooLarge(key, status.st_size, max_bytes, etag)
                data = file.read(max_bytes + 1)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        except OSError as error:
            raise StorageUnavailable(f"reading {key} failed: {error}") from error
        if len(data) > max_bytes:
            raise ObjectTooLarge(key, len(data), max_bytes)
        return StoredObject(data, etag, None)

    def stat(self, key: str) -> ObjectInfo:
        self._requests_sent += 1
        status = self._stat(key)
        return ObjectInfo(status.st_size, _etag(status), None)

    def open_read(self, key: str, start: int = 0, end: int | None = None) -> ObjectStream:
        self._requests_sent += 1
        try:
            file = open(self._path(key), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None
        except OSError as error:
            raise StorageUnavailable(f"opening {key} failed: {error}") from error

        size = os.fstat(file.fileno()).st_size
        last = size - 1 if end is None else min(end, size - 1)
        file.seek(start)
        return ObjectStream(size, start, last, _read_chunks(file, last - start + 1), file.close)

    def presign_get(self, key: str, expires_in: int) -> str:
        raise NotImplementedError("a local directory cannot presign URLs; blobs are sent by the registry")

    def ping(self) -> None:
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageUnavailable(f"data directory {self.root} is not readable")

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> str:
        self._requests_sent += 1
        path = self._path(key)
        with self._key_lock(key):
            if if_match is not None or if_none_match is not None:
                _check_precondition(key, path, if_match, if_none_match)
            temporary = self._write_temporary(body)
            return self._publish(temporary, path)

    def put_stream(self, key: str, stream: BinaryIO, length: int, *, content_type: str) -> str:
        self._requests_sent += 1
        temporary = self._temporary_path()
        with open(temporary, "wb") as file:
            copied = _copy(stream, file, length)
        if copied != length:
            temporary.unlink(missing_ok=True)
            raise StorageUnavailable(f"writing {key} failed: stream ended after {copied} of {length} bytes")
        with self._key_lock(key):
            return self._publish(temporary, self._path(key))

    def create_multipart_upload(self, key: str, *, content_type: str) -> str:
        self._requests_sent += 1
        self._path(key)
        upload_id = uuid.uuid4().hex
        directory = self._state / "uploads" / upload_id
        directory.mkdir()
        (directory / "key").write_text(key)
        return upload_id

    def upload_part(self, key: str, upload_id: str, part_number: int, body: bytes) -> str:
        self._requests_sent += 1
        directory = self._upload_directory(key, upload_id)
        temporary = self._write_temporary(body)
        os.replace(temporary, directory / f"part-{part_number:05d}")
        return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'

    def complete_multipart_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        self._requests_sent += 1
        directory = self._upload_directory(key, upload_id)
        temporary = self._temporary_path()
        with open(temporary, "wb") as output:
            for number in range(1, len(etags) + 1):
                part = directory / f"part-{number:05d}"
                try:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, output, _COPY_CHUNK_SIZE)
                except FileNotFoundError:
                    temporary.unlink(missing_ok=True)
                    raise StorageUnavailable(f"part {number} of upload {upload_id} is missing") from None
        with self._key_lock(key):
            self._publish(temporary, self._path(key))
        shutil.rmtree(directory, ignore_errors=True)

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        self._requests_sent += 1
        shutil.rmtree(self._state / "uploads" / _safe_upload_id(upload_id), ignore_errors=True)

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        self._requests_sent += 1
        uploads: list[MultipartUpload] = []
        for directory in sorted((self._state / "uploads").iterdir()):
            try:
                key = (directory / "key").read_text()
                initiated = directory.stat().st_mtime
            except OSError:
                continue
            if key.startswith(prefix):
                uploads.append(MultipartUpload(key, directory.name, initiated))
        return uploads

    def _path(self, key: str) -> Path:
        """Map a key to its file, rejecting keys that could leave the directory."""
        parts = key.split("/")
        if not key or key.startswith("/") or "\\" in key or "\x00" in key or any(
            part in ("", ".", "..") for part in parts
        ) or parts[0] == _STATE_DIRECTORY:
            raise ValueError(f"invalid storage key {key!r}")
        path = self.root.joinpath(*parts)
        # A symbolic link inside the directory must not lead a read or write outside it.
        if not os.path.realpath(path).startswith(self._root_prefix):
            raise NotFound(f"{key} leads outside {self.root}")
        return path

    def _remove_old_temporary_files(self) -> None:
        """Delete temporary files that a process killed part way through a write left behind."""
        cutoff = time.time() - _TEMPORARY_FILE_AGE
        for leftover in (self._state / "tmp").iterdir():
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                continue

    def _stat(self, key: str) -> os.stat_result:
        try:
            status = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        except OSError as error:
            raise StorageUnavailable(f"stat {key} failed: {error}") from error
        if not stat.S_ISREG(status.st_mode):
            raise NotFound(key)
        return status

    def _upload_directory(self, key: str, upload_id: str) -> Path:
        directory = self._state / "uploads" / _safe_upload_id(upload_id)
        try:
            recorded = (directory / "key").read_text()
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id} of {key}") from None
        if recorded != key:
            raise NotFound(f"upload {upload_id} is for {recorded}, not {key}")
        return directory

    def _temporary_path(self) -> Path:
        return self._state / "tmp" / uuid.uuid4().hex

    def _write_temporary(self, body: bytes) -> Path:
        temporary = self._temporary_path()
        with open(temporary, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        return temporary

    def _publish(self, temporary: Path, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, path)
        return _etag(os.stat(path))

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        name = hashlib.sha256(key.encode()).hexdigest()
        with open(self._state / "locks" / name, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _etag(status: os.stat_result) -> str:
    return f'"{status.st_ino:x}-{status.st_mtime_ns:x}-{status.st_size:x}"'


def _check_precondition(key: str, path: Path, if_match: str | None, if_none_match: str | None) -> None:
    try:
        current: str | None = _etag(os.stat(path))
    except FileNotFoundError:
        current = None
    if if_none_match == "*" and current is not None:
        raise PreconditionFailed(f"{key} exists")
    if if_match is not None and if_match != current:
        raise PreconditionFailed(f"{key} changed")


def _read_chunks(file: BinaryIO, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        chunk = file.read(min(STREAM_CHUNK_SIZE, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def _copy(source: BinaryIO, target: BinaryIO, length: int) -> int:
    copied = 0
    while copied < length:
        chunk = source.read(min(_COPY_CHUNK_SIZE, length - copied))
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    return copied


def _safe_upload_id(upload_id: str) -> str:
    if not upload_id.isalnum():
        raise NotFound(f"upload {upload_id!r}")
    return upload_id

