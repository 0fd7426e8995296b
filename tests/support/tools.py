"""Layouts built by real tools instead of the generator: umoci and skopeo.

umoci 0.4.7 writes index.json without a top-level `mediaType`, manifests without a
`mediaType` field, files with mode 0600, and keeps superseded blobs. skopeo writes
index.json with only `schemaVersion` and `manifests`, and `ref.name` is whatever follows
the path's colon. Tests use these to check that Stratus accepts layouts it did not shape.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from support.layout_reader import describe_layout
from support.layouts import SOURCE_DATE_EPOCH, LayoutDescription
from support.processes import run_tool
from support.skopeo import run_skopeo

UMOCI_TIMEOUT = 60.0

DEFAULT_ROOTFS_FILES = {
    "app/hello.txt": b"hello from umoci\n",
    "etc/os-release": b"NAME=stratus-test-umoci\n",
}


def umoci_available() -> bool:
    return shutil.which("umoci") is not None


def build_umoci_layout(
    layout_path: Path, tag: str = "1.0", files: Mapping[str, bytes] | None = None
) -> LayoutDescription:
    """Create an OCI layout at `layout_path` holding one single-platform image tagged `tag`,
    whose one layer contains `files` (path relative to / -> content)."""
    files = DEFAULT_ROOTFS_FILES if files is None else files
    image = f"{layout_path}:{tag}"
    run_tool(["umoci", "init", "--layout", str(layout_path)], timeout=UMOCI_TIMEOUT)
    run_tool(["umoci", "new", "--image", image], timeout=UMOCI_TIMEOUT)

    with tempfile.TemporaryDirectory(prefix="stratus-umoci-") as directory:
        rootfs = Path(directory)
        for relative, content in files.items():
            target = rootfs / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        for path in sorted(rootfs.rglob("*"), reverse=True):
            os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
        for top_level in sorted(rootfs.iterdir()):
            run_tool(
                ["umoci", "insert", "--image", image, str(top_level), f"/{top_level.name}"],
                timeout=UMOCI_TIMEOUT,
            )

    run_tool(
        ["umoci", "config", "--image", image, "--config.cmd", "/app/hello.txt"],
        timeout=UMOCI_TIMEOUT,
    )
    return describe_layout(layout_path, ref_name=tag)


def tag_umoci_layout(layout_path: Path, tag: str, new_tag: str) -> LayoutDescription:
    """Add `new_tag` (any string umoci accepts, a full reference too) to the image at `tag`."""
    run_tool(["umoci", "tag", "--image", f"{layout_path}:{tag}", new_tag], timeout=UMOCI_TIMEOUT)
    return describe_layout(layout_path, ref_name=new_tag)


def skopeo_copy_layout(
    source: Path,
    source_ref: str | None,
    destination: Path,
    destination_ref: str,
    *,
    all_platforms: bool = False,
    preserve_digests: bool = False,
) -> LayoutDescription:
    """Copy `oci:source[:source_ref]` to `oci:destination:destination_ref` with skopeo and
    describe the result, which carries skopeo's index.json and file modes."""
    source_name = f"oci:{source}" if source_ref is None else f"oci:{source}:{source_ref}"
    arguments = ["copy", "--retry-times", "0"]
    if all_platforms:
        arguments.append("--all")
    if preserve_digests:
        arguments.append("--preserve-digests")
    run_skopeo([*arguments, source_name, f"oci:{destination}:{destination_ref}"])
    return describe_layout(destination, ref_name=destination_ref)
