"""Manifests and blobs of a repository, read from the bucket through bounded caches.

Manifest bytes are content addressed and immutable, so they are cached by
(repository, digest) once their hash has been checked. Blob sizes are cached by key,
and presigned URLs are reused until less than MIN_URL_VALIDITY of them remains.
Nothing negative is cached here: a blob pushed a moment ago is found at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from stratus import storage
from stratus.oci.descriptor import Descriptor
from stratus.oci.manifest import MAX_MANIFEST_SIZE, InvalidManifest, Manifest, parse_manifest
from stratus.oci.mediatypes import is_manifest_type
from stratus.oci.reference import Digest
from stratus.registry.cache import LRUCache, SizedLRUCache
from stratus.registry.errors import BlobUnknown, InternalError, ManifestUnknown
from stratus.registry.index_cache import RunInThread

logger = logging.getLogger(__name__)

# A redirect never hands out a URL with less validity than this left.
MIN_URL_VALIDITY = 600.0

# The manifest cache charges each entry this many times its byte length, an estimate
# that covers the parsed form kept beside the bytes.
_PARSED_COST_FACTOR = 3


@dataclass(frozen=True, slots=True)
class ManifestContent:
    """Checked manifest bytes with their parsed form and ready-made header values.

    One object is cached per (repository, digest) and shared by every request for it.
    """

    body: bytes
    digest: Digest
    manifest: Manifest
    digest_header: bytes
    etag_header: bytes

    def media_type(self, descriptor: Descriptor | None) -> str:
        """Return the Content-Type: the document's own type, else the descriptor's, else its shape."""
        if self.manifest.declares_type:
            return self.manifest.media_type
        if descriptor is not None and is_manifest_type(descriptor.media_type):
            return descriptor.media_type
        return self.manifest.media_type


@dataclass(slots=True)
class _BlobEntry:
    size: int
    url: str | None = None
    url_expires_at: float = 0.0


class ContentReader:
    """Reads manifests, blob sizes and blob URLs of any repository in the bucket."""

    def __init__(
        self,
        store: storage.Storage,
        run_in_thread: RunInThread,
        *,
        manifest_cache_bytes: int,
        blob_cache_entries: int,
        presign_expiry: float,
    ) -> None:
        self._storage = store
        self._run = run_in_thread
        self._manifests: SizedLRUCache[tuple[str, Digest], ManifestContent] = SizedLRUCache(manifest_cache_bytes)
        self._blobs: LRUCache[tuple[str, Digest], _BlobEntry] = LRUCache(blob_cache_entries)
        # Blobs found not to be manifests (layers, configs, corrupt bytes). Content is
        # immutable, so the result never changes. Remembering it keeps a client that asks
        # the manifests route for a layer from having it read again and again.
        self._not_manifests: LRUCache[tuple[str, Digest], str] = LRUCache(blob_cache_entries)
        # Problems already logged, so a client repeating a request does not flood the log.
        self._logged: LRUCache[tuple[str, Digest], bool] = LRUCache(1024)
        self._presign_expiry = int(presign_expiry)
        self.urls_reused = 0
        self.urls_signed = 0

    async def manifest(self, repository: str, digest: Digest, descriptor: Descriptor | None) -> ManifestContent:
        """Return the manifest stored under `digest`, checked against it.

        `descriptor` is the index.json entry that names this digest, or None for a manifest
        found only in `blobs/` (a platform or attestation manifest). Raises ManifestUnknown
        when the blob is missing, too large, not a manifest, or does not hash to `digest`.
        """
        cached = self._manifests.get((repository, digest))
        if cached is not None:
            return cached
        known_problem = self._not_manifests.peek((repository, digest))
        if known_problem is not None:
            raise ManifestUnknown(detail={"digest": str(digest)}, message=known_problem)
        return await self._load_manifest(repository, digest, descriptor)

    async def blob_size(self, repository: str, digest: Digest) -> int:
        """Return the size of a blob, raising BlobUnknown when it is not in the bucket."""
        entry = await self._blob_entry(repository, digest)
        return entry.size

    async def blob_url(self, repository: str, digest: Digest) -> str:
        """Return a presigned GET URL for a blob with at least MIN_URL_VALIDITY left."""
        entry = await self._blob_entry(repository, digest)
        now = time.time()
        if entry.url is None or entry.url_expires_at - now < MIN_URL_VALIDITY:
            key = storage.blob_key(repository, digest)
            entry.url = self._storage.presign_get(key, self._presign_expiry)
            entry.url_expires_at = now + self._presign_expiry
            self.urls_signed += 1
        else:
            self.urls_reused += 1
        return entry.url

    def cache_counts(self) -> dict[str, tuple[int, int]]:
        """Return (hits, misses) of the manifest, blob and presigned URL caches."""
        return {
            "manifest": (self._manifests.hits, self._manifests.misses),
            "blob": (self._blobs.hits, self._blobs.misses),
            "presigned_url": (self.urls_reused, self.urls_signed),
        }

    async def open_blob(self, repository: str, digest: Digest, first: int, last: int) -> AsyncGenerator[bytes, None]:
        """Open bytes `first` to `last` of a blob and return them as an async iterator.

        The object is opened before this returns, so a missing blob raises BlobUnknown
        here rather than after the response has started.
        """
        key = storage.blob_key(repository, digest)
        try:
            stream = await self._run(self._storage.open_read, key, first, last)
        except storage.NotFound:
            self._blobs.pop((repository, digest))
            raise BlobUnknown(detail={"digest": str(digest)}) from None
        return self._iterate(stream, repository, digest)

    async def _iterate(self, stream: storage.ObjectStream, repository: str, digest: Digest) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                chunk = await self._run(next, stream.chunks, None)
                if chunk is None:
                    return
                yield chunk
        finally:
            await self._run(stream.close)

    async def _load_manifest(
        self, repository: str, digest: Digest, descriptor: Descriptor | None
    ) -> ManifestContent:
        body = await self._read_manifest_blob(repository, digest, descriptor)
        try:
            manifest = parse_manifest(body)
        except InvalidManifest as error:
            self._log_once(repository, digest, logging.INFO, "Repository %s: blob %s is not a manifest (%s).",
                           repository, digest, error)
            self._not_manifests.put((repository, digest), ManifestUnknown.message)
            raise ManifestUnknown(detail={"digest": str(digest)}) from None

        digest_header = str(digest).encode()
        content = ManifestContent(body, digest, manifest, digest_header, b'"' + digest_header + b'"')
        self._manifests.put((repository, digest), content, len(body) * _PARSED_COST_FACTOR)
        return content

    async def _read_manifest_blob(self, repository: str, digest: Digest, descriptor: Descriptor | None) -> bytes:
        key = storage.blob_key(repository, digest)
        try:
            stored = await self._run(self._storage.get, key, max_bytes=MAX_MANIFEST_SIZE)
        except storage.NotFound:
            if descriptor is not None:
                self._log_once(repository, digest, logging.ERROR,
                               "Repository %s: index.json names %s but its blob is missing.", repository, digest)
            raise ManifestUnknown(detail={"digest": str(digest)}) from None
        except storage.ObjectTooLarge as error:
            message = f"manifest unknown: the blob is {error.size} bytes, more than the {MAX_MANIFEST_SIZE} of any manifest"
            self._not_manifests.put((repository, digest), message)
            raise ManifestUnknown(detail={"digest": str(digest)}, message=message) from None

        if not digest.matches(stored.body):
            self._log_once(repository, digest, logging.ERROR,
                           "Repository %s: blob %s does not hash to its digest; not served.", repository, digest)
            if descriptor is not None:
                raise InternalError(
                    detail={"digest": str(digest)}, message="stored manifest does not match its digest"
                )
            raise ManifestUnknown(detail={"digest": str(digest)})
        return stored.body

    def _log_once(self, repository: str, digest: Digest, level: int, message: str, *arguments: object) -> None:
        if self._logged.peek((repository, digest)) is None:
            self._logged.put((repository, digest), True)
            logger.log(level, message, *arguments)

    async def _blob_entry(self, repository: str, digest: Digest) -> _BlobEntry:
        entry = self._blobs.get((repository, digest))
        if entry is not None:
            return entry

        key = storage.blob_key(repository, digest)
        try:
            info = await self._run(self._storage.stat, key)
        except storage.NotFound:
            raise BlobUnknown(detail={"digest": str(digest)}) from None
        entry = _BlobEntry(info.size)
        self._blobs.put((repository, digest), entry)
        return entry
