"""One handler per route. Each returns a Response for GET; the application drops the body for HEAD."""

from __future__ import annotations

import bisect
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote

import orjson

from stratus.oci.mediatypes import OCI_INDEX, OCTET_STREAM, is_valid_media_type
from stratus.oci.reference import Digest, InvalidDigest, is_valid_tag, parse_digest
from stratus.registry.content import ContentReader
from stratus.registry.errors import DigestInvalid, ManifestUnknown, PaginationInvalid
from stratus.registry.index_cache import IndexCache
from stratus.registry.ranges import parse_range
from stratus.registry.referrers import ReferrersFinder, referrers_index
from stratus.registry.routes import Match
from stratus.registry.types import Headers

JSON = b"application/json"
IMMUTABLE = b"public, max-age=31536000, immutable"
NO_STORE = b"no-store"

# tags/list returns at most this many tags per page, whatever `n` requests.
MAX_TAGS_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Request:
    """The parts of an HTTP request the handlers read."""

    method: str
    match: Match
    query: bytes = b""
    if_none_match: bytes | None = None
    range: bytes | None = None


@dataclass(slots=True)
class Response:
    """Status, headers (lowercase names) and body of a response."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    # Set instead of `body` for blobs the registry sends itself.
    stream: AsyncGenerator[bytes, None] | None = None
    # Content-Length when it is not len(body): a HEAD of a blob, or a stream.
    content_length: int | None = None


class Handlers:
    """The registry's routes, over the index cache, the content reader and the referrers finder."""

    def __init__(
        self,
        indexes: IndexCache,
        content: ContentReader,
        referrers: ReferrersFinder,
        *,
        freshness: float,
        send_blobs: bool,
    ) -> None:
        self._indexes = indexes
        self._content = content
        self._referrers = referrers
        # True when blob bytes go through this server (proxy mode, or a store that cannot presign).
        self._send_blobs = send_blobs
        # By-tag responses may be cached downstream at most as long as this server caches the tag.
        self._tag_cache_control = f"public, max-age={math.floor(freshness)}".encode()

    async def base(self, request: Request) -> Response:
        return Response(200, [(b"content-type", JSON)], b"{}")

    async def manifest(self, request: Request) -> Response:
        repository, reference = request.match.repository, request.match.reference
        table = await self._indexes.table(repository)

        if ":" in reference:
            digest = _parse_digest(reference)
            descriptor = table.digests.get(str(digest))
            cache_control = IMMUTABLE
        else:
            descriptor = table.tags.get(reference)
            if descriptor is None:
                if not is_valid_tag(reference):
                    raise ManifestUnknown(detail={"tag": reference[:128]}, message="manifest unknown: invalid tag")
                raise ManifestUnknown(detail={"tag": reference})
            digest = descriptor.digest
            cache_control = self._tag_cache_control

        content = await self._content.manifest(repository, digest, descriptor)
        if request.if_none_match is not None and _etag_matches(request.if_none_match, content.digest_header):
            return Response(304, [
                (b"docker-content-digest", content.digest_header),
                (b"etag", content.etag_header),
                (b"cache-control", cache_control),
            ])

        return Response(200, [
            (b"content-type", content.media_type(descriptor).encode()),
            (b"docker-content-digest", content.digest_header),
            (b"etag", content.etag_header),
            (b"cache-control", cache_control),
        ], content.body)

    async def blob(self, request: Request) -> Response:
        repository = request.match.repository
        digest = _parse_digest(request.match.reference)
        await self._indexes.table(repository)
        digest_header = str(digest).encode()

        if request.method == "GET" and not self._send_blobs:
            url = await self._content.blob_url(repository, digest)
            return Response(307, [
                (b"location", url.encode("latin-1")),
                (b"docker-content-digest", digest_header),
                (b"cache-control", NO_STORE),
            ])

        size = await self._content.blob_size(repository, digest)
        headers: Headers = [
            (b"content-type", OCTET_STREAM.encode()),
            (b"docker-content-digest", digest_header),
            (b"etag", b'"' + digest_header + b'"'),
        ]
        if not self._send_blobs:
            # A URL presigned for GET fails a HEAD, so the server responds to HEAD itself, never with a redirect.
            return Response(200, headers, content_length=size)
        headers.append((b"accept-ranges", b"bytes"))
        return await self._send_blob(repository, digest, size, request, headers)

    async def _send_blob(
        self, repository: str, digest: Digest, size: int, request: Request, headers: Headers
    ) -> Response:
        """Respond with the blob's bytes, or the bytes a Range selects; HEAD gets the same headers."""
        selected = parse_range(request.range, size)
        if selected is None:
            first, last, status = 0, size - 1, 200
        else:
            (first, last), status = selected, 206
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        if size == 0 or request.method == "HEAD":
            return Response(status, headers, content_length=last - first + 1)
        stream = await self._content.open_blob(repository, digest, first, last)
        return Response(status, headers, stream=stream, content_length=last - first + 1)

    async def tags(self, request: Request) -> Response:
        repository = request.match.repository
        limit, last = _parse_pagination(request.query)
        table = await self._indexes.table(repository)

        tags = table.sorted_tags
        if last is not None:
            tags = tags[bisect.bisect_right(tags, last):]
        headers: Headers = [(b"content-type", JSON)]
        if limit is not None and len(tags) > limit:
            tags = tags[:limit]
            if tags:
                link = f"</v2/{repository}/tags/list?n={limit}&last={quote(tags[-1])}>; rel=\"next\""
                headers.append((b"link", link.encode()))

        body = orjson.dumps({"name": repository, "tags": list(tags)})
        return Response(200, headers, body)

    async def referrers(self, request: Request) -> Response:
        repository = request.match.repository
        subject = _parse_digest(request.match.reference)
        artifact_type = _parse_artifact_type(request.query)

        if artifact_type is not None and not is_valid_media_type(artifact_type):
            found = []
        else:
            found = await self._referrers.referrers(repository, str(subject), artifact_type)
        headers: Headers = [(b"content-type", OCI_INDEX.encode())]
        if artifact_type is not None:
            headers.append((b"oci-filters-applied", b"artifactType"))
        return Response(200, headers, orjson.dumps(referrers_index(found)))


def _parse_digest(text: str) -> Digest:
    try:
        return parse_digest(text)
    except InvalidDigest as error:
        raise DigestInvalid(detail={"digest": text[:200], "reason": str(error)}, message="invalid digest") from None


def _etag_matches(header: bytes, digest: bytes) -> bool:
    """Return True when an If-None-Match header lists this digest's ETag (or is `*`)."""
    for candidate in header.split(b","):
        value = candidate.strip()
        if value.startswith(b"W/"):
            value = value[2:]
        if value == b"*" or value.strip(b'"') == digest:
            return True
    return False


def _parse_pagination(query: bytes) -> tuple[int | None, str | None]:
    parameters = parse_qs(query.decode("latin-1"), keep_blank_values=True)
    limit: int | None = None
    if "n" in parameters:
        text = parameters["n"][0]
        # isdigit() alone admits digits such as "²" that int() rejects.
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise PaginationInvalid(detail={"n": text[:32]})
        limit = min(int(text), MAX_TAGS_PAGE)
    last = parameters["last"][0] if "last" in parameters else None
    return limit, last


def _parse_artifact_type(query: bytes) -> str | None:
    parameters = parse_qs(query.decode("latin-1"))
    if "artifactType" not in parameters:
        return None
    return parameters["artifactType"][0]
