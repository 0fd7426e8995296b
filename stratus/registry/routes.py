"""The path matcher: a request path to a route, a repository name and a reference.

Repository names may contain route words (`team/manifests/app`), so the route is
decided by the last `/manifests/<ref>`, `/blobs/<digest>`, `/referrers/<digest>` or
`/tags/list` of the path. The name is matched on the raw, still percent-encoded path:
the OCI name grammar has no `%`, so `%2F`, `%2e%2e` and the like fail it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote

from stratus.oci.reference import is_valid_repository
from stratus.registry.errors import EndpointUnknown, NameInvalid


class Route(enum.Enum):
    BASE = "base"
    MANIFEST = "manifests"
    BLOB = "blobs"
    REFERRERS = "referrers"
    TAGS = "tags"


_REFERENCE_ROUTES = {"manifests": Route.MANIFEST, "blobs": Route.BLOB, "referrers": Route.REFERRERS}


@dataclass(frozen=True, slots=True)
class Match:
    """A matched request: the route, the repository name and the tag or digest text."""

    route: Route
    repository: str = ""
    reference: str = ""


BASE_MATCH = Match(Route.BASE)


def is_registry_path(raw_path: str) -> bool:
    """Return True for `/v2` and every path under `/v2/`."""
    return raw_path == "/v2" or raw_path.startswith("/v2/")


def match_path(raw_path: str) -> Match:
    """Match a raw request path (percent-encoding intact, no query string).

    Raises EndpointUnknown for paths that are no route and NameInvalid for a repository
    name that breaks the OCI grammar. The reference is percent-decoded but not validated.
    """
    if raw_path in ("/v2", "/v2/"):
        return BASE_MATCH
    if not raw_path.startswith("/v2/"):
        raise EndpointUnknown(detail={"path": raw_path[:256]})

    segments = raw_path[4:].split("/")
    if len(segments) >= 3 and segments[-2] == "tags" and segments[-1] == "list":
        route, name_segments, reference = Route.TAGS, segments[:-2], ""
    elif len(segments) >= 3 and segments[-2] in _REFERENCE_ROUTES:
        route, name_segments, reference = _REFERENCE_ROUTES[segments[-2]], segments[:-2], segments[-1]
    else:
        raise EndpointUnknown(detail={"path": raw_path[:256]})

    repository = "/".join(name_segments)
    if not is_valid_repository(repository):
        raise NameInvalid(detail={"name": repository[:256]})
    if "%" in reference:
        reference = unquote(reference, errors="replace")
    return Match(route, repository, reference)
