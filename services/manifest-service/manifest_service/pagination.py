"""Pagination of listings (``n`` and ``last``, with a ``Link`` header to the next page), as in
the spec's "Listing Tags" and the reference registry's catalog."""

from __future__ import annotations

from urllib.parse import urlencode

from shared.errors import ErrorCode, RegistryError
from shared.settings import get_settings


def page_size(n: str | None) -> int:
    settings = get_settings()
    if n is None or n == "":
        return settings.default_page_size
    if not n.isdigit():
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, f"n must be a non-negative integer, not {n[:50]!r}"
        )
    value = int(n)
    if value > settings.max_page_size:
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            f"n may be at most {settings.max_page_size}, not {value}",
        )
    return value


def next_link(path: str, n: int, last: str) -> str:
    return f'<{path}?{urlencode({"n": n, "last": last})}>; rel="next"'
