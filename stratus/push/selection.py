"""Choosing the image to push among the entries of a layout's index.json.

Entries that share one digest are one image: BuildKit writes one entry per `-t` name,
crane may repeat an entry, skopeo leaves unnamed copies. A layout with one image needs
no choice. With several, the caller names one by tag, by reference (short or full,
compared after docker's normalisation) or by digest.
"""

from __future__ import annotations

from dataclasses import dataclass

from stratus.oci.descriptor import Descriptor
from stratus.push.errors import ImageNotChosen
from stratus.push.names import ImageName, image_names, normalize_reference, split_reference

__all__ = ["LayoutImage", "group_images", "select_image"]


@dataclass(frozen=True, slots=True)
class LayoutImage:
    """One image of a layout: its index.json entries (same digest) and all their names."""

    entries: tuple[Descriptor, ...]
    names: tuple[ImageName, ...]

    @property
    def descriptor(self) -> Descriptor:
        return self.entries[0]

    def describe(self) -> str:
        """Return a one-line summary: digest, media type, platform and names."""
        descriptor = self.descriptor
        text = f"{descriptor.digest} ({descriptor.media_type}"
        platform = descriptor.platform
        if platform is not None:
            text += ", " + "/".join(
                str(platform[field]) for field in ("os", "architecture", "variant") if platform.get(field)
            )
        text += ")"
        shown = sorted({str(name) for name in self.names})
        return text + (" named " + ", ".join(shown) if shown else " without a name")


def group_images(descriptors: tuple[Descriptor, ...]) -> list[LayoutImage]:
    """Group index.json entries by digest, keeping the order in which digests first appear."""
    groups: dict[str, list[Descriptor]] = {}
    for descriptor in descriptors:
        groups.setdefault(str(descriptor.digest), []).append(descriptor)

    images: list[LayoutImage] = []
    for entries in groups.values():
        names: list[ImageName] = []
        for entry in entries:
            names.extend(name for name in image_names(entry) if name not in names)
        images.append(LayoutImage(tuple(entries), tuple(names)))
    return images


def select_image(images: list[LayoutImage], choice: str | None, description: str) -> Descriptor:
    """Return the entry to push: the only image, or the one `choice` names.

    Raises ImageNotChosen when the layout has no image, when it has several and `choice`
    is None, or when `choice` matches no image or more than one. Its message lists the images.
    """
    if not images:
        raise ImageNotChosen(f"{description} contains no image: its index.json lists no manifests")

    if choice is None:
        if len(images) == 1:
            return images[0].descriptor
        raise ImageNotChosen(
            f"{description} contains {len(images)} images; choose one by tag, reference or digest: "
            + _listing(images)
        )

    matches = [(image, entry) for image in images if (entry := _matching_entry(image, choice)) is not None]
    if not matches:
        matches = [(image, image.descriptor) for image in images if _matches_tag_of_reference(image, choice)]
    if not matches:
        raise ImageNotChosen(f"no image in {description} matches {choice!r}; it contains: " + _listing(images))
    if len(matches) > 1:
        raise ImageNotChosen(
            f"{choice!r} matches {len(matches)} images in {description}; give a full reference or a digest: "
            + _listing([image for image, _ in matches])
        )
    return matches[0][1]


def _matching_entry(image: LayoutImage, choice: str) -> Descriptor | None:
    """Return the entry of `image` that `choice` names, or None."""
    if choice == str(image.descriptor.digest):
        return image.descriptor

    # A word without '/', ':' or '@' may be a tag (`1.0`) or a short name (`app`, meaning app:latest).
    is_word = not any(character in choice for character in "/:@")
    normalized_choice = normalize_reference(choice)
    for entry in image.entries:
        for name in image_names(entry):
            if is_word and name.tag == choice:
                return entry
            if name.reference is not None and (
                choice == name.reference or normalized_choice == normalize_reference(name.reference)
            ):
                return entry
    return None


def _matches_tag_of_reference(image: LayoutImage, choice: str) -> bool:
    """Return True when `choice` is `name:tag` and the image carries `tag` as a bare tag.

    Used only when no image matches `choice` exactly, since a bare tag does not say
    which repository the image was built for.
    """
    if "@" in choice:
        return False
    _, tag = split_reference(choice)
    return tag is not None and any(name.reference is None and name.tag == tag for name in image.names)


def _listing(images: list[LayoutImage]) -> str:
    return "; ".join(image.describe() for image in images)
