"""Object keys of the bucket layout shared with the Go release of Stratus.

    <namespace>/<repository>/index.json
    <namespace>/<repository>/oci-layout
    <namespace>/<repository>/blobs/<algorithm>/<hex>

A repository name of one component (`alpine`) lives under `library/alpine`; longer names
are used as they are. Callers pass names already checked against the OCI grammar, which
admits no `..`, `%`, `\\` or empty component, so a key never leaves its repository.
"""

from __future__ import annotations

from stratus.oci.reference import Digest, is_valid_repository


def repository_prefix(repository: str) -> str:
    """Return the key prefix of a repository, adding the `library/` namespace to bare names."""
    if not is_valid_repository(repository):
        raise ValueError(f"invalid repository name {repository!r}")
    if "/" not in repository:
        return f"library/{repository}"
    return repository


def index_key(repository: str) -> str:
    return f"{repository_prefix(repository)}/index.json"


def layout_key(repository: str) -> str:
    return f"{repository_prefix(repository)}/oci-layout"


def blob_key(repository: str, digest: Digest) -> str:
    return f"{repository_prefix(repository)}/blobs/{digest.algorithm}/{digest.encoded}"
