"""Media types of the OCI image spec and Docker's schema 2, and how to tell them apart."""

from __future__ import annotations

import re
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OCTET_STREAM = "application/octet-stream"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES

# RFC 6838 section 4.2: type "/" subtype, each restricted-name characters, at most 127.
# Parameters are not allowed: a media type read from the bucket ends up in a response header.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


def is_valid_media_type(value: object) -> bool:
    """Return True when `value` is a string of the RFC 6838 `type/subtype` form."""
    return isinstance(value, str) and _MEDIA_TYPE.fullmatch(value) is not None


def is_manifest_type(media_type: str | None) -> bool:
    """Return True for the image index, manifest list and image manifest types."""
    return media_type in MANIFEST_TYPES


def is_index_type(media_type: str | None) -> bool:
    """Return True for the OCI image index and the Docker manifest list types."""
    return media_type in INDEX_TYPES


def detect_manifest_type(document: dict[str, Any], descriptor_type: str | None = None) -> str | None:
    """Return the media type a manifest document is served with, or None if it is not one.

    The document's own `mediaType` wins, then the descriptor's, then the shape of its
    fields: `manifests` makes an index, `config` with `layers` an image manifest.
    """
    own_type = document.get("mediaType")
    if isinstance(own_type, str) and is_manifest_type(own_type):
        return own_type
    if own_type is not None:
        return None

    if descriptor_type is not None and is_manifest_type(descriptor_type):
        return descriptor_type

    if isinstance(document.get("manifests"), list):
        return OCI_INDEX
    if isinstance(document.get("config"), dict) and isinstance(document.get("layers"), list):
        return OCI_MANIFEST
    return None
