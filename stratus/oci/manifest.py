"""Parsing manifests and image indexes into the descriptors they reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stratus.oci.descriptor import Descriptor, InvalidDescriptor, parse_descriptor
from stratus.oci.mediatypes import detect_manifest_type, is_index_type, is_valid_media_type

# The distribution spec requires registries to accept manifests of at least 4 MiB. Nothing
# larger is read as a manifest, which also keeps a layer from being read whole.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


class InvalidManifest(ValueError):
    """Bytes that are not an image manifest, image index or manifest list."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest or index: its media type and what it references.

    `media_type` is the document's own `mediaType` when `declares_type`, else the
    type of the descriptor it was parsed with, else what its fields show.
    """

    media_type: str
    declares_type: bool
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def is_index(self) -> bool:
        return is_index_type(self.media_type)

    @property
    def config_type(self) -> str | None:
        """Return the config descriptor's media type of an image manifest, else None."""
        if self.is_index or not self.children:
            return None
        return self.children[0].media_type


def parse_manifest(data: bytes, descriptor_type: str | None = None) -> Manifest:
    """Parse manifest bytes, raising InvalidManifest when they are not a schema 2 manifest.

    `descriptor_type` is the media type of the descriptor that pointed here, used when
    the document has no `mediaType` of its own (umoci 0.4 writes such manifests).
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise InvalidManifest(f"manifest is {len(data)} bytes, more than {MAX_MANIFEST_SIZE}")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidManifest(f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifest("not a JSON object")
    if document.get("schemaVersion") != 2:
        raise InvalidManifest("schemaVersion is not 2")

    media_type = detect_manifest_type(document, descriptor_type)
    if media_type is None:
        raise InvalidManifest("neither an image manifest nor an image index")

    try:
        children = _children(document, is_index_type(media_type))
        subject = _optional_descriptor(document.get("subject"))
    except InvalidDescriptor as error:
        raise InvalidManifest(str(error)) from None

    artifact_type = document.get("artifactType")
    if artifact_type is not None and not is_valid_media_type(artifact_type):
        raise InvalidManifest(f"invalid artifactType {artifact_type!r}")

    annotations = document.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in annotations.items()
    ):
        raise InvalidManifest("annotations must map strings to strings")

    return Manifest(
        media_type=media_type,
        declares_type="mediaType" in document,
        children=children,
        subject=subject,
        artifact_type=artifact_type,
        annotations=annotations,
    )


def _children(document: dict[str, Any], is_index: bool) -> tuple[Descriptor, ...]:
    if is_index:
        manifests = document.get("manifests")
        if manifests is None:
            return ()
        if not isinstance(manifests, list):
            raise InvalidDescriptor("manifests is not a list")
        return tuple(parse_descriptor(entry) for entry in manifests)

    layers = document.get("layers")
    if not isinstance(layers, list):
        raise InvalidDescriptor("layers is missing or not a list")
    config = parse_descriptor(document.get("config"))
    return (config, *(parse_descriptor(layer) for layer in layers))


def _optional_descriptor(value: object) -> Descriptor | None:
    if value is None:
        return None
    return parse_descriptor(value)
