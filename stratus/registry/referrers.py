"""The referrers API: which manifests of a repository name a given digest as `subject`.

BuildKit 0.32 and later write attestation manifests as OCI artifacts whose `subject`
is the platform manifest they describe. They sit inside the image index a tag points
at, never at the top of index.json, so the table is built by walking every manifest
reachable from index.json, once per index.json version, and kept with that version.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from stratus.oci.descriptor import Descriptor
from stratus.oci.mediatypes import OCI_INDEX, is_manifest_type
from stratus.registry.cache import SingleFlight
from stratus.registry.content import ContentReader, ManifestContent
from stratus.registry.errors import InternalError, ManifestUnknown
from stratus.registry.index_cache import IndexCache

logger = logging.getLogger(__name__)

# The walk reads at most this many manifests of one repository.
MAX_WALKED_MANIFESTS = 10_000

_DERIVED_KEY = "referrers"

ReferrersTable = dict[str, list[dict[str, Any]]]


class ReferrersFinder:
    """Builds and caches the subject-digest to referrer-descriptors table of each repository."""

    def __init__(self, indexes: IndexCache, content: ContentReader) -> None:
        self._indexes = indexes
        self._content = content
        self._builds: SingleFlight[tuple[str, int], ReferrersTable] = SingleFlight()

    async def referrers(self, repository: str, subject: str, artifact_type: str | None) -> list[dict[str, Any]]:
        """Return the descriptors of the manifests whose subject is `subject`."""
        entry = await self._indexes.entry(repository)
        table = entry.derived.get(_DERIVED_KEY)
        if table is None:
            assert entry.table is not None
            top_level = entry.table.descriptors
            table = await self._builds.run((repository, id(entry.table)), lambda: self._build(repository, top_level))
            entry.derived[_DERIVED_KEY] = table

        found = table.get(subject, [])
        if artifact_type is not None:
            found = [descriptor for descriptor in found if descriptor.get("artifactType") == artifact_type]
        return found

    async def _build(self, repository: str, top_level: tuple[Descriptor, ...]) -> ReferrersTable:
        table: ReferrersTable = {}
        pending = deque(descriptor for descriptor in top_level if is_manifest_type(descriptor.media_type))
        seen: set[str] = set()
        while pending and len(seen) < MAX_WALKED_MANIFESTS:
            descriptor = pending.popleft()
            digest_text = str(descriptor.digest)
            if digest_text in seen:
                continue
            seen.add(digest_text)

            try:
                content = await self._content.manifest(repository, descriptor.digest, descriptor)
            except (ManifestUnknown, InternalError):
                # One broken manifest must not hide the referrers of every other one.
                logger.warning("Repository %s: manifest %s is unreadable; left out of referrers.", repository, digest_text)
                continue

            manifest = content.manifest
            if manifest.is_index:
                pending.extend(child for child in manifest.children if is_manifest_type(child.media_type))
            if manifest.subject is not None:
                table.setdefault(str(manifest.subject.digest), []).append(_referrer_descriptor(content, descriptor))

        if pending:
            logger.warning("Repository %s: referrers walk stopped after %d manifests.", repository, len(seen))
        return table


def _referrer_descriptor(content: ManifestContent, pointer: Descriptor) -> dict[str, Any]:
    manifest = content.manifest
    descriptor: dict[str, Any] = {
        "mediaType": content.media_type(pointer),
        "digest": str(content.digest),
        "size": len(content.body),
    }
    artifact_type = manifest.artifact_type or manifest.config_type
    if artifact_type is not None:
        descriptor["artifactType"] = artifact_type
    if manifest.annotations:
        descriptor["annotations"] = manifest.annotations
    return descriptor


def referrers_index(descriptors: list[dict[str, Any]]) -> dict[str, Any]:
    """Wrap referrer descriptors in the image index the referrers API returns."""
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
