"""The OCI vocabulary: grammar, digests, media types, descriptors, manifests and indexes."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from stratus.oci import mediatypes
from stratus.oci.descriptor import InvalidDescriptor, parse_descriptor
from stratus.oci.index import InvalidIndex, parse_index
from stratus.oci.manifest import MAX_MANIFEST_SIZE, InvalidManifest, parse_manifest
from stratus.oci.reference import Digest, InvalidDigest, is_valid_repository, is_valid_tag, parse_digest

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "name",
    ["a", "alpine", "library/alpine", "org/team/app", "a.b", "a_b", "a__b", "a---b", "a" * 255, "0", "x/y/z/w"],
)
def test_repository_valid(name: str) -> None:
    assert is_valid_repository(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "..", "a/../b", "a..b", "a._b", "-a", "a-", "a%2Fb", "a\\b", "a" * 256,
     "a b", "a\nb", "é"],
)
def test_repository_invalid(name: str) -> None:
    assert not is_valid_repository(name)


@pytest.mark.parametrize("tag", ["latest", "1.0", "_x", "A-b.c_d", "a" * 128])
def test_tag_valid(tag: str) -> None:
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a:b", "a/b", "a b", "..", "a\n"])
def test_tag_invalid(tag: str) -> None:
    assert not is_valid_tag(tag)


def test_parse_digest_sha256_and_sha512() -> None:
    assert parse_digest(f"sha256:{HEX}") == Digest("sha256", HEX)
    assert str(parse_digest(f"sha512:{HEX * 2}")) == f"sha512:{HEX * 2}"


@pytest.mark.parametrize(
    "text",
    [HEX, f"sha256:{HEX[:-1]}", f"sha256:{HEX}0", f"sha256:{HEX.upper()}", f"md5:{HEX[:32]}",
     "sha256:../../x", f"sha512:{HEX}", f"sha256:{HEX[:-1]}g", "sha256:", ":"],
)
def test_parse_digest_invalid(text: str) -> None:
    with pytest.raises(InvalidDigest):
        parse_digest(text)


def test_digest_matches_bytes() -> None:
    digest = Digest.of(b"hello")
    assert digest.encoded == hashlib.sha256(b"hello").hexdigest()
    assert digest.matches(b"hello")
    assert not digest.matches(b"hello!")


@pytest.mark.parametrize(
    ("document", "descriptor_type", "expected"),
    [
        ({"mediaType": mediatypes.OCI_INDEX, "manifests": []}, None, mediatypes.OCI_INDEX),
        ({"mediaType": mediatypes.DOCKER_MANIFEST_LIST, "manifests": []}, None, mediatypes.DOCKER_MANIFEST_LIST),
        ({"mediaType": mediatypes.DOCKER_MANIFEST, "config": {}, "layers": []}, None, mediatypes.DOCKER_MANIFEST),
        ({"config": {}, "layers": []}, mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST),
        ({"config": {}, "layers": []}, None, mediatypes.OCI_MANIFEST),
        ({"manifests": []}, None, mediatypes.OCI_INDEX),
        ({"mediaType": mediatypes.OCI_CONFIG}, None, None),
        ({"architecture": "amd64"}, None, None),
    ],
)
def test_detect_manifest_type(document: dict, descriptor_type: str | None, expected: str | None) -> None:
    assert mediatypes.detect_manifest_type(document, descriptor_type) == expected


@pytest.mark.parametrize(
    "value",
    ["text/plain\r\nLocation: x", "a/b; charset=utf-8", "nosubtype", "a/b\n", "", 5, None],
)
def test_media_type_rejects_header_injection(value: object) -> None:
    assert not mediatypes.is_valid_media_type(value)


def _descriptor(**overrides: object) -> dict:
    descriptor = {"mediaType": mediatypes.OCI_MANIFEST, "digest": f"sha256:{HEX}", "size": 10}
    descriptor.update(overrides)
    return descriptor


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mediaType": "bad\r\ntype"}, "invalid mediaType 'bad\\r\\ntype'"),
        ({"digest": "sha256:xyz"}, "invalid digest 'sha256:xyz': sha256 digest must be 64 lowercase hex characters"),
        ({"size": -1}, f"invalid size -1 for sha256:{HEX}"),
        ({"size": True}, f"invalid size True for sha256:{HEX}"),
        ({"annotations": {"a": 1}}, f"annotations of sha256:{HEX} must map strings to strings"),
        ({"artifactType": "x"}, f"invalid artifactType 'x' for sha256:{HEX}"),
    ],
)
def test_parse_descriptor_errors(overrides: dict, message: str) -> None:
    with pytest.raises(InvalidDescriptor) as caught:
        parse_descriptor(_descriptor(**overrides))
    assert str(caught.value) == message


def test_parse_index_tags_and_first_entry_wins() -> None:
    other = "f" * 64
    data = orjson.dumps({
        "schemaVersion": 2,
        "manifests": [
            _descriptor(annotations={"org.opencontainers.image.ref.name": "v1"}),
            _descriptor(digest=f"sha256:{other}", annotations={"org.opencontainers.image.ref.name": "v1"}),
            _descriptor(digest=f"sha256:{other}", annotations={"org.opencontainers.image.ref.name": "v2"}),
            _descriptor(annotations={"org.opencontainers.image.ref.name": "docker.io/library/x:1"}),
            {"mediaType": "x/y", "digest": "nope", "size": 1},
        ],
    })
    table = parse_index(data)
    assert table.sorted_tags == ("v1", "v2")
    assert str(table.tags["v1"].digest) == f"sha256:{HEX}"
    assert str(table.tags["v2"].digest) == f"sha256:{other}"
    assert len(table.descriptors) == 4
    assert table.invalid_entries == ("entry 4: invalid digest 'nope': digest must have the form algorithm:hex",)


def test_parse_index_null_manifests() -> None:
    # umoci 0.4 writes an empty layout's index with "manifests": null.
    table = parse_index(b'{"schemaVersion":2,"manifests":null}\n')
    assert table.descriptors == ()
    assert table.tags == {}


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"schemaVersion":1,"manifests":[]}', b'{"manifests":[]}', b'{"schemaVersion":2,"manifests":{}}'],
)
def test_parse_index_invalid(data: bytes) -> None:
    with pytest.raises(InvalidIndex):
        parse_index(data)


def test_parse_manifest_artifact_with_subject() -> None:
    data = orjson.dumps({
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": "application/vnd.docker.attestation.manifest.v1+json",
        "config": {"mediaType": mediatypes.OCI_EMPTY, "digest": f"sha256:{HEX}", "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": f"sha256:{HEX}", "size": 5}],
        "subject": _descriptor(),
    })
    manifest = parse_manifest(data)
    assert manifest.media_type == mediatypes.OCI_MANIFEST
    assert manifest.declares_type
    assert manifest.artifact_type == "application/vnd.docker.attestation.manifest.v1+json"
    assert manifest.subject is not None
    assert str(manifest.subject.digest) == f"sha256:{HEX}"
    assert manifest.config_type == mediatypes.OCI_EMPTY
    assert len(manifest.children) == 2


def test_parse_manifest_without_media_type_uses_descriptor() -> None:
    data = orjson.dumps({"schemaVersion": 2, "config": _descriptor(), "layers": []})
    manifest = parse_manifest(data, mediatypes.DOCKER_MANIFEST)
    assert manifest.media_type == mediatypes.DOCKER_MANIFEST
    assert not manifest.declares_type


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x1f\x8b\x08\x00", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schemaVersion":1}', "schemaVersion is not 2"),
        (b'{"schemaVersion":2,"architecture":"amd64"}', "neither an image manifest nor an image index"),
        (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.config.v1+json"}',
         "neither an image manifest nor an image index"),
        (b'{"schemaVersion":2,"config":{},"layers":[]}', "invalid mediaType None"),
    ],
)
def test_parse_manifest_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(data)
    assert str(caught.value).startswith(message)


def test_parse_manifest_too_large() -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_manifest(b" " * (MAX_MANIFEST_SIZE + 1))
    assert str(caught.value) == f"manifest is {MAX_MANIFEST_SIZE + 1} bytes, more than {MAX_MANIFEST_SIZE}"
