"""skopeo against the registry under test: copy an image to an `oci:` layout, inspect it.

Each call runs with a throwaway configuration directory that contains a policy accepting
anything, an empty registries.conf, an empty auth file and a temporary directory. Flags
and environment variables point skopeo there, so it reads no configuration from /etc or
the user's home.

NOTE: as root, skopeo 1.9.3 still keeps its blob-info cache under
/var/lib/containers/cache, because it has no option or variable to move it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.content import sha256_digest
from support.layout_reader import describe_layout
from support.layouts import LayoutDescription
from support.processes import child_environment, run_tool

SKOPEO_TIMEOUT = 120.0

_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


def skopeo_available() -> bool:
    return shutil.which("skopeo") is not None


@contextmanager
def skopeo_settings() -> Iterator[tuple[list[str], dict[str, str]]]:
    """Yield the global flags and the environment for one hermetic skopeo run."""
    with tempfile.TemporaryDirectory(prefix="stratus-skopeo-") as directory:
        root = Path(directory)
        (root / "policy.json").write_text(json.dumps(_POLICY))
        (root / "registries.conf").write_text("")
        (root / "auth.json").write_text('{"auths":{}}')
        (root / "registries.d").mkdir()
        (root / "tmp").mkdir()
        flags = [
            "--policy", str(root / "policy.json"),
            "--registries.d", str(root / "registries.d"),
            "--tmpdir", str(root / "tmp"),
        ]
        environment = child_environment({
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(root / "auth.json"),
            "TMPDIR": str(root / "tmp"),
        })
        yield flags, environment


def run_skopeo(
    arguments: Sequence[str],
    *,
    global_flags: Sequence[str] = (),
    timeout: float = SKOPEO_TIMEOUT,
) -> bytes:
    """Run `skopeo [global flags] arguments` hermetically and return its stdout."""
    with skopeo_settings() as (flags, environment):
        command = [
            "skopeo", *flags, "--command-timeout", f"{int(timeout)}s", *global_flags, *arguments
        ]
        return run_tool(command, timeout=timeout + 10, environment=environment).stdout


def image_reference(registry_host: str, repository: str, reference: str) -> str:
    """Return `docker://host/repository:tag`, or `...@digest` when `reference` is a digest."""
    separator = "@" if reference.startswith(("sha256:", "sha512:")) else ":"
    return f"docker://{registry_host}/{repository}{separator}{reference}"


@dataclass(frozen=True)
class PulledImage:
    """What `skopeo copy` wrote into an `oci:` layout, with the digests it recorded.

    `digest` is the digest of the index.json entry skopeo wrote for `tag`, and
    `manifest_bytes` the blob under it. skopeo converts Docker schema 2 manifests to OCI
    when it writes an `oci:` layout, so compare Docker-typed images through
    skopeo_inspect_raw instead.
    """

    layout_path: Path
    tag: str
    index_json: bytes
    entry: dict[str, Any]
    manifest_bytes: bytes
    layout: LayoutDescription

    @property
    def digest(self) -> str:
        return str(self.entry["digest"])

    @property
    def media_type(self) -> str:
        return str(self.entry["mediaType"])


def skopeo_copy_from_registry(
    registry_host: str,
    repository: str,
    reference: str,
    destination: Path,
    *,
    tag: str = "pulled",
    all_platforms: bool = False,
    preserve_digests: bool = False,
    override_os: str | None = None,
    override_arch: str | None = None,
    override_variant: str | None = None,
    timeout: float = SKOPEO_TIMEOUT,
) -> PulledImage:
    """Copy `repository:reference` (tag or digest) from the registry over plain HTTP into
    the `oci:` layout `destination`, tagged `tag` there.

    Without `all_platforms`, skopeo picks one platform of an index (the `override_*`
    values, else the machine's). Raises ToolError with skopeo's output on failure.
    """
    global_flags: list[str] = []
    for flag, value in (("--override-os", override_os), ("--override-arch", override_arch),
                        ("--override-variant", override_variant)):
        if value is not None:
            global_flags += [flag, value]
    arguments = ["copy", "--src-tls-verify=false", "--retry-times", "0"]
    if all_platforms:
        arguments.append("--all")
    if preserve_digests:
        arguments.append("--preserve-digests")
    arguments += [image_reference(registry_host, repository, reference), f"oci:{destination}:{tag}"]
    run_skopeo(arguments, global_flags=global_flags, timeout=timeout)

    index_json = (destination / "index.json").read_bytes()
    entries = json.loads(index_json).get("manifests") or []
    tagged = [entry for entry in entries if (entry.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if not tagged:
        raise AssertionError(f"skopeo wrote no index.json entry for {tag!r} in {destination}: {index_json!r}")
    entry = tagged[0]
    algorithm, _, encoded = entry["digest"].partition(":")
    manifest_bytes = (destination / "blobs" / algorithm / encoded).read_bytes()
    return PulledImage(
        layout_path=destination,
        tag=tag,
        index_json=index_json,
        entry=entry,
        manifest_bytes=manifest_bytes,
        layout=describe_layout(destination, ref_name=tag),
    )


def skopeo_inspect_raw(
    registry_host: str, repository: str, reference: str, *, timeout: float = SKOPEO_TIMEOUT
) -> tuple[bytes, str]:
    """Return the manifest bytes the registry serves for `reference`, and their sha256 digest."""
    raw = run_skopeo(
        ["inspect", "--raw", "--tls-verify=false", "--retry-times", "0",
         image_reference(registry_host, repository, reference)],
        timeout=timeout,
    )
    return raw, sha256_digest(raw)


def skopeo_inspect(
    registry_host: str,
    repository: str,
    reference: str,
    *,
    override_os: str | None = None,
    override_arch: str | None = None,
    timeout: float = SKOPEO_TIMEOUT,
) -> dict[str, Any]:
    """Return `skopeo inspect` output (Digest, Architecture, Layers...), which also fetches
    the config blob through the registry's redirect."""
    global_flags: list[str] = []
    if override_os is not None:
        global_flags += ["--override-os", override_os]
    if override_arch is not None:
        global_flags += ["--override-arch", override_arch]
    output = run_skopeo(
        ["inspect", "--tls-verify=false", "--retry-times", "0",
         image_reference(registry_host, repository, reference)],
        global_flags=global_flags,
        timeout=timeout,
    )
    result: dict[str, Any] = json.loads(output)
    return result


def skopeo_list_tags(registry_host: str, repository: str, *, timeout: float = SKOPEO_TIMEOUT) -> list[str]:
    output = run_skopeo(
        ["list-tags", "--tls-verify=false", "--retry-times", "0", f"docker://{registry_host}/{repository}"],
        timeout=timeout,
    )
    tags: list[str] = json.loads(output)["Tags"]
    return tags
