"""A repository's `index.json` parsed into lookup tables: tag to descriptor, digest to descriptor."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from stratus.oci.descriptor import (
    REF_NAME_ANNOTATION,
    Descriptor,
    InvalidDescriptor,
    parse_descriptor,
)
from stratus.oci.reference import is_valid_tag


class InvalidIndex(ValueError):
    """An `index.json` that is not valid JSON or not an image index of schemaVersion 2."""


@dataclass(frozen=True, slots=True)
class IndexTable:
    """The tagged and untagged entries of one `index.json`.

    Entries keep their order. When two entries carry the same tag the first one wins,
    because the pusher puts the newest entry first.
    """

    descriptors: tuple[Descriptor, ...]
    tags: dict[str, Descriptor] = field(default_factory=dict)
    digests: dict[str, Descriptor] = field(default_factory=dict)
    invalid_entries: tuple[str, ...] = ()
    sorted_tags: tuple[str, ...] = ()


def parse_index(data: bytes) -> IndexTable:
    """Parse `index.json` bytes. Entries that are not valid descriptors are set aside
    in `invalid_entries` (with the reason) instead of failing the whole index."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidIndex(f"index.json is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise InvalidIndex("index.json is not an image index with schemaVersion 2")

    entries = document.get("manifests")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise InvalidIndex("index.json field manifests is not a list")

    descriptors: list[Descriptor] = []
    tags: dict[str, Descriptor] = {}
    digests: dict[str, Descriptor] = {}
    invalid: list[str] = []
    for position, entry in enumerate(entries):
        try:
            descriptor = parse_descriptor(entry)
        except InvalidDescriptor as error:
            invalid.append(f"entry {position}: {error}")
            continue

        descriptors.append(descriptor)
        digests.setdefault(str(descriptor.digest), descriptor)
        tag = descriptor.annotations.get(REF_NAME_ANNOTATION)
        if tag is not None and is_valid_tag(tag):
            tags.setdefault(tag, descriptor)

    return IndexTable(tuple(descriptors), tags, digests, tuple(invalid), tuple(sorted(tags)))
