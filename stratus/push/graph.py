"""Walking the descriptor graph of the chosen image and checking every blob is in the layout.

The walk goes from the index.json entry through image indexes to their manifests
(platform manifests and attestation manifests alike), and from each image manifest to
its config and layers. A manifest's `subject` is not followed: it points back at a
manifest of the same image, which the walk reaches from the index anyway. Blobs come
out children first, so that uploading in list order never leaves a manifest in the
bucket before what it references.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from stratus.oci.descriptor import Descriptor
from stratus.oci.manifest import MAX_MANIFEST_SIZE, InvalidManifest, parse_manifest
from stratus.oci.mediatypes import OCTET_STREAM, is_index_type, is_manifest_type
from stratus.oci.reference import Digest
from stratus.push.errors import BlobMissing, DigestMismatch, LayoutError
from stratus.push.layout import BlobSource, Layout

__all__ = ["PlannedBlob", "walk_image"]

logger = logging.getLogger(__name__)

# Non-distributable (OCI) and foreign (Docker) layers may be left out of registries and
# layouts, because clients fetch them from the descriptor's `urls`.
_NON_DISTRIBUTABLE_MARKERS = ("nondistributable", "foreign")

# Indexes may nest. BuildKit output has two levels (index.json, then one image index), so
# this limit only stops a crafted layout.
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class PlannedBlob:
    """A blob to upload: where it lies locally and how it is stored in the bucket.

    `content` contains the bytes of manifests and indexes, which the walk has already read
    and verified; it is None for configs and layers, which are read at upload time.
    """

    digest: Digest
    size: int
    source: BlobSource
    content_type: str
    referenced_by: str
    content: bytes | None = None

    @property
    def is_manifest(self) -> bool:
        return self.content is not None


def walk_image(layout: Layout, entry: Descriptor) -> list[PlannedBlob]:
    """Return every blob the entry reaches, children before parents, each digest once.

    Raises BlobMissing when a reachable blob is absent, DigestMismatch when a blob has
    the wrong size or a manifest the wrong bytes, and LayoutError for an unreadable manifest.
    """
    walker = _Walker(layout)
    walker.visit(entry, "index.json", depth=0)
    return walker.planned


class _Walker:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.planned: list[PlannedBlob] = []
        self.seen: set[Digest] = set()

    def visit(self, descriptor: Descriptor, referenced_by: str, depth: int) -> None:
        digest = descriptor.digest
        if digest in self.seen:
            return
        if depth > _MAX_DEPTH:
            raise LayoutError(f"manifest {digest} is nested more than {_MAX_DEPTH} levels deep")

        source = self.layout.find_blob(digest)
        if source is None:
            if descriptor.urls and _is_non_distributable(descriptor.media_type):
                logger.info("Non-distributable layer %s is not in the layout and is not uploaded.", digest)
                self.seen.add(digest)
                return
            raise BlobMissing(str(digest), referenced_by)
        if source.size != descriptor.size:
            raise DigestMismatch(
                str(digest), referenced_by, f"the layout has {source.size} bytes, the descriptor says {descriptor.size}"
            )
        self.seen.add(digest)

        if not is_manifest_type(descriptor.media_type):
            self.planned.append(PlannedBlob(digest, source.size, source, OCTET_STREAM, referenced_by))
            return

        content, media_type, children = self._read_manifest(descriptor, source, referenced_by)
        for child in children:
            self.visit(child, f"manifest {digest}", depth + 1)
        self.planned.append(PlannedBlob(digest, source.size, source, media_type, referenced_by, content))

    def _read_manifest(
        self, descriptor: Descriptor, source: BlobSource, referenced_by: str
    ) -> tuple[bytes, str, tuple[Descriptor, ...]]:
        digest = descriptor.digest
        if source.size > MAX_MANIFEST_SIZE:
            raise LayoutError(f"manifest {digest} is {source.size} bytes, more than the limit of {MAX_MANIFEST_SIZE}")
        content = self.layout.read_blob(digest, source)
        if not digest.matches(content):
            actual = Digest.of(content, digest.algorithm)
            raise DigestMismatch(str(digest), referenced_by, f"its bytes hash to {actual}")
        try:
            manifest = parse_manifest(content, descriptor.media_type)
        except InvalidManifest as error:
            raise LayoutError(f"manifest {digest} (referenced by {referenced_by}) is invalid: {error}") from None
        if is_index_type(manifest.media_type) != is_index_type(descriptor.media_type):
            raise LayoutError(
                f"manifest {digest} is a {manifest.media_type} but {referenced_by} describes it as {descriptor.media_type}"
            )
        return content, manifest.media_type, manifest.children


def _is_non_distributable(media_type: str) -> bool:
    return any(marker in media_type for marker in _NON_DISTRIBUTABLE_MARKERS)
