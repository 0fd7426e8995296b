"""The path matcher: every route, names with route words, and hostile paths."""

from __future__ import annotations

import pytest

from stratus.registry.errors import EndpointUnknown, NameInvalid
from stratus.registry.routes import Match, Route, match_path

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2", Match(Route.BASE)),
        ("/v2/", Match(Route.BASE)),
        ("/v2/alpine/manifests/latest", Match(Route.MANIFEST, "alpine", "latest")),
        ("/v2/library/alpine/manifests/3.19", Match(Route.MANIFEST, "library/alpine", "3.19")),
        ("/v2/org/team/app/manifests/v1", Match(Route.MANIFEST, "org/team/app", "v1")),
        (f"/v2/org/team/app/manifests/{DIGEST}", Match(Route.MANIFEST, "org/team/app", DIGEST)),
        (f"/v2/alpine/blobs/{DIGEST}", Match(Route.BLOB, "alpine", DIGEST)),
        (f"/v2/alpine/referrers/{DIGEST}", Match(Route.REFERRERS, "alpine", DIGEST)),
        ("/v2/alpine/tags/list", Match(Route.TAGS, "alpine")),
        ("/v2/team/manifests/app/manifests/v1", Match(Route.MANIFEST, "team/manifests/app", "v1")),
        (f"/v2/a/blobs/b/blobs/{DIGEST}", Match(Route.BLOB, "a/blobs/b", DIGEST)),
        ("/v2/a/tags/list/tags/list", Match(Route.TAGS, "a/tags/list")),
        ("/v2/a/referrers/b/manifests/x", Match(Route.MANIFEST, "a/referrers/b", "x")),
        ("/v2/a/manifests/sha256%3Aabc", Match(Route.MANIFEST, "a", "sha256:abc")),
    ],
)
def test_match_path_routes(path: str, expected: Match) -> None:
    assert match_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../manifests/latest",
        "/v2/a/../b/manifests/latest",
        "/v2/%2e%2e/manifests/latest",
        "/v2/a%2Fb/manifests/latest",
        "/v2/a%2fb/manifests/latest",
        "/v2/a\\b/manifests/latest",
        "/v2/a/%2e%2e/%2e%2e/x/manifests/latest",
        "/v2/Alpine/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2//manifests/latest",
        "/v2/a-/manifests/latest",
        "/v2/" + "a" * 256 + "/manifests/latest",
        "/v2/a b/manifests/latest",
        "/v2/a\x00b/manifests/latest",
    ],
)
def test_match_path_invalid_names(path: str) -> None:
    with pytest.raises(NameInvalid):
        match_path(path)


@pytest.mark.parametrize(
    "path",
    ["/", "/v1/alpine", "/v2x", "/v2/_catalog", "/v2/alpine", "/v2/alpine/manifests", "/v2/manifests/latest",
     "/v2/alpine/tags", "/v2/alpine/tags/list/", "/v2/alpine/blobs/uploads/"],
)
def test_match_path_unknown_endpoints(path: str) -> None:
    with pytest.raises(EndpointUnknown):
        match_path(path)


def test_match_path_longest_valid_name() -> None:
    name = "a" * 255
    assert match_path(f"/v2/{name}/tags/list") == Match(Route.TAGS, name)


def test_match_path_traversal_in_reference_kept_for_validation() -> None:
    # The reference is returned decoded; the handlers reject it as a tag or digest.
    assert match_path("/v2/a/manifests/sha256:..%2F..%2Fx") == Match(Route.MANIFEST, "a", "sha256:../../x")
