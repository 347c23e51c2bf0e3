"""Numbers a client sends: ASCII decimal digits and nothing else.

Every number the registry reads from a request (``n`` of the listings, ``Range`` and
``Content-Range`` positions, ``Content-Length``) goes through :func:`parse_decimal`. Python's
own tests are wider than HTTP's grammar (RFC 9110: ``1*DIGIT``, and DIGIT is 0-9):
``str.isdigit()`` is true for '²' and '①', which ``int()`` then refuses with ValueError (a
500 where it was not caught); ``int()`` reads any Unicode decimal digit ('٣', ARABIC-INDIC
DIGIT THREE, is 3), and also takes a sign, surrounding white space and underscores
('+1_0 ' is 10). None of those is a number here.

The values are sizes and offsets: at most :data:`INT64_MAX`, the spec's and the reference
registry's limit (sizes are int64), so that no number of thousands of digits reaches
``int()`` either.
"""

from __future__ import annotations

import datetime as dt
import re

INT64_MAX = 2**63 - 1

# The pattern of one number, for the parsers that match a whole header (ranges): [0-9], never
# \d, which matches every Unicode decimal digit in a str pattern.
DIGITS = "[0-9]+"
_DIGITS = re.compile(DIGITS)


class NumberInvalid(ValueError):
    """Not a decimal number of ASCII digits, or larger than the caller allows."""


def is_decimal(text: str) -> bool:
    """True when ``text`` is one or more ASCII digits, and nothing else."""
    return _DIGITS.fullmatch(text) is not None


def parse_decimal(text: str, maximum: int = INT64_MAX) -> int:
    """The value of ``text``, one or more ASCII digits (leading zeros allowed), at most
    ``maximum``; NumberInvalid otherwise."""
    if not is_decimal(text):
        raise NumberInvalid(f"not a decimal number: {text[:40]!r}")
    significant = text.lstrip("0") or "0"
    # Lengths first: int() of thousands of digits is slow, and then refused.
    value = int(significant) if len(significant) <= len(str(maximum)) else None
    if value is None or value > maximum:
        raise NumberInvalid(f"{text[:40]} is larger than {maximum}")
    return value


_DURATION = re.compile(r"([0-9]+)([smhdw]?)")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` or ``1w`` (an operator's, in a command or a
    file); ValueError when it is none of those."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 30s, 15m, 24h, 7d)")
    try:
        return dt.timedelta(seconds=parse_decimal(match[1]) * _DURATION_UNITS[match[2] or "s"])
    except (NumberInvalid, OverflowError):
        raise ValueError(f"not a duration: {text!r} (try 30s, 15m, 24h, 7d)") from None
