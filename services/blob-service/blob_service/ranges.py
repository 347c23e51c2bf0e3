"""The byte ranges of HTTP: ``Range`` on blob GETs (RFC 9110 section 14.2) and the spec's
``Content-Range`` on upload chunks (``<start>-<end>``, inclusive)."""

from __future__ import annotations

import re

from shared.errors import ErrorCode, RegistryError, UploadRangeMismatch
from shared.numbers import DIGITS, INT64_MAX, NumberInvalid, parse_decimal

# Positions are ASCII digits only (shared.numbers): '٣' is no position.
_CHUNK_RANGE = re.compile(rf"(?:bytes[ =])?({DIGITS})-({DIGITS})(?:/(?:{DIGITS}|\*))?")
_BYTE_RANGE = re.compile(rf"bytes=({DIGITS})?-({DIGITS})?")
# A position past any blob's end: what a Range position beyond the largest size means.
_BEYOND = INT64_MAX + 1


def _position(digits: str) -> int:
    try:
        return parse_decimal(digits)
    except NumberInvalid:
        return _BEYOND


def parse_content_range(value: str) -> tuple[int, int]:
    """The inclusive ``(start, end)`` of an upload chunk's ``Content-Range``."""
    match = _CHUNK_RANGE.fullmatch(value.strip())
    malformed = UploadRangeMismatch(f"malformed Content-Range {value[:100]!r}")
    if not match:
        raise malformed
    try:
        start, end = parse_decimal(match[1]), parse_decimal(match[2])
    except NumberInvalid:
        raise malformed from None  # a position beyond any size
    if end < start:
        raise UploadRangeMismatch(f"Content-Range {value[:100]!r} ends before it starts")
    return start, end


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(start, end)`` that a ``Range`` header asks of a blob of ``size`` bytes.

    None means "send the whole blob": a header this server does not support (another unit,
    several ranges), which RFC 9110 lets a server ignore. An unsatisfiable range raises 416.
    """
    match = _BYTE_RANGE.fullmatch(value.strip())
    if not match or (match[1] is None and match[2] is None):
        return None
    unsatisfiable = RegistryError(
        ErrorCode.RANGE_INVALID,
        f"range {value[:100]!r} not satisfiable for a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if match[1] is None:  # the last N bytes
        suffix = _position(match[2])
        if suffix == 0:
            raise unsatisfiable
        if size == 0:
            return None  # RFC 9110 section 14.1.2: the whole (empty) representation
        return max(0, size - suffix), size - 1
    start = _position(match[1])
    end = _position(match[2]) if match[2] is not None else size - 1
    if match[2] is not None and end < start:
        return None  # syntactically invalid: ignored, per RFC 9110
    if start >= size:
        raise unsatisfiable
    return start, min(end, size - 1)
