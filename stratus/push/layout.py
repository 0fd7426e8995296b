"""Reading an OCI image layout from a directory or from an uncompressed tarball, in place.

Both forms are reduced to the same thing: the bytes of `oci-layout` and `index.json`,
and for each blob a BlobSource, the byte range of the local file that contains it. For a
directory that is the whole blob file; for a tarball it is the member's data inside the
archive, so nothing is ever unpacked. Upload workers open the file and read their own
ranges from a BlobSource, which is small and picklable.

Only paths built from a valid digest (`blobs/<algorithm>/<hex>`) are looked up, so
stray files such as `ingest/`, `index.json.lock` or temporary files are never read.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import tarfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson

from stratus.oci.descriptor import Descriptor, InvalidDescriptor, parse_descriptor
from stratus.oci.reference import Digest
from stratus.push.errors import LayoutError

__all__ = ["BlobSource", "Layout", "LayoutIndex", "open_layout", "read_index_document"]

logger = logging.getLogger(__name__)

# The layout's own documents (oci-layout, index.json) are read whole. Real ones are a few
# KiB, so a larger file is rejected as the wrong file rather than read into memory.
MAX_LAYOUT_DOCUMENT_SIZE = 64 * 1024 * 1024

# Magic numbers of the compressed formats a user may hand over by mistake.
_COMPRESSION_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}

# Symbolic and hard links inside a tarball are followed at most this many times.
_MAX_LINK_HOPS = 16


@dataclass(frozen=True, slots=True)
class BlobSource:
    """A blob's location on disk: `size` bytes of the file `path`, starting at byte `offset`."""

    path: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class LayoutIndex:
    """The top-level descriptors of a layout's index.json, in file order."""

    descriptors: tuple[Descriptor, ...]


class Layout(ABC):
    """An opened layout. Use open_layout() to build one."""

    def __init__(self, path: str, description: str) -> None:
        self.path = path
        self.description = description

    @abstractmethod
    def read_document(self, name: str) -> bytes:
        """Return the bytes of a top-level file (`oci-layout`, `index.json`), or raise LayoutError."""

    @abstractmethod
    def find_blob(self, digest: Digest) -> BlobSource | None:
        """Return the blob's location, or None when the layout does not contain it."""

    def read_blob(self, digest: Digest, source: BlobSource) -> bytes:
        """Read a whole blob into memory, so only for manifests and other small blobs."""
        try:
            data = _read_range(source)
        except OSError as error:
            raise LayoutError(f"cannot read blob {digest} from {self.description}: {error.strerror}") from error
        if len(data) != source.size:
            raise LayoutError(
                f"blob {digest} in {self.description} ends after {len(data)} of {source.size} bytes"
            )
        return data


class DirectoryLayout(Layout):
    def read_document(self, name: str) -> bytes:
        path = os.path.join(self.path, name)
        try:
            # A FIFO or device under the name would block the read or never end.
            if os.path.exists(path) and not os.path.isfile(path):
                raise LayoutError(f"{name} of {self.description} is not a regular file")
            with open(path, "rb") as file:
                data = file.read(MAX_LAYOUT_DOCUMENT_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{self.description} has no {name}: not an OCI image layout") from None
        except OSError as error:
            raise LayoutError(f"cannot read {name} of {self.description}: {error.strerror}") from error
        if len(data) > MAX_LAYOUT_DOCUMENT_SIZE:
            raise LayoutError(f"{name} of {self.description} is larger than {MAX_LAYOUT_DOCUMENT_SIZE} bytes")
        return data

    def find_blob(self, digest: Digest) -> BlobSource | None:
        path = os.path.join(self.path, "blobs", digest.algorithm, digest.encoded)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise LayoutError(f"cannot read blob {digest} from {self.description}: {error.strerror}") from error
        if not stat.S_ISREG(status.st_mode):
            return None
        return BlobSource(path, 0, status.st_size)


class TarLayout(Layout):
    """A layout inside an uncompressed tarball, indexed once by member name."""

    def __init__(self, path: str, description: str) -> None:
        super().__init__(path, description)
        self._members = _index_tar_members(path, description)

    def read_document(self, name: str) -> bytes:
        source = self._find(name)
        if source is None:
            raise LayoutError(f"{self.description} has no {name}: not an OCI image layout")
        if source.size > MAX_LAYOUT_DOCUMENT_SIZE:
            raise LayoutError(f"{name} of {self.description} is larger than {MAX_LAYOUT_DOCUMENT_SIZE} bytes")
        try:
            return _read_range(source)
        except OSError as error:
            raise LayoutError(f"cannot read {name} of {self.description}: {error.strerror}") from error

    def find_blob(self, digest: Digest) -> BlobSource | None:
        return self._find(f"blobs/{digest.algorithm}/{digest.encoded}")

    def _find(self, name: str) -> BlobSource | None:
        for _ in range(_MAX_LINK_HOPS):
            member = self._members.get(name)
            if member is None:
                return None
            if member.isfile():
                return BlobSource(self.path, member.offset_data, member.size)
            if member.islnk():
                name = _normalize_member_name(member.linkname)
            elif member.issym():
                name = _normalize_member_name(posixpath.join(posixpath.dirname(name), member.linkname))
            else:
                return None
        raise LayoutError(f"{self.description}: too many links to follow for {name}")


def open_layout(path: str | os.PathLike[str]) -> Layout:
    """Open a layout directory or tarball, raising LayoutError when it is neither."""
    text = os.fspath(path)
    try:
        status = os.stat(text)
    except FileNotFoundError:
        raise LayoutError(f"layout {text} does not exist") from None
    except OSError as error:
        raise LayoutError(f"cannot open layout {text}: {error.strerror}") from error

    if stat.S_ISDIR(status.st_mode):
        return DirectoryLayout(text, f"layout directory {text}")
    if stat.S_ISREG(status.st_mode):
        return TarLayout(text, f"layout tarball {text}")
    raise LayoutError(f"layout {text} is neither a directory nor a tar file")


def read_index_document(layout: Layout) -> LayoutIndex:
    """Check `oci-layout` and parse `index.json` of a layout, raising LayoutError on any fault."""
    _check_layout_file(layout)

    data = layout.read_document("index.json")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise LayoutError(f"index.json of {layout.description} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise LayoutError(f"index.json of {layout.description} is not an image index with schemaVersion 2")

    # umoci 0.4 writes "manifests": null for a layout with no image yet.
    entries = document.get("manifests")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise LayoutError(f"index.json of {layout.description}: manifests is not a list")

    descriptors: list[Descriptor] = []
    for position, entry in enumerate(entries):
        try:
            descriptors.append(parse_descriptor(entry))
        except InvalidDescriptor as error:
            raise LayoutError(f"index.json of {layout.description}: entry {position} is invalid: {error}") from None
    return LayoutIndex(tuple(descriptors))


def _check_layout_file(layout: Layout) -> None:
    # "The oci-layout file MUST be a JSON object" with "imageLayoutVersion" (image-spec
    # image-layout.md). Version 1.0.0 is the only one published; any 1.x is accepted.
    data = layout.read_document("oci-layout")
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise LayoutError(f"oci-layout of {layout.description} is not valid JSON: {error}") from None
    version = document.get("imageLayoutVersion") if isinstance(document, dict) else None
    if not isinstance(version, str):
        raise LayoutError(f"oci-layout of {layout.description} has no imageLayoutVersion")
    if version.split(".")[0] != "1":
        raise LayoutError(
            f"{layout.description} has imageLayoutVersion {version!r}; only version 1 layouts are supported"
        )


def _index_tar_members(path: str, description: str) -> dict[str, tarfile.TarInfo]:
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
            file_size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise LayoutError(f"cannot open layout {path}: {error.strerror}") from error
    for prefix, compression in _COMPRESSION_MAGIC.items():
        if magic.startswith(prefix):
            raise LayoutError(
                f"{description} is {compression}-compressed; decompress it first, "
                "because blobs are read in place from a plain tar"
            )

    members: dict[str, tarfile.TarInfo] = {}
    try:
        # Mode "r:" reads plain tar only, with PAX and GNU long names; the archive is
        # only indexed here, and member data is never extracted.
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                name = _normalize_member_name(member.name)
                if not name:
                    continue
                if member.isfile() and member.offset_data + member.size > file_size:
                    raise LayoutError(
                        f"{description} is truncated: member {member.name} needs "
                        f"{member.offset_data + member.size} bytes but the file has {file_size}"
                    )
                if member.issparse():
                    raise LayoutError(f"{description}: member {member.name} is a sparse file, which is not supported")
                # A later member of the same name replaces the earlier one, as on extraction.
                members[name] = member
    except tarfile.ReadError as error:
        raise LayoutError(f"{description} is not a readable tar archive (truncated or corrupt): {error}") from error
    except OSError as error:
        raise LayoutError(f"cannot read layout {path}: {error.strerror}") from error
    if not members:
        raise LayoutError(f"{description} is an empty tar archive")
    return members


def _read_range(source: BlobSource) -> bytes:
    with open(source.path, "rb") as file:
        file.seek(source.offset)
        return file.read(source.size)


def _normalize_member_name(name: str) -> str:
    """Strip `./` and `/` prefixes and redundant separators, so `./blobs/x` finds `blobs/x`."""
    normalized = posixpath.normpath("/" + name).lstrip("/")
    return "" if normalized == "." else normalized
