"""The HTTP Range header for blob downloads sent by the registry itself (RFC 9110, section 14).

Only a single byte range is honoured. A header with several ranges, another unit or a
syntax error is ignored, which RFC 9110 allows, and the whole blob is sent.
"""

from __future__ import annotations

import re

from stratus.registry.errors import RangeNotSatisfiable

# Range units are case-insensitive. Positions longer than 19 digits exceed any object size.
_SINGLE_RANGE = re.compile(rb"bytes=(\d{0,19})-(\d{0,19})", re.IGNORECASE)


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """Return the (first, last) byte positions a Range header selects, or None for the whole blob.

    Raises RangeNotSatisfiable when the range starts past the end of the blob.
    """
    if header is None:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == b"":
        return None

    first_text, last_text = match.group(1), match.group(2)
    if size == 0:
        # No range of an empty blob contains a byte.
        raise RangeNotSatisfiable(size)
    if first_text == b"":
        # A suffix range: the last N bytes.
        suffix = int(last_text)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(size - suffix, 0), size - 1

    first = int(first_text)
    if first >= size:
        raise RangeNotSatisfiable(size)
    last = size - 1 if last_text == b"" else int(last_text)
    if last < first:
        return None
    return first, min(last, size - 1)
