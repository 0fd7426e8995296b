"""Reading an OCI layout from disk into a LayoutDescription, for layouts that real tools
(umoci, skopeo) or the generator wrote.

The reader walks the descriptor graph from one index.json entry. It is independent of
the generator, so the tests can check one against the other.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

from support.layouts import (
    DIRECTORY,
    IMAGE_NAME,
    INDEX_MEDIA_TYPES,
    REF_NAME,
    REFERENCE_DIGEST,
    REFERENCE_TYPE,
    TARBALL,
    LayoutDescription,
    Platform,
    PlatformImage,
)

_BLOB_PATH = re.compile(r"blobs/(sha256|sha512)/([0-9a-f]+)")


class LayoutReadError(ValueError):
    """A layout that is incomplete or not an OCI image layout."""


def read_layout_files(path: Path) -> tuple[bytes, bytes, dict[str, bytes]]:
    """Return `oci-layout`, `index.json` and every blob (by digest) of a directory or tarball.

    Files under `blobs/` whose names are not `<algorithm>/<hex>` (temporary files of
    some tools) are skipped.
    """
    files: dict[str, bytes] = {}
    if path.is_dir():
        for file in path.rglob("*"):
            if file.is_file():
                files[file.relative_to(path).as_posix()] = file.read_bytes()
    else:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if member.isfile():
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    files[member.name.removeprefix("./")] = extracted.read()

    for required in ("oci-layout", "index.json"):
        if required not in files:
            raise LayoutReadError(f"{path} has no {required}")
    blobs = {}
    for name, data in files.items():
        match = _BLOB_PATH.fullmatch(name)
        if match is not None:
            blobs[f"{match.group(1)}:{match.group(2)}"] = data
    return files["oci-layout"], files["index.json"], blobs


def describe_layout(path: Path, *, ref_name: str | None = None) -> LayoutDescription:
    """Describe the image of the index.json entry whose `ref.name` is `ref_name`, or of
    the first entry. Raises LayoutReadError when a referenced blob is missing."""
    _, index_json, blobs = read_layout_files(path)
    index = json.loads(index_json)
    all_entries = index.get("manifests") or []
    if not all_entries:
        raise LayoutReadError(f"index.json of {path} has no entries")

    chosen = all_entries[0]
    if ref_name is not None:
        named = [entry for entry in all_entries if (entry.get("annotations") or {}).get(REF_NAME) == ref_name]
        if not named:
            raise LayoutReadError(f"no entry of {path} has ref.name {ref_name!r}")
        chosen = named[0]
    entries = tuple(entry for entry in all_entries if entry["digest"] == chosen["digest"])
    descriptor = {key: value for key, value in chosen.items() if key != "annotations"}

    walker = _GraphWalker(path, blobs)
    nested_index: str | None = None
    if chosen["mediaType"] in INDEX_MEDIA_TYPES:
        nested_index = chosen["digest"]
        images = walker.visit_index(chosen)
    else:
        image = walker.visit_manifest(chosen, _platform(chosen.get("platform")))
        images = {str(image.platform): image}

    return LayoutDescription(
        path=path,
        output=DIRECTORY if path.is_dir() else TARBALL,
        index_json=index_json,
        entries=entries,
        descriptor=descriptor,
        names=_image_names(entries),
        nested_index=nested_index,
        images=images,
        blobs=blobs,
        media_types=walker.media_types,
        unreferenced=tuple(sorted(set(blobs) - set(walker.media_types))),
    )


class _GraphWalker:
    def __init__(self, path: Path, blobs: dict[str, bytes]) -> None:
        self.path = path
        self.blobs = blobs
        self.media_types: dict[str, str] = {}

    def load(self, descriptor: dict[str, Any], parent: str) -> Any:
        digest = descriptor["digest"]
        if digest not in self.blobs:
            raise LayoutReadError(f"blob {digest} referenced by {parent} is missing from {self.path}")
        self.media_types[digest] = descriptor["mediaType"]
        return json.loads(self.blobs[digest])

    def visit_index(self, descriptor: dict[str, Any]) -> dict[str, PlatformImage]:
        index = self.load(descriptor, "index.json")
        images: dict[str, PlatformImage] = {}
        attestations: dict[str, dict[str, Any]] = {}
        for child in index.get("manifests") or []:
            annotations = child.get("annotations") or {}
            if annotations.get(REFERENCE_TYPE) == "attestation-manifest":
                attestations[annotations[REFERENCE_DIGEST]] = child
                continue
            image = self.visit_manifest(child, _platform(child.get("platform")), parent=descriptor["digest"])
            images[str(image.platform)] = image

        by_manifest = {image.manifest: key for key, image in images.items()}
        for subject, attestation in attestations.items():
            manifest = self.load(attestation, descriptor["digest"])
            config = manifest["config"]
            self.load_opaque(config, attestation["digest"])
            statements = tuple(self.load_opaque(layer, attestation["digest"]) for layer in manifest["layers"])
            key = by_manifest.get(subject)
            if key is None:
                raise LayoutReadError(f"attestation {attestation['digest']} refers to unknown manifest {subject}")
            image = images[key]
            images[key] = PlatformImage(
                platform=image.platform,
                manifest=image.manifest,
                config=image.config,
                layers=image.layers,
                diff_ids=image.diff_ids,
                attestation_manifest=attestation["digest"],
                attestation_config=config["digest"],
                statements=statements,
            )
        return images

    def visit_manifest(
        self, descriptor: dict[str, Any], platform: Platform | None, parent: str = "index.json"
    ) -> PlatformImage:
        manifest = self.load(descriptor, parent)
        config = json.loads(self.load_blob(manifest["config"], descriptor["digest"]))
        layers = tuple(self.load_opaque(layer, descriptor["digest"]) for layer in manifest["layers"])
        if platform is None:
            platform = Platform(config.get("os", ""), config.get("architecture", ""), config.get("variant"))
        return PlatformImage(
            platform=platform,
            manifest=descriptor["digest"],
            config=manifest["config"]["digest"],
            layers=layers,
            diff_ids=tuple(config.get("rootfs", {}).get("diff_ids", ())),
        )

    def load_blob(self, descriptor: dict[str, Any], parent: str) -> bytes:
        digest = descriptor["digest"]
        if digest not in self.blobs:
            raise LayoutReadError(f"blob {digest} referenced by {parent} is missing from {self.path}")
        self.media_types[digest] = descriptor["mediaType"]
        return self.blobs[digest]

    def load_opaque(self, descriptor: dict[str, Any], parent: str) -> str:
        self.load_blob(descriptor, parent)
        return str(descriptor["digest"])


def _platform(value: Any) -> Platform | None:
    if not isinstance(value, dict):
        return None
    return Platform(value.get("os", ""), value.get("architecture", ""), value.get("variant"))


def _image_names(entries: tuple[dict[str, Any], ...]) -> tuple[str, ...]:
    """Return the full image names of the entries: `io.containerd.image.name`, else a
    `ref.name` that is a full reference or a comma-joined list of them."""
    names: list[str] = []
    for entry in entries:
        annotations = entry.get("annotations") or {}
        if IMAGE_NAME in annotations:
            names.append(annotations[IMAGE_NAME])
            continue
        ref_name = annotations.get(REF_NAME, "")
        if "/" in ref_name:
            names.extend(part for part in ref_name.split(",") if part)
    return tuple(names)
