"""Splitting a blob into the parts of an S3 multipart upload.

S3 limits, from https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html:
at most 10,000 parts, each from 5 MiB to 5 GiB except the last, which may be smaller,
and objects of at most 5 TiB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MULTIPART_THRESHOLD",
    "DEFAULT_PART_SIZE",
    "MAX_OBJECT_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "PartRange",
    "choose_part_size",
    "plan_parts",
]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
GIB = 1024 * MIB

MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024 * GIB

# The defaults of boto3's s3transfer: blobs up to 8 MiB go up in one PUT, larger ones in 8 MiB parts.
DEFAULT_MULTIPART_THRESHOLD = 8 * MIB
DEFAULT_PART_SIZE = 8 * MIB


@dataclass(frozen=True, slots=True)
class PartRange:
    """Part `number` (from 1) of a blob: `length` bytes from `offset` within the blob."""

    number: int
    offset: int
    length: int


def choose_part_size(size: int, preferred: int, *, min_part_size: int = MIN_PART_SIZE) -> int:
    """Return the part size for a blob of `size` bytes: `preferred`, raised where needed.

    The result is at least `min_part_size` and large enough that the blob needs no more
    than MAX_PARTS parts (rounded up to a whole MiB when it had to grow). Raises
    ValueError for a blob larger than MAX_OBJECT_SIZE or for a non-positive size setting.
    """
    if preferred < 1 or min_part_size < 1:
        raise ValueError(f"part sizes must be positive, got {preferred} and minimum {min_part_size}")
    if size > MAX_OBJECT_SIZE:
        raise ValueError(f"{size} bytes is more than the S3 object size limit of {MAX_OBJECT_SIZE}")

    part_size = min(max(preferred, min_part_size), MAX_PART_SIZE)
    if -(-size // part_size) > MAX_PARTS:
        needed = -(-size // MAX_PARTS)
        part_size = -(-needed // MIB) * MIB
        logger.debug("Part size raised to %d bytes so that %d bytes fit in %d parts.", part_size, size, MAX_PARTS)
    return part_size


def plan_parts(size: int, preferred: int, *, min_part_size: int = MIN_PART_SIZE) -> list[PartRange]:
    """Split `size` bytes into contiguous parts of choose_part_size(); the last may be shorter."""
    part_size = choose_part_size(size, preferred, min_part_size=min_part_size)
    parts: list[PartRange] = []
    for number, offset in enumerate(range(0, size, part_size), start=1):
        parts.append(PartRange(number, offset, min(part_size, size - offset)))
    return parts
