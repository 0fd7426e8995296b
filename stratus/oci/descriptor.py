"""Descriptors: the typed pointers (media type, digest, size) that link OCI documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stratus.oci.mediatypes import is_valid_media_type
from stratus.oci.reference import Digest, InvalidDigest, parse_digest

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"


class InvalidDescriptor(ValueError):
    """A descriptor whose fields are missing or of the wrong form."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A validated descriptor, with the JSON object it came from kept in `raw`."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def platform(self) -> dict[str, Any] | None:
        platform = self.raw.get("platform")
        return platform if isinstance(platform, dict) else None

    @property
    def urls(self) -> list[str]:
        urls = self.raw.get("urls")
        return urls if isinstance(urls, list) else []


def parse_descriptor(value: object) -> Descriptor:
    """Validate a JSON descriptor object and return it as a Descriptor.

    Raises InvalidDescriptor naming the field at fault. Values that later reach a
    response header (media type, artifact type) must match the media-type grammar.
    """
    if not isinstance(value, dict):
        raise InvalidDescriptor("descriptor is not a JSON object")

    media_type = value.get("mediaType")
    if not is_valid_media_type(media_type):
        raise InvalidDescriptor(f"invalid mediaType {media_type!r}")

    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise InvalidDescriptor("digest missing or not a string")
    try:
        digest = parse_digest(raw_digest)
    except InvalidDigest as error:
        raise InvalidDescriptor(f"invalid digest {raw_digest!r}: {error}") from None

    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidDescriptor(f"invalid size {size!r} for {raw_digest}")

    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in annotations.items()
    ):
        raise InvalidDescriptor(f"annotations of {raw_digest} must map strings to strings")

    artifact_type = value.get("artifactType")
    if artifact_type is not None and not is_valid_media_type(artifact_type):
        raise InvalidDescriptor(f"invalid artifactType {artifact_type!r} for {raw_digest}")

    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations=annotations,
        artifact_type=artifact_type,
        raw=value,
    )
