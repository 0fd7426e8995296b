"""Errors a push can fail with.

    PushError
     +-- UsageError             a request that cannot be carried out as given (exit status 2)
     |    +-- InvalidImageReference   repository name or tag breaks the OCI grammar
     +-- LayoutError            the layout is unreadable or not an OCI image layout
     |    +-- ImageNotChosen         several images (or none that match) and no usable choice
     |    +-- BlobMissing            a referenced blob is absent from the layout
     |    +-- DigestMismatch         a blob's bytes or size do not match its descriptor
     +-- UploadFailed           S3 rejected or failed a blob upload
     +-- IndexUpdateFailed      index.json in the bucket could not be read, merged or written

Part uploads run in worker processes, and their exceptions travel back to the parent by
pickle. Pickle rebuilds an exception by calling its class with `self.args`, so a class
whose constructor takes several fields passes all of them to Exception.__init__ and
builds its message in __str__.
"""

from __future__ import annotations

__all__ = [
    "BlobMissing",
    "DigestMismatch",
    "ImageNotChosen",
    "IndexUpdateFailed",
    "InvalidImageReference",
    "LayoutError",
    "PushError",
    "UploadFailed",
    "UsageError",
]


class PushError(Exception):
    """Base of every error `push_oci_layout` raises on purpose; str() is one line for the user."""


class UsageError(PushError):
    """A request that cannot be carried out as given, whatever the layout holds."""


class InvalidImageReference(UsageError):
    """A repository name or tag that breaks the OCI distribution grammar."""


class LayoutError(PushError):
    """A layout that is missing, unreadable, truncated or not an OCI image layout."""


class ImageNotChosen(LayoutError):
    """The layout contains no image, or several and no choice, or none that matches the choice."""


class BlobMissing(LayoutError):
    """A blob the chosen image references is not in the layout."""

    def __init__(self, digest: str, referenced_by: str) -> None:
        super().__init__(digest, referenced_by)
        self.digest = digest
        self.referenced_by = referenced_by

    def __str__(self) -> str:
        return f"blob {self.digest} is missing from the layout (referenced by {self.referenced_by})"


class DigestMismatch(LayoutError):
    """A blob whose bytes or size differ from what its descriptor states."""

    def __init__(self, digest: str, referenced_by: str, detail: str) -> None:
        super().__init__(digest, referenced_by, detail)
        self.digest = digest
        self.referenced_by = referenced_by
        self.detail = detail

    def __str__(self) -> str:
        return f"blob {self.digest} does not match its digest: {self.detail} (referenced by {self.referenced_by})"


class UploadFailed(PushError):
    """A failed upload to the bucket. The bucket's index.json is left as it was."""


class IndexUpdateFailed(PushError):
    """index.json in the bucket could not be read, merged or written."""
