"""Every number a client sends is ASCII digits, and nothing else: ``shared.numbers`` and each
parser that reads a number with it, against all of Unicode (``n`` of the listings, ``Range``
and ``Content-Range`` positions, a manifest PUT's ``Content-Length``).

Python's own tests are wider: ``str.isdigit()`` is true for '²' and '①' (``int()`` then
raises), and ``int()`` reads '٣' (ARABIC-INDIC DIGIT THREE) as 3, and takes signs, spaces and
underscores. A parser that trusts either answers 500, or a number the client never wrote.
"""

from __future__ import annotations

import argparse
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blob_service.ranges import parse_content_range, parse_range
from manifest_service.pagination import page_size
from shared.errors import ErrorCode, RegistryError
from shared.numbers import INT64_MAX, NumberInvalid, is_decimal, parse_decimal
from shared.settings import get_settings

ASCII_NUMBER = re.compile("[0-9]+", re.ASCII)
# The findings: isdigit() but not int() (superscript two, circled one); int() reads them as 3
# and 1 (Arabic-Indic three, fullwidth one).
LOOK_LIKE_DIGITS = ["\u00b2", "\u2460", "\u0663", "\uff11"]

# Every character Python takes for a digit of some kind, but 0-9: what a parser must refuse.
UNICODE_DIGITS = [
    c
    for c in map(chr, range(sys.maxunicode + 1))
    if (c.isdigit() or c.isdecimal() or c.isnumeric()) and not "0" <= c <= "9"
]
# What int() forgives around a number.
FORGIVEN = ["+", "-", " ", "\t", "\n", "_", "\u00a0", "\u2003"]

any_text = st.text(max_size=30)  # any code point, surrogates and all
numberish = st.lists(
    st.one_of(
        st.sampled_from("0123456789"),
        st.sampled_from(UNICODE_DIGITS),
        st.sampled_from(FORGIVEN),
    ),
    min_size=1,
    max_size=25,
).map("".join)
texts = any_text | numberish | st.integers(0, 10**25).map(str)


def test_every_unicode_digit_but_0_to_9_is_known() -> None:
    others = ["\u09ea", "\u00bc", "\u216b", "\U0001d7d9"]  # Bengali 4, 1/4, XII, double-struck 1
    assert set(LOOK_LIKE_DIGITS + others) <= set(UNICODE_DIGITS)


@given(texts)
def test_a_number_is_ascii_digits_and_nothing_else(text: str) -> None:
    assert is_decimal(text) == (ASCII_NUMBER.fullmatch(text) is not None)
    try:
        value = parse_decimal(text)
    except NumberInvalid:
        assert not is_decimal(text) or int(text) > INT64_MAX
        return
    assert is_decimal(text)
    assert value == int(text) <= INT64_MAX


@pytest.mark.parametrize("digit", [*UNICODE_DIGITS[::7], *LOOK_LIKE_DIGITS])
def test_no_unicode_digit_is_a_number(digit: str) -> None:
    for text in (digit, f"1{digit}", f"{digit}1"):
        assert not is_decimal(text)
        with pytest.raises(NumberInvalid):
            parse_decimal(text)


@pytest.mark.parametrize(
    "text", ["+1", "-0", " 1", "1 ", "1_0", "1\n", "\u00a01", "0x1", "1e3", ""]
)
def test_what_int_forgives_is_no_number(text: str) -> None:
    with pytest.raises(NumberInvalid):
        parse_decimal(text)


@given(st.integers(0, 10**30), st.integers(0, 5))
def test_the_maximum_is_inclusive_and_leading_zeros_are_read(value: int, zeros: int) -> None:
    text = "0" * zeros + str(value)
    if value <= INT64_MAX:
        assert parse_decimal(text) == value
    else:
        with pytest.raises(NumberInvalid):
            parse_decimal(text)
    assert parse_decimal(text, maximum=value) == value
    if value > 0:
        with pytest.raises(NumberInvalid):
            parse_decimal(text, maximum=value - 1)


def test_thousands_of_digits_are_refused_not_converted() -> None:
    with pytest.raises(NumberInvalid):
        parse_decimal("9" * 100_000)
    assert parse_decimal("0" * 100_000 + "7") == 7


# --- n of the tag list and the catalog ---------------------------------------------------------


@given(texts)
def test_page_size_takes_ascii_digits_up_to_the_maximum_else_pagination_number_invalid(
    n: str,
) -> None:
    maximum = get_settings().max_page_size
    try:
        size = page_size(n)
    except RegistryError as error:
        assert error.code is ErrorCode.PAGINATION_NUMBER_INVALID
        assert error.status == 400
        assert not is_decimal(n) or int(n) > maximum
        return
    if n == "":
        assert size == get_settings().default_page_size
    else:
        assert is_decimal(n)
        assert size == int(n) <= maximum


@pytest.mark.parametrize("n", [*LOOK_LIKE_DIGITS, "3\u00b2", "+5", " 5", "5_0"])
def test_page_size_refuses_what_python_calls_digits(n: str) -> None:
    with pytest.raises(RegistryError) as info:
        page_size(n)
    assert info.value.code is ErrorCode.PAGINATION_NUMBER_INVALID


# --- Range and Content-Range -------------------------------------------------------------------


@given(numberish, numberish, st.integers(0, 10**6))
def test_range_positions_are_ascii_digits(first: str, last: str, size: int) -> None:
    for value in (f"bytes={first}-{last}", f"bytes={first}-", f"bytes=-{last}"):
        positions = [p for p in value.strip().removeprefix("bytes=").split("-") if p]
        try:
            result = parse_range(value, size)
        except RegistryError as error:
            assert error.code is ErrorCode.RANGE_INVALID
            assert all(is_decimal(p) for p in positions)
            continue
        if result is not None:
            assert all(is_decimal(p) for p in positions)


@given(numberish, numberish)
def test_content_range_positions_are_ascii_digits(start: str, end: str) -> None:
    try:
        parsed = parse_content_range(f"{start}-{end}")
    except RegistryError as error:
        assert error.code is ErrorCode.BLOB_UPLOAD_INVALID
        assert error.status == 416
        return
    assert is_decimal(start.strip()) and is_decimal(end.strip())
    assert parsed == (int(start), int(end))


# --- registry-admin's durations ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [*LOOK_LIKE_DIGITS, "\u0663s", "1\u0663h", "9" * 5000, "9" * 19 + "w"]
)
def test_an_admin_duration_is_ascii_digits_too(text: str) -> None:
    from janitor.cli import duration

    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
    assert duration("15m").total_seconds() == 900
