"""Blob content for generated layouts: Go-style JSON, deterministic tar layers, gzip and zstd.

Everything here is a pure function of its arguments, so a generated layout has the same
digests on every run with the same zlib.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from typing import Any

# Go's encoding/json escapes these inside strings by default (HTML-safe output), and
# BuildKit writes every document through it.
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}

# zstd frame format, RFC 8878 section 3.1.1.
_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_ZSTD_MAX_BLOCK_SIZE = 128 * 1024
# Frame_Header_Descriptor: Frame_Content_Size_Flag 2 (a 4-byte size field) and
# Single_Segment_Flag set, so no Window_Descriptor follows and no checksum is appended.
_ZSTD_FRAME_DESCRIPTOR = 0b1010_0000
_ZSTD_RAW_BLOCK = 0


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def go_json(value: Any, *, indent: bool = False) -> bytes:
    """Encode like Go's json.Marshal, or json.MarshalIndent(v, "", "  ") with `indent`.

    Keys keep the order of the dicts given, which callers build in Go struct order (or
    sorted, for Go maps). No trailing newline is written, as with BuildKit.
    """
    if indent:
        text = json.dumps(value, indent=2, separators=(",", ": "), ensure_ascii=False)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for character, escape in _GO_ESCAPES.items():
        text = text.replace(character, escape)
    return text.encode()


def layer_tar(files: Sequence[tuple[str, bytes]], *, mtime: int) -> bytes:
    """Return an uncompressed layer tar holding `files` (path, content) and their parent
    directories, owned by root, with every timestamp set to `mtime`."""
    buffer = io.BytesIO()
    written_directories: set[str] = set()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, content in files:
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth]) + "/"
                if directory not in written_directories:
                    written_directories.add(directory)
                    archive.addfile(_tar_entry(directory, tarfile.DIRTYPE, 0o755, 0, mtime))
            archive.addfile(_tar_entry(path, tarfile.REGTYPE, 0o644, len(content), mtime), io.BytesIO(content))
    return buffer.getvalue()


def _tar_entry(name: str, kind: bytes, mode: int, size: int, mtime: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.mode = mode
    entry.size = size
    entry.mtime = mtime
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    return entry


def gzip_bytes(data: bytes) -> bytes:
    """Compress with gzip, with no file name and mtime 0 in the header."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def zstd_bytes(data: bytes) -> bytes:
    """Return a valid zstd frame of raw (stored) blocks holding `data`.

    Any zstd decoder reads it. It is not compressed, which keeps the tests free of a zstd
    library and the output identical everywhere.
    """
    if len(data) >= 2**32:
        raise ValueError("zstd_bytes writes a 4-byte content size, so data must be under 4 GiB")
    frame = bytearray(_ZSTD_MAGIC)
    frame.append(_ZSTD_FRAME_DESCRIPTOR)
    frame += len(data).to_bytes(4, "little")

    chunks = [data[start:start + _ZSTD_MAX_BLOCK_SIZE] for start in range(0, len(data), _ZSTD_MAX_BLOCK_SIZE)]
    if not chunks:
        chunks = [b""]
    for position, chunk in enumerate(chunks):
        is_last = position == len(chunks) - 1
        # Block_Header, 3 bytes little-endian: Last_Block bit, Block_Type (2 bits), Block_Size.
        header = (len(chunk) << 3) | (_ZSTD_RAW_BLOCK << 1) | int(is_last)
        frame += header.to_bytes(3, "little")
        frame += chunk
    return bytes(frame)


def pseudo_random_bytes(size: int, seed: str) -> bytes:
    """Return `size` incompressible bytes that depend only on `seed`."""
    return random.Random(seed).randbytes(size)
