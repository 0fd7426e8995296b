"""Image names: the push target `NAME[:TAG]`, and the names layout tools write into index.json.

Layout writers name an image in several ways (bare tag, full reference, comma-joined list,
`io.containerd.image.name`, nothing at all). image_names() turns an index.json entry into
the list of (reference, tag) pairs it stands for, so that choosing an image does not
depend on which tool wrote the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from stratus.oci.descriptor import CONTAINERD_NAME_ANNOTATION, REF_NAME_ANNOTATION, Descriptor
from stratus.oci.reference import MAX_REPOSITORY_LENGTH, is_valid_repository, is_valid_tag
from stratus.push.errors import InvalidImageReference

__all__ = [
    "DEFAULT_TAG",
    "ImageName",
    "image_names",
    "normalize_reference",
    "parse_target",
    "split_reference",
    "validate_target",
]

DEFAULT_TAG = "latest"

# Docker's rules for completing a short name: the default registry, its `library/`
# namespace for one-component names, and the legacy host name of Docker Hub.
_DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_OFFICIAL_NAMESPACE = "library/"


@dataclass(frozen=True, slots=True)
class ImageName:
    """One name of a layout entry: the full reference when one is known, and its tag."""

    reference: str | None
    tag: str | None

    def __str__(self) -> str:
        return self.reference or self.tag or ""


def validate_target(repository: str, tag: str) -> None:
    """Raise InvalidImageReference unless the repository name and tag follow the OCI grammar."""
    if not is_valid_repository(repository):
        raise InvalidImageReference(
            f"invalid repository name {repository!r}: expected lowercase components of a-z, 0-9 "
            f"and separators (. _ __ -) joined by '/', at most {MAX_REPOSITORY_LENGTH} characters"
        )
    if not is_valid_tag(tag):
        raise InvalidImageReference(
            f"invalid tag {tag!r}: expected 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', '-', "
            "not starting with '.' or '-'"
        )


def parse_target(text: str) -> tuple[str, str]:
    """Split `NAME[:TAG]` into a validated repository and tag; the tag defaults to `latest`.

    A digest (`NAME@sha256:...`) is rejected: the bucket's index.json records tags.
    """
    if "@" in text:
        raise InvalidImageReference(
            f"invalid image reference {text!r}: pushing by digest is not supported, give NAME:TAG"
        )
    repository, tag = _split_tag(text)
    validate_target(repository, tag if tag is not None else DEFAULT_TAG)
    return repository, tag if tag is not None else DEFAULT_TAG


def split_reference(reference: str) -> tuple[str, str | None]:
    """Split a reference into its name (with any digest removed) and its tag, None when untagged."""
    name = reference.partition("@")[0]
    return _split_tag(name)


def normalize_reference(reference: str) -> str:
    """Complete a reference the way docker does, so `app` and `docker.io/library/app:latest` compare equal.

    The digest part, when present, is kept; a reference with neither tag nor digest gets `:latest`.
    """
    name, at, digest = reference.partition("@")
    name, tag = _split_tag(name)

    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        domain, path = _DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == _LEGACY_DEFAULT_DOMAIN:
        domain = _DEFAULT_DOMAIN
    if domain == _DEFAULT_DOMAIN and "/" not in path:
        path = _OFFICIAL_NAMESPACE + path

    normalized = f"{domain}/{path}"
    if tag is not None:
        normalized += f":{tag}"
    if at:
        normalized += f"@{digest}"
    elif tag is None:
        normalized += f":{DEFAULT_TAG}"
    return normalized


def image_names(descriptor: Descriptor) -> list[ImageName]:
    """Return the names an index.json entry gives its image, most specific first.

    `io.containerd.image.name` is the full reference when present. Otherwise each
    comma-separated part of `org.opencontainers.image.ref.name` that holds `/`, `:` or
    `@` is a full reference, and any other part is a bare tag.
    """
    annotations = descriptor.annotations
    ref_name = annotations.get(REF_NAME_ANNOTATION, "")
    containerd_name = annotations.get(CONTAINERD_NAME_ANNOTATION, "")

    if containerd_name:
        _, tag = split_reference(containerd_name)
        if tag is None and ref_name and is_valid_tag(ref_name):
            tag = ref_name
        return [ImageName(containerd_name, tag)]

    names: list[ImageName] = []
    for part in ref_name.split(","):
        part = part.strip()
        if not part:
            continue
        if "/" in part or ":" in part or "@" in part:
            _, tag = split_reference(part)
            names.append(ImageName(part, tag))
        else:
            names.append(ImageName(None, part))
    return names


def _split_tag(name: str) -> tuple[str, str | None]:
    # A colon after the last slash starts the tag; an earlier one belongs to a registry port.
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None
