"""Property-based tests (hypothesis) of the path matcher and the OCI grammar checks.

Each property runs thousands of generated cases. Paths are built from route words,
dot segments, percent escapes and arbitrary text, so the generator reaches the corners
that a table of examples misses.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratus.oci.descriptor import InvalidDescriptor, parse_descriptor
from stratus.oci.index import InvalidIndex, parse_index
from stratus.oci.manifest import InvalidManifest, parse_manifest
from stratus.oci.mediatypes import is_valid_media_type
from stratus.oci.reference import Digest, InvalidDigest, is_valid_repository, is_valid_tag, parse_digest
from stratus.registry.errors import RegistryError
from stratus.registry.routes import Route, match_path
from stratus.storage.keys import blob_key, index_key, layout_key, repository_prefix

# No example database: a run writes nothing into the work tree.
MANY = settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ROUTE_WORDS = ("manifests", "blobs", "referrers", "tags", "list")

# Characters that must never reach a response header: CR, LF, NUL, and the separators a
# crafted value would need to add a header or a parameter.
HEADER_BREAKERS = frozenset("\r\n\x00 \t;,\"\\")

segments = st.one_of(
    st.sampled_from(ROUTE_WORDS),
    st.sampled_from(("", ".", "..", "%2F", "%2f", "%2e%2e", "%00", "%zz", "\\", "library", "a", "sha256:" + "a" * 64)),
    st.text(alphabet="abz09._-", min_size=1, max_size=10),
    st.text(max_size=12),
)
# Components of the OCI name grammar: [a-z0-9]+ joined by `.`, `_`, `__` or one or more `-`.
components = st.builds(
    lambda words, separators: "".join(word + separator for word, separator in zip(words, separators)) + words[-1],
    st.lists(st.text(alphabet="abcz0189", min_size=1, max_size=6), min_size=1, max_size=3),
    st.lists(st.sampled_from((".", "_", "__", "-", "--")), min_size=2, max_size=2),
)
repositories = st.lists(components, min_size=1, max_size=4).map("/".join)
digests = st.builds(Digest.of, st.binary(max_size=64), st.sampled_from(("sha256", "sha512")))


@MANY
@given(st.lists(segments, max_size=8), st.booleans())
def test_match_path_keys_stay_in_repository(parts: list[str], trailing_slash: bool) -> None:
    path = "/v2/" + "/".join(parts) + ("/" if trailing_slash else "")
    try:
        match = match_path(path)
    except RegistryError:
        return
    if match.route is Route.BASE:
        assert path == "/v2/"
        return

    assert is_valid_repository(match.repository)
    assert "%" not in match.repository
    prefix = repository_prefix(match.repository) + "/"
    for key in (index_key(match.repository), layout_key(match.repository)):
        assert key.startswith(prefix)
        assert ".." not in key.split("/")
    if match.route is Route.TAGS:
        assert path.rstrip("/").endswith("/tags/list")


@MANY
@given(st.text(max_size=300))
def test_match_path_raises_only_registry_errors(text: str) -> None:
    try:
        match_path("/v2/" + text)
    except RegistryError:
        pass


@MANY
@given(repositories, digests)
def test_keys_stay_under_prefix(repository: str, digest: Digest) -> None:
    prefix = repository_prefix(repository)
    key = blob_key(repository, digest)
    assert key == f"{prefix}/blobs/{digest.algorithm}/{digest.encoded}"
    assert all(part not in ("", ".", "..") for part in key.split("/"))
    if "/" not in repository:
        assert prefix == f"library/{repository}"


@MANY
@given(st.text(max_size=300))
def test_repository_prefix_rejects_invalid_names(name: str) -> None:
    if is_valid_repository(name):
        assert repository_prefix(name).endswith(name)
        return
    try:
        repository_prefix(name)
    except ValueError:
        return
    raise AssertionError(f"repository_prefix accepted {name!r}")


@MANY
@given(st.text(max_size=200))
def test_tag_grammar(text: str) -> None:
    valid = is_valid_tag(text)
    assert valid == (re.fullmatch(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", text) is not None)
    if valid:
        assert not set(text) & (HEADER_BREAKERS | {"/", ":", "%"})


@MANY
@given(st.binary(max_size=256), st.sampled_from(("sha256", "sha512")))
def test_digest_round_trips(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)
    parsed = parse_digest(str(digest))
    assert parsed == digest
    assert parsed.matches(data)
    assert str(parsed) == str(digest)


@MANY
@given(st.one_of(st.text(max_size=200), st.from_regex(r"(sha256|sha512|md5):[0-9a-fA-F]{0,130}", fullmatch=True)))
def test_parse_digest_raises_only_invalid_digest(text: str) -> None:
    try:
        digest = parse_digest(text)
    except InvalidDigest:
        return
    assert str(digest) == text
    assert re.fullmatch(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", text)


@MANY
@given(st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)))
def test_media_type_valid_only_header_safe(value: object) -> None:
    if not is_valid_media_type(value):
        return
    assert isinstance(value, str)
    assert len(value) <= 255
    assert value.count("/") == 1
    assert not set(value) & HEADER_BREAKERS
    value.encode("ascii")


# Integers stay within 64 bits, the range orjson reads and writes.
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=6,
)
descriptor_like = st.fixed_dictionaries(
    {},
    optional={
        "mediaType": st.one_of(st.sampled_from((
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.manifest.v1+json\r\nLocation: http://evil",
            "text/html; charset=utf-8",
        )), st.text(max_size=40)),
        "digest": st.one_of(digests.map(str), st.text(max_size=80)),
        "size": st.one_of(st.integers(min_value=-5, max_value=2**63 - 1), st.text(max_size=5), st.booleans()),
        "annotations": st.one_of(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3), json_values),
        "artifactType": st.one_of(st.text(max_size=40), json_values),
        "platform": json_values,
    },
)


@MANY
@given(st.one_of(descriptor_like, json_values))
def test_parse_descriptor_accepts_only_safe_values(value: Any) -> None:
    try:
        descriptor = parse_descriptor(value)
    except InvalidDescriptor:
        return
    assert is_valid_media_type(descriptor.media_type)
    assert descriptor.artifact_type is None or is_valid_media_type(descriptor.artifact_type)
    assert isinstance(descriptor.size, int)
    assert descriptor.size >= 0


@MANY
@given(st.lists(st.one_of(descriptor_like, json_values), max_size=5), st.sampled_from((2, 1, "2", None)))
def test_parse_index_tags_are_valid(entries: list[Any], schema_version: object) -> None:
    data = orjson.dumps({"schemaVersion": schema_version, "manifests": entries})
    try:
        table = parse_index(data)
    except InvalidIndex:
        assert schema_version != 2
        return
    assert len(table.descriptors) + len(table.invalid_entries) == len(entries)
    for tag, descriptor in table.tags.items():
        assert is_valid_tag(tag)
        assert is_valid_media_type(descriptor.media_type)


@MANY
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda document: orjson.dumps(document),
        st.fixed_dictionaries(
            {"schemaVersion": st.sampled_from((2, 2, 1))},
            optional={
                "mediaType": st.one_of(st.sampled_from((
                    "application/vnd.oci.image.index.v1+json",
                    "application/vnd.oci.image.manifest.v1+json\r\nX-Injected: 1",
                )), st.text(max_size=30)),
                "manifests": st.lists(descriptor_like, max_size=3),
                "config": descriptor_like,
                "layers": st.lists(descriptor_like, max_size=3),
                "subject": descriptor_like,
                "artifactType": st.text(max_size=40),
                "annotations": json_values,
            },
        ),
    ),
))
def test_parse_manifest_raises_only_invalid_manifest(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except InvalidManifest:
        return
    assert is_valid_media_type(manifest.media_type)
    assert manifest.artifact_type is None or is_valid_media_type(manifest.artifact_type)
    for child in manifest.children:
        assert is_valid_media_type(child.media_type)
