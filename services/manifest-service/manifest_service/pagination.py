"""Pagination of listings (``n`` and ``last``, with a ``Link`` header to the next page), as in
the spec's "Listing Tags" and the reference registry's catalog."""

from __future__ import annotations

from urllib.parse import urlencode

from shared.errors import ErrorCode, RegistryError
from shared.numbers import NumberInvalid, parse_decimal
from shared.settings import get_settings


def page_size(n: str | None) -> int:
    settings = get_settings()
    if n is None or n == "":
        return settings.default_page_size
    try:
        return parse_decimal(n, settings.max_page_size)
    except NumberInvalid:
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            f"n must be a whole number of ASCII digits from 0 to {settings.max_page_size}, "
            f"not {n[:50]!r}",
        ) from None


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'
