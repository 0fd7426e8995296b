"""Object storage for the bucket layout: one interface, and an S3 implementation through botocore.

Storage deals in keys and bytes only: it has no notion of HTTP requests or of pushing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratus.storage.base import (
    MultipartUpload,
    NotFound,
    NotModified,
    ObjectInfo,
    ObjectStream,
    ObjectTooLarge,
    PreconditionFailed,
    Storage,
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    StoredObject,
)
from stratus.storage.keys import blob_key, index_key, layout_key, repository_prefix

if TYPE_CHECKING:
    from stratus.config import Config

__all__ = [
    "MultipartUpload",
    "NotFound",
    "NotModified",
    "ObjectInfo",
    "ObjectStream",
    "ObjectTooLarge",
    "PreconditionFailed",
    "Storage",
    "StorageError",
    "StorageThrottled",
    "StorageUnavailable",
    "StoredObject",
    "blob_key",
    "index_key",
    "layout_key",
    "open_storage",
    "repository_prefix",
]


def open_storage(config: Config) -> Storage:
    """Build the storage the configuration names: S3 when S3_ENDPOINT is set, else the data directory."""
    if not config.uses_s3:
        from stratus.storage.local import LocalStorage

        return LocalStorage(config.data_dir)

    from stratus.storage.s3 import S3Storage

    return S3Storage(config)
