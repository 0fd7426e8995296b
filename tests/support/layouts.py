"""Generated OCI image layouts with real content, in the shapes BuildKit writes them.

    spec = LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT, buildkit=(0, 32))
    layout = generate_layout(tmp_path / "image.tar", spec)
    layout.digest, layout.nested_index, layout.manifests["linux/arm64"], layout.blobs[...]

Layers are real gzip (or zstd) tars with a few small files, configs carry the layers'
diff_ids, and every document is formatted as BuildKit formats it, so digests behave as
they do with real images. The shapes follow BuildKit's exporters at the versions named
in SHAPES:

- Manifests, nested indexes and attestation manifests are Go's json.MarshalIndent
  output with two spaces and no trailing newline. Configs, statements, index.json and
  oci-layout are compact.
- index.json has a top-level `mediaType` from v0.14, and `platform` on a bare
  single-platform manifest from v0.11. A tarball has one entry per `-t` name (tag-only
  `ref.name` plus `io.containerd.image.name`), or one entry with only
  `org.opencontainers.image.created` when the build had no name.
- Directory output (`tar=false`) has an empty `ingest/`. From v0.19 it has one entry per
  name with a tag-only `ref.name`. Before v0.19 it has one entry whose `ref.name` is the
  full names joined by commas. Without a name, `ref.name` is `latest`.
- A multi-platform or attested build is one entry pointing at a nested index. That index
  lists the platform manifests, then one attestation manifest per platform
  (`unknown/unknown`, `vnd.docker.reference.*` annotations). Attestations take the legacy
  image-config form, or from v0.32 the OCI-artifact form with `artifactType`, `subject`
  and the 2-byte `{}` config blob.
- A tarball is plain tar with entries sorted by name and no prefix: directories 0755,
  blobs 0444, index.json 0644, oci-layout 0444, uid/gid 0, mtime 0.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from support.content import (
    digest_of,
    go_json,
    gzip_bytes,
    layer_tar,
    pseudo_random_bytes,
    zstd_bytes,
)

# Media types, spelled out here rather than imported, so that a typo in the code under
# test cannot hide in the fixtures.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
IN_TOTO = "application/vnd.in-toto+json"
ATTESTATION_ARTIFACT_TYPE = "application/vnd.docker.attestation.manifest.v1+json"
OCTET_STREAM = "application/octet-stream"

MANIFEST_MEDIA_TYPES = frozenset({OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
CREATED = "org.opencontainers.image.created"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
REFERENCE_TYPE = "vnd.docker.reference.type"
PREDICATE_TYPE = "in-toto.io/predicate-type"

# The OCI empty descriptor's blob: the two bytes `{}`.
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
OCI_LAYOUT_BYTES = b'{"imageLayoutVersion":"1.0.0"}'

TARBALL = "tarball"
DIRECTORY = "directory"
LEGACY = "legacy"
ARTIFACT = "artifact"
OCI_TYPES = "oci"
DOCKER_TYPES = "docker"

# 2025-06-01T12:00:00Z, the build time of every generated image.
SOURCE_DATE_EPOCH = 1748779200
CREATED_TIME = "2025-06-01T12:00:00Z"


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        """Return the platform object in Go struct order (architecture, os, variant)."""
        document = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            document["variant"] = self.variant
        return document

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
ARM_V7 = Platform("linux", "arm", "v7")
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}


@dataclass(frozen=True, slots=True)
class LayoutSpec:
    """What to build, in the terms of a `docker buildx build` run.

    names                  the `-t` values, normalized as BuildKit does
    buildkit               the (major, minor) BuildKit version whose output shape to copy
    attestations           LEGACY, ARTIFACT or None
    multi_platform         a nested index even for a single platform
    zstd                   the app layer compressed with zstd, the base layer still gzip
    sha512_layer           a sha512 digest for the base layer (skopeo 1.9.3 cannot copy it)
    unreferenced_blob      one extra blob that nothing references
    docker_manifest_json   the `manifest.json` that `type=docker` adds
    app_payload_size       that many incompressible bytes added to the app layer
    """

    platforms: tuple[Platform, ...] = (AMD64,)
    names: tuple[str, ...] = ("myapp:1.0",)
    buildkit: tuple[int, int] = (0, 32)
    output: str = TARBALL
    attestations: str | None = None
    multi_platform: bool = False
    media_types: str = OCI_TYPES
    zstd: bool = False
    sha512_layer: bool = False
    unreferenced_blob: bool = False
    docker_manifest_json: bool = False
    app_payload_size: int = 0

    def __post_init__(self) -> None:
        if not self.platforms:
            raise ValueError("a layout needs at least one platform")
        if self.output not in (TARBALL, DIRECTORY):
            raise ValueError(f"output must be {TARBALL!r} or {DIRECTORY!r}, not {self.output!r}")
        if self.media_types not in (OCI_TYPES, DOCKER_TYPES):
            raise ValueError(f"media_types must be {OCI_TYPES!r} or {DOCKER_TYPES!r}")
        if self.attestations not in (None, LEGACY, ARTIFACT):
            raise ValueError(f"attestations must be None, {LEGACY!r} or {ARTIFACT!r}")
        if self.attestations and self.media_types == DOCKER_TYPES:
            raise ValueError("BuildKit rejects attestations together with Docker media types")
        if self.attestations and self.buildkit < (0, 11):
            raise ValueError("BuildKit writes attestations from v0.11 on")
        if self.docker_manifest_json and self.has_nested_index:
            raise ValueError("manifest.json exists only for an image with a single manifest")

    @property
    def has_nested_index(self) -> bool:
        return len(self.platforms) > 1 or self.multi_platform or self.attestations is not None


# Named shapes, one per case of BuildKit's and buildx's output that a consumer must handle.
SHAPES: dict[str, LayoutSpec] = {
    "single-v0.14-tarball": LayoutSpec(buildkit=(0, 14)),
    "single-v0.11-tarball": LayoutSpec(buildkit=(0, 11)),
    "single-v0.10-tarball": LayoutSpec(buildkit=(0, 10)),
    "multi-platform-legacy-attestations": LayoutSpec(
        platforms=(AMD64, ARM64), attestations=LEGACY, buildkit=(0, 27)
    ),
    "multi-platform-artifact-attestations": LayoutSpec(
        platforms=(AMD64, ARM64), attestations=ARTIFACT, buildkit=(0, 32)
    ),
    "single-platform-artifact-attestation": LayoutSpec(attestations=ARTIFACT, buildkit=(0, 32)),
    "several-names": LayoutSpec(names=("myapp:1.0", "ghcr.io/acme/myapp:1.0")),
    "no-name": LayoutSpec(names=()),
    "directory-v0.19": LayoutSpec(
        output=DIRECTORY, buildkit=(0, 19), names=("myapp:1.0", "myapp:latest")
    ),
    "directory-v0.19-no-name": LayoutSpec(output=DIRECTORY, buildkit=(0, 19), names=()),
    "directory-v0.14": LayoutSpec(
        output=DIRECTORY, buildkit=(0, 14), names=("myapp:1.0", "myapp:latest")
    ),
    "docker-manifest-list": LayoutSpec(
        platforms=(AMD64, ARM64), media_types=DOCKER_TYPES, buildkit=(0, 30)
    ),
    "docker-single-with-manifest-json": LayoutSpec(
        media_types=DOCKER_TYPES, buildkit=(0, 30), docker_manifest_json=True
    ),
    "zstd-mixed-with-gzip": LayoutSpec(zstd=True, platforms=(AMD64, ARM_V7), multi_platform=True),
    "unreferenced-blob": LayoutSpec(unreferenced_blob=True),
    "sha512-layer": LayoutSpec(sha512_layer=True),
}


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """The blobs of one platform's image, by digest."""

    platform: Platform
    manifest: str
    config: str
    layers: tuple[str, ...]
    diff_ids: tuple[str, ...]
    attestation_manifest: str | None = None
    attestation_config: str | None = None
    statements: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayoutDescription:
    """A layout on disk and everything in it.

    descriptor    the image's top-level descriptor, without annotations
    entries       index.json's entries for this image, as written
    images        "os/arch[/variant]" -> that platform's blobs
    blobs         digest -> bytes of every blob in the layout, unreferenced ones included
    media_types   digest -> media type, for each blob the image references
    """

    path: Path
    output: str
    index_json: bytes
    entries: tuple[dict[str, Any], ...]
    descriptor: dict[str, Any]
    names: tuple[str, ...]
    nested_index: str | None
    images: dict[str, PlatformImage]
    blobs: dict[str, bytes]
    media_types: dict[str, str]
    unreferenced: tuple[str, ...] = ()
    spec: LayoutSpec | None = None

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])

    @property
    def media_type(self) -> str:
        return str(self.descriptor["mediaType"])

    @property
    def size(self) -> int:
        return int(self.descriptor["size"])

    @property
    def ref_names(self) -> tuple[str, ...]:
        """Return the `org.opencontainers.image.ref.name` values of the entries, in order."""
        return tuple(
            entry["annotations"][REF_NAME]
            for entry in self.entries
            if REF_NAME in (entry.get("annotations") or {})
        )

    @property
    def manifests(self) -> dict[str, str]:
        return {key: image.manifest for key, image in self.images.items()}

    @property
    def attestation_manifests(self) -> dict[str, str]:
        return {
            key: image.attestation_manifest
            for key, image in self.images.items()
            if image.attestation_manifest is not None
        }

    @property
    def configs(self) -> dict[str, str]:
        return {key: image.config for key, image in self.images.items()}

    @property
    def layers(self) -> dict[str, tuple[str, ...]]:
        return {key: image.layers for key, image in self.images.items()}

    @property
    def referenced(self) -> frozenset[str]:
        """Return the digests reachable from the top-level descriptor."""
        return frozenset(self.media_types)

    def content_type(self, digest: str) -> str:
        """Return the Content-Type the bucket stores a blob with: its media type for manifests
        and indexes, application/octet-stream for everything else."""
        media_type = self.media_types.get(digest)
        return media_type if media_type in MANIFEST_MEDIA_TYPES else OCTET_STREAM


def normalize_name(name: str) -> str:
    """Return the fully qualified form BuildKit stores: `myapp` -> `docker.io/library/myapp:latest`."""
    first, slash, rest = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        domain, remainder = "docker.io", name
    else:
        domain, remainder = first, rest
    if domain == "docker.io" and "/" not in remainder:
        remainder = f"library/{remainder}"
    if "@" not in remainder and ":" not in remainder.rsplit("/", 1)[-1]:
        remainder += ":latest"
    return f"{domain}/{remainder}"


def tag_of(full_name: str) -> str:
    """Return the tag of a normalized name, the part containerd stores as `ref.name`."""
    return full_name.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def familiar_name(full_name: str) -> str:
    """Return the short form docker prints: `docker.io/library/myapp:1.0` -> `myapp:1.0`."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if full_name.startswith(prefix):
            return full_name[len(prefix):]
    return full_name


def generate_layout(path: Path, spec: LayoutSpec | None = None) -> LayoutDescription:
    """Build the image `spec` describes and write it as a tarball file or a directory at `path`."""
    spec = spec or LayoutSpec()
    builder = _Builder(spec)
    return builder.write(path)


@dataclass
class _Builder:
    spec: LayoutSpec
    blobs: dict[str, bytes] = field(default_factory=dict)
    media_types: dict[str, str] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.names = tuple(normalize_name(name) for name in self.spec.names)

    @property
    def docker_types(self) -> bool:
        return self.spec.media_types == DOCKER_TYPES

    def add(self, data: bytes, media_type: str | None, algorithm: str = "sha256") -> dict[str, Any]:
        """Store a blob and return its descriptor (mediaType, digest, size)."""
        digest = digest_of(data, algorithm)
        self.blobs[digest] = data
        if media_type is not None:
            self.media_types[digest] = media_type
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def write(self, path: Path) -> LayoutDescription:
        images = [self.build_platform_image(platform) for platform in self.spec.platforms]
        manifest_descriptors = [descriptor for descriptor, _ in images]
        platform_images = {str(image.platform): image for _, image in images}

        attestation_descriptors: list[dict[str, Any]] = []
        if self.spec.attestations:
            for descriptor, image in images:
                attestation, image = self.build_attestation(descriptor, image)
                attestation_descriptors.append(attestation)
                platform_images[str(image.platform)] = image

        nested_index: str | None = None
        if self.spec.has_nested_index:
            top = self.build_nested_index(manifest_descriptors + attestation_descriptors)
            nested_index = top["digest"]
        else:
            top = dict(manifest_descriptors[0])
            if self.spec.buildkit < (0, 11):
                top.pop("platform")

        unreferenced: tuple[str, ...] = ()
        if self.spec.unreferenced_blob:
            stale = gzip_bytes(layer_tar([("stale.txt", b"left over from an earlier build\n")], mtime=SOURCE_DATE_EPOCH))
            unreferenced = (self.add(stale, None)["digest"],)

        entries = tuple(self.index_entries(top))
        index_document: dict[str, Any] = {"schemaVersion": 2}
        if self.spec.buildkit >= (0, 14):
            index_document["mediaType"] = OCI_INDEX
        index_document["manifests"] = list(entries)
        index_json = go_json(index_document)

        files = {"index.json": index_json, "oci-layout": OCI_LAYOUT_BYTES}
        if self.spec.docker_manifest_json:
            files["manifest.json"] = self.docker_manifest_json(platform_images)
        if self.spec.output == TARBALL:
            _write_tarball(path, files, self.blobs)
        else:
            _write_directory(path, files, self.blobs)

        return LayoutDescription(
            path=path,
            output=self.spec.output,
            index_json=index_json,
            entries=entries,
            descriptor=top,
            names=self.names,
            nested_index=nested_index,
            images=platform_images,
            blobs=dict(self.blobs),
            media_types=dict(self.media_types),
            unreferenced=unreferenced,
            spec=self.spec,
        )

    def build_platform_image(self, platform: Platform) -> tuple[dict[str, Any], PlatformImage]:
        base_tar = layer_tar(
            [("etc/os-release", f"NAME=stratus-test-base\nARCH={platform}\n".encode())],
            mtime=SOURCE_DATE_EPOCH,
        )
        app_files = [("app/hello.txt", f"hello from {platform}\n".encode())]
        if self.spec.app_payload_size:
            payload = pseudo_random_bytes(self.spec.app_payload_size, f"payload {platform}")
            app_files.append(("app/payload.bin", payload))
        app_tar = layer_tar(app_files, mtime=SOURCE_DATE_EPOCH)

        gzip_type = DOCKER_LAYER_GZIP if self.docker_types else OCI_LAYER_GZIP
        zstd_type = DOCKER_LAYER_ZSTD if self.docker_types else OCI_LAYER_ZSTD
        base_algorithm = "sha512" if self.spec.sha512_layer else "sha256"
        base = self.add(gzip_bytes(base_tar), gzip_type, base_algorithm)
        if self.spec.zstd:
            app = self.add(zstd_bytes(app_tar), zstd_type)
        else:
            app = self.add(gzip_bytes(app_tar), gzip_type)
        diff_ids = (digest_of(base_tar), digest_of(app_tar))

        config = self.add(
            go_json(_image_config(platform, diff_ids)), DOCKER_CONFIG if self.docker_types else OCI_CONFIG
        )
        manifest_type = DOCKER_MANIFEST if self.docker_types else OCI_MANIFEST
        manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": config, "layers": [base, app]}
        descriptor = self.add(go_json(manifest, indent=True), manifest_type)
        descriptor["platform"] = platform.to_json()

        image = PlatformImage(
            platform=platform,
            manifest=descriptor["digest"],
            config=config["digest"],
            layers=(base["digest"], app["digest"]),
            diff_ids=diff_ids,
        )
        return descriptor, image

    def build_attestation(self, subject: dict[str, Any], image: PlatformImage) -> tuple[dict[str, Any], PlatformImage]:
        predicate_type = (
            "https://slsa.dev/provenance/v1" if self.spec.buildkit >= (0, 28) else "https://slsa.dev/provenance/v0.2"
        )
        statement = self.add(go_json(self.provenance_statement(image, predicate_type)), IN_TOTO)
        statement["annotations"] = {PREDICATE_TYPE: predicate_type}

        manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if self.spec.attestations == ARTIFACT:
            config = self.add(EMPTY_JSON, OCI_EMPTY)
            config["data"] = base64.b64encode(EMPTY_JSON).decode()
            manifest["artifactType"] = ATTESTATION_ARTIFACT_TYPE
            manifest["config"] = config
            manifest["layers"] = [statement]
            manifest["subject"] = {key: subject[key] for key in ("mediaType", "digest", "size")}
        else:
            legacy_config = {
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [statement["digest"]]},
            }
            config = self.add(go_json(legacy_config), OCI_CONFIG)
            manifest["config"] = config
            manifest["layers"] = [statement]

        descriptor = self.add(go_json(manifest, indent=True), OCI_MANIFEST)
        descriptor["annotations"] = {
            REFERENCE_DIGEST: subject["digest"],
            REFERENCE_TYPE: "attestation-manifest",
        }
        descriptor["platform"] = dict(UNKNOWN_PLATFORM)
        described = PlatformImage(
            platform=image.platform,
            manifest=image.manifest,
            config=image.config,
            layers=image.layers,
            diff_ids=image.diff_ids,
            attestation_manifest=descriptor["digest"],
            attestation_config=config["digest"],
            statements=(statement["digest"],),
        )
        return descriptor, described

    def provenance_statement(self, image: PlatformImage, predicate_type: str) -> dict[str, Any]:
        statement_type = (
            "https://in-toto.io/Statement/v1" if self.spec.buildkit >= (0, 31) else "https://in-toto.io/Statement/v0.1"
        )
        platform = quote(str(image.platform), safe="")
        subjects = []
        for name in self.names:
            repository, _, tag = familiar_name(name).rpartition(":")
            subjects.append({
                "name": f"pkg:docker/{repository}@{tag}?platform={platform}",
                "digest": {"sha256": image.manifest.removeprefix("sha256:")},
            })
        if predicate_type.endswith("/v1"):
            predicate: dict[str, Any] = {
                "buildDefinition": {
                    "buildType": "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md",
                    "externalParameters": {"request": {"frontend": "dockerfile.v0"}},
                },
                "runDetails": {"builder": {"id": ""}, "metadata": {"startedOn": CREATED_TIME}},
            }
        else:
            predicate = {
                "builder": {"id": ""},
                "buildType": "https://mobyproject.org/buildkit@v1",
                "invocation": {"parameters": {"frontend": "dockerfile.v0"}},
                "materials": [],
                "metadata": {"buildStartedOn": CREATED_TIME},
            }
        return {"_type": statement_type, "predicateType": predicate_type, "subject": subjects, "predicate": predicate}

    def build_nested_index(self, children: list[dict[str, Any]]) -> dict[str, Any]:
        index_type = DOCKER_MANIFEST_LIST if self.docker_types else OCI_INDEX
        ordered_children = [_descriptor_in_go_order(child) for child in children]
        document = {"schemaVersion": 2, "mediaType": index_type, "manifests": ordered_children}
        return self.add(go_json(document, indent=True), index_type)

    def index_entries(self, top: dict[str, Any]) -> list[dict[str, Any]]:
        """Return index.json's entries for `top` under the spec's names, output and version."""
        if self.spec.output == TARBALL:
            if not self.names:
                return [_entry(top, {CREATED: CREATED_TIME})]
            return [_entry(top, {IMAGE_NAME: name, CREATED: CREATED_TIME, REF_NAME: tag_of(name)}) for name in self.names]

        if self.spec.buildkit >= (0, 19):
            if not self.names:
                return [_entry(top, {CREATED: CREATED_TIME, REF_NAME: "latest"})]
            return [_entry(top, {IMAGE_NAME: name, CREATED: CREATED_TIME, REF_NAME: tag_of(name)}) for name in self.names]
        ref_name = ",".join(self.names) if self.names else "latest"
        return [_entry(top, {CREATED: CREATED_TIME, REF_NAME: ref_name})]

    def docker_manifest_json(self, images: Mapping[str, PlatformImage]) -> bytes:
        (image,) = images.values()
        repo_tags = [familiar_name(name) for name in self.names] or None
        record = {
            "Config": _blob_path(image.config),
            "RepoTags": repo_tags,
            "Layers": [_blob_path(layer) for layer in image.layers],
        }
        return go_json([record])


def _image_config(platform: Platform, diff_ids: tuple[str, str]) -> dict[str, Any]:
    """Return an image config with top-level keys sorted, as BuildKit re-marshals it, and
    nested objects in the frontend's struct order."""
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/app/hello.txt"],
            "WorkingDir": "/",
        },
        "created": CREATED_TIME,
        "history": [
            {"created": CREATED_TIME, "created_by": "/bin/sh -c #(nop) ADD file:os-release in / "},
            {"created": CREATED_TIME, "created_by": "COPY app /app # buildkit", "comment": "buildkit.dockerfile.v0"},
        ],
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if platform.variant:
        config["variant"] = platform.variant
    return dict(sorted(config.items()))


def _descriptor_in_go_order(descriptor: Mapping[str, Any]) -> dict[str, Any]:
    # image-spec's Descriptor struct: mediaType, digest, size, urls, annotations, data,
    # platform, artifactType. Annotations are a Go map, so their keys come out sorted.
    ordered: dict[str, Any] = {}
    for key in ("mediaType", "digest", "size", "urls", "annotations", "data", "platform", "artifactType"):
        if key in descriptor:
            value = descriptor[key]
            ordered[key] = dict(sorted(value.items())) if key == "annotations" else value
    return ordered


def _entry(top: Mapping[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    return _descriptor_in_go_order({**top, "annotations": annotations})


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def _write_directory(path: Path, files: Mapping[str, bytes], blobs: Mapping[str, bytes]) -> None:
    """Write a `tar=false` layout: blobs read-only (0444), documents 0644, empty ingest/."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "ingest").mkdir(exist_ok=True)
    for digest, data in blobs.items():
        blob_path = path / _blob_path(digest)
        blob_path.parent.mkdir(parents=True, exist_ok=True)
        blob_path.write_bytes(data)
        os.chmod(blob_path, 0o444)
    for name, data in files.items():
        (path / name).write_bytes(data)
        os.chmod(path / name, 0o644)


# Entry modes in BuildKit's tarball (containerd's archive exporter).
_TAR_MODES = {"index.json": 0o644, "manifest.json": 0o644, "oci-layout": 0o444}
_TAR_BLOB_MODE = 0o444
_TAR_DIRECTORY_MODE = 0o755
_TAR_BLOCK = 512


def _write_tarball(path: Path, files: Mapping[str, bytes], blobs: Mapping[str, bytes]) -> None:
    """Write the layout as BuildKit's plain tar: sorted entries, no prefix, mtime 0, root-owned.

    The archive ends after the two zero blocks, without padding to tarfile's 10 KiB
    record size, as Go's archive/tar writes it. Names too long for USTAR (sha512 blobs)
    get a PAX header, as in Go.
    """
    members: dict[str, tuple[int, bytes | None]] = {}
    for digest, data in blobs.items():
        blob_path = _blob_path(digest)
        algorithm_directory = blob_path.rsplit("/", 1)[0] + "/"
        members["blobs/"] = (_TAR_DIRECTORY_MODE, None)
        members[algorithm_directory] = (_TAR_DIRECTORY_MODE, None)
        members[blob_path] = (_TAR_BLOB_MODE, data)
    for name, data in files.items():
        members[name] = (_TAR_MODES[name], data)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as archive:
        for name in sorted(members):
            mode, data = members[name]
            entry = tarfile.TarInfo(name)
            entry.mode = mode
            entry.mtime = 0
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = ""
            if data is None:
                entry.type = tarfile.DIRTYPE
                entry.size = 0
            else:
                entry.type = tarfile.REGTYPE
                entry.size = len(data)
            archive.write(entry.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            if data:
                archive.write(data)
                archive.write(b"\0" * (-len(data) % _TAR_BLOCK))
        archive.write(b"\0" * (2 * _TAR_BLOCK))


def is_read_only(path: Path) -> bool:
    return not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def load_layout_into_bucket(
    storage_or_client: Any,
    repository: str,
    layout: LayoutDescription,
    tag: str,
    *,
    bucket: str | None = None,
    include_unreferenced: bool = False,
) -> dict[str, Any]:
    """Write a layout's image into the bucket under `repository` and tag it; return the entry.

    Registry tests use this in place of `stratus push`. Every referenced blob goes to
    `<prefix>/blobs/<algorithm>/<hex>` (children before parents), with the media type as
    Content-Type for manifests and indexes and application/octet-stream otherwise, then
    `oci-layout`, then index.json with this image's entry first, `ref.name` set to `tag`,
    and older entries of that tag dropped. `storage_or_client` is a stratus Storage or a
    botocore S3 client, which needs `bucket`.
    """
    from stratus.oci.reference import parse_digest
    from stratus.storage.keys import blob_key, index_key, layout_key

    bucket_objects = _BucketObjects(storage_or_client, bucket)

    digests = set(layout.referenced)
    if include_unreferenced:
        digests.update(layout.unreferenced)
    for digest in sorted(digests, key=lambda item: _upload_rank(layout.media_types.get(item))):
        key = blob_key(repository, parse_digest(digest))
        bucket_objects.put(key, layout.blobs[digest], layout.content_type(digest))
    bucket_objects.put(layout_key(repository), OCI_LAYOUT_BYTES, "application/json")

    entry = dict(layout.entries[0]) if layout.entries else dict(layout.descriptor)
    entry["annotations"] = {**(entry.get("annotations") or {}), REF_NAME: tag}
    existing = bucket_objects.get(index_key(repository))
    if existing is None:
        document: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    else:
        document = json.loads(existing)
    kept = [
        old for old in document.get("manifests") or []
        if (old.get("annotations") or {}).get(REF_NAME) != tag
    ]
    document["manifests"] = [entry, *kept]
    bucket_objects.put(index_key(repository), go_json(document), OCI_INDEX)
    return entry


def _upload_rank(media_type: str | None) -> int:
    if media_type in INDEX_MEDIA_TYPES:
        return 2
    if media_type in MANIFEST_MEDIA_TYPES:
        return 1
    return 0


class _BucketObjects:
    """Object put and get on either a stratus Storage or a botocore S3 client."""

    def __init__(self, storage_or_client: Any, bucket: str | None) -> None:
        self._target = storage_or_client
        self._is_client = hasattr(storage_or_client, "put_object")
        if self._is_client and bucket is None:
            raise ValueError("a botocore client needs the bucket name")
        self._bucket = bucket

    def put(self, key: str, body: bytes, content_type: str) -> None:
        if self._is_client:
            self._target.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=content_type)
        else:
            self._target.put(key, body, content_type=content_type)

    def get(self, key: str) -> bytes | None:
        if self._is_client:
            try:
                response = self._target.get_object(Bucket=self._bucket, Key=key)
            except self._target.exceptions.NoSuchKey:
                return None
            return bytes(response["Body"].read())

        from stratus.storage import NotFound

        try:
            return bytes(self._target.get(key, max_bytes=64 * 1024 * 1024).body)
        except NotFound:
            return None
