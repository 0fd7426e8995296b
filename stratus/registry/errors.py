"""Registry errors: each carries its OCI error code, HTTP status and message.

Handlers raise them; the application renders them once, as the OCI error body
`{"errors":[{"code":..,"message":..,"detail":..}]}`.

    RegistryError
     +-- NameInvalid            400 NAME_INVALID
     +-- DigestInvalid          400 DIGEST_INVALID
     +-- PaginationInvalid      400 PAGINATION_NUMBER_INVALID
     +-- NameUnknown            404 NAME_UNKNOWN
     +-- ManifestUnknown        404 MANIFEST_UNKNOWN
     +-- BlobUnknown            404 BLOB_UNKNOWN
     +-- EndpointUnknown        404 UNSUPPORTED
     +-- MethodNotAllowed       405 UNSUPPORTED
     +-- RangeNotSatisfiable    416 RANGE_INVALID
     +-- TooManyRequests        429 TOOMANYREQUESTS
     +-- InternalError          500 UNKNOWN
     +-- StorageUnavailable     503 UNAVAILABLE
"""

from __future__ import annotations

from typing import Any

# Seconds a client is asked to wait after a 429 or 503.
RETRY_AFTER_SECONDS = 1


class RegistryError(Exception):
    """An error response: OCI code, HTTP status, message and optional detail."""

    code = "UNKNOWN"
    status = 500
    message = "unknown error"

    def __init__(self, detail: Any = None, *, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.detail = detail
        if message is not None:
            self.message = message

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return []


class NameInvalid(RegistryError):
    code, status, message = "NAME_INVALID", 400, "invalid repository name"


class DigestInvalid(RegistryError):
    code, status, message = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class PaginationInvalid(RegistryError):
    code, status, message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


class NameUnknown(RegistryError):
    code, status, message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class ManifestUnknown(RegistryError):
    code, status, message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class BlobUnknown(RegistryError):
    code, status, message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class EndpointUnknown(RegistryError):
    code, status, message = "UNSUPPORTED", 404, "unknown endpoint"


class MethodNotAllowed(RegistryError):
    code, status = "UNSUPPORTED", 405
    message = "this registry is read-only: push images with `stratus push`"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", b"GET, HEAD")]


class RangeNotSatisfiable(RegistryError):
    code, status, message = "RANGE_INVALID", 416, "requested range not satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(detail={"size": size})
        self.size = size

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-range", f"bytes */{self.size}".encode())]


class TooManyRequests(RegistryError):
    code, status, message = "TOOMANYREQUESTS", 429, "too many requests: the storage backend is throttling"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]


class InternalError(RegistryError):
    code, status, message = "UNKNOWN", 500, "internal error"


class StorageUnavailable(RegistryError):
    code, status, message = "UNAVAILABLE", 503, "the storage backend is unavailable"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
