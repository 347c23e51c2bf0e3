"""The byte ranges of HTTP: ``Range`` on blob GETs (RFC 9110 section 14.2) and the spec's
``Content-Range`` on upload chunks (``<start>-<end>``, inclusive)."""

from __future__ import annotations

import re

from shared.errors import ErrorCode, RegistryError

_CHUNK_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_content_range(value: str) -> tuple[int, int]:
    """The inclusive ``(start, end)`` of an upload chunk's ``Content-Range``."""
    match = _CHUNK_RANGE.fullmatch(value.strip())
    if not match:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID, f"malformed Content-Range {value[:100]!r}", status=416
        )
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"Content-Range {value!r} ends before it starts",
            status=416,
        )
    return start, end


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` that a ``Range`` header asks of a blob of ``size`` bytes.

    None means "send the whole blob": a header this server does not support (another unit,
    several ranges), which RFC 9110 lets a server ignore. An unsatisfiable range raises 416.
    """
    match = _BYTE_RANGE.fullmatch(value.strip())
    if not match or (not match[1] and not match[2]):
        return None
    unsatisfiable = RegistryError(
        ErrorCode.RANGE_INVALID,
        f"range {value[:100]!r} not satisfiable for a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not match[1]:  # the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - suffix), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if match[2] and end < start:
        return None  # syntactically invalid: ignored, per RFC 9110
    if start >= size:
        raise unsatisfiable
    return start, min(end, size - 1)
