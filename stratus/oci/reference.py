"""Repository names, tags and digests: the grammar of the OCI distribution spec.

The rules are those of
https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
and of the image spec's descriptor page for digests.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "Digest",
    "InvalidDigest",
    "InvalidReference",
    "MAX_REPOSITORY_LENGTH",
    "is_valid_repository",
    "is_valid_tag",
    "parse_digest",
]

# <name>: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")

# Distribution registries reject names longer than 255 characters (NAME_INVALID).
MAX_REPOSITORY_LENGTH = 255

# <reference> as a tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

# The registered algorithms this registry serves, and the exact length of their hex encoding.
# The image spec requires lowercase hex for both.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[0-9a-f]+")


class InvalidReference(ValueError):
    """A repository name or tag that breaks the grammar."""


class InvalidDigest(ValueError):
    """A digest that is not `sha256:<64 hex>` or `sha512:<128 hex>` in lowercase."""


def is_valid_repository(name: str) -> bool:
    """Return True when `name` matches the OCI repository grammar and length limit."""
    return len(name) <= MAX_REPOSITORY_LENGTH and _REPOSITORY.fullmatch(name) is not None


def is_valid_tag(tag: str) -> bool:
    """Return True when `tag` matches the OCI tag grammar (at most 128 characters)."""
    return _TAG.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class Digest:
    """A content digest such as `sha256:<hex>`, validated on construction."""

    algorithm: str
    encoded: str

    def __post_init__(self) -> None:
        expected_length = _DIGEST_HEX_LENGTH.get(self.algorithm)
        if expected_length is None:
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r}")
        if len(self.encoded) != expected_length or not _LOWER_HEX.fullmatch(self.encoded):
            raise InvalidDigest(
                f"{self.algorithm} digest must be {expected_length} lowercase hex characters"
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def hasher(self) -> hashlib._Hash:
        """Return a new hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def matches(self, data: bytes) -> bool:
        """Return True when `data` hashes to this digest."""
        return hashlib.new(self.algorithm, data).hexdigest() == self.encoded

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """Compute the digest of `data`."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(text: str) -> Digest:
    """Parse `algorithm:hex` into a Digest, raising InvalidDigest on any other form."""
    algorithm, separator, encoded = text.partition(":")
    if not separator:
        raise InvalidDigest("digest must have the form algorithm:hex")
    return Digest(algorithm, encoded)
