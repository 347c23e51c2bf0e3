"""Unit tests of blob_service.ranges: ``Range`` (RFC 9110 section 14) and the spec's upload
``Content-Range``.

The expected results come from a model of RFC 9110 written here over the *structure* of the
request (which form, which numbers), not by parsing the header the way the module does.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from blob_service.ranges import parse_content_range, parse_range
from shared.errors import ErrorCode, RegistryError

UNSATISFIABLE = "416"

sizes = st.integers(min_value=0, max_value=10**12) | st.integers(min_value=0, max_value=64)
positions = st.integers(min_value=0, max_value=10**13) | st.integers(min_value=0, max_value=80)


@dataclass(frozen=True)
class ByteRange:
    """One byte-range-spec: ``first-last``, ``first-`` or ``-suffix``."""

    first: int | None
    last: int | None
    zeros_first: int = 0
    zeros_last: int = 0

    def header(self) -> str:
        first = "" if self.first is None else "0" * self.zeros_first + str(self.first)
        last = "" if self.last is None else "0" * self.zeros_last + str(self.last)
        return f"bytes={first}-{last}"


def rfc9110(spec: ByteRange, size: int) -> tuple[int, int] | str | None:
    """What RFC 9110 section 14.1.1 makes of a single byte-range-spec on ``size`` bytes:
    the inclusive range to send, UNSATISFIABLE, or None (header ignored: whole representation).
    """
    if spec.first is None:  # suffix-range
        assert spec.last is not None
        suffix = spec.last
        if suffix == 0:
            return UNSATISFIABLE  # only a suffix-range with a non-zero length is satisfiable
        if size == 0:
            return None  # satisfiable but selects nothing: the (empty) whole is all there is
        # "If the selected representation is shorter than the specified suffix-length, the
        # entire representation is used."
        return (size - suffix if suffix < size else 0), size - 1
    if spec.last is not None and spec.last < spec.first:
        return None  # invalid byte-range-spec: a server may ignore the header
    if spec.first >= size:
        return UNSATISFIABLE  # an int-range is satisfiable only if first-pos < length
    last = size - 1 if spec.last is None or spec.last >= size else spec.last
    return spec.first, last


zeros = st.integers(min_value=0, max_value=3)
closed_ranges = st.builds(ByteRange, positions, positions, zeros, zeros)
open_ranges = st.builds(ByteRange, positions, st.none(), zeros)
suffix_ranges = st.builds(ByteRange, st.none(), positions, st.just(0), zeros)
byte_ranges = closed_ranges | open_ranges | suffix_ranges
# What the ASGI server hands over: header values decoded as latin-1.
header_text = st.text(st.characters(max_codepoint=255), max_size=40) | st.text(
    "bytes=-0123456789/* ,", max_size=40
)


def _unsatisfiable(value: str, size: int) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_range(value, size)
    return info.value


def _assert_416(error: RegistryError, size: int) -> None:
    assert error.code is ErrorCode.RANGE_INVALID
    assert error.status == 416
    assert error.headers == {"Content-Range": f"bytes */{size}"}


# --- Range ------------------------------------------------------------------------------------


@given(byte_ranges, sizes)
def test_parse_range_follows_rfc9110(spec: ByteRange, size: int) -> None:
    expected = rfc9110(spec, size)
    if expected == UNSATISFIABLE:
        _assert_416(_unsatisfiable(spec.header(), size), size)
        return
    result = parse_range(spec.header(), size)
    assert result == expected
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size - 1


@given(byte_ranges, sizes)
def test_a_range_never_leaves_the_blob(spec: ByteRange, size: int) -> None:
    try:
        result = parse_range(spec.header(), size)
    except RegistryError as error:
        _assert_416(error, size)
        return
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size - 1


@given(st.integers(min_value=1, max_value=10**6), st.integers(min_value=1, max_value=10**6))
def test_suffix_longer_than_the_blob_is_the_whole_blob(size: int, extra: int) -> None:
    assert parse_range(f"bytes=-{size + extra - 1}", size) == (0, size - 1)
    assert parse_range(f"bytes=-{size}", size) == (0, size - 1)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-0", 1, (0, 0)),
        ("bytes=0-499", 10000, (0, 499)),
        ("bytes=500-999", 10000, (500, 999)),
        ("bytes=-500", 10000, (9500, 9999)),
        ("bytes=9500-", 10000, (9500, 9999)),
        ("bytes=0-", 1, (0, 0)),
        ("bytes=0-99999", 10, (0, 9)),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=-1", 10, (9, 9)),
        ("bytes=-10", 10, (0, 9)),
        ("bytes=-11", 10, (0, 9)),
        ("bytes=007-0009", 10, (7, 9)),
        (" bytes=1-2 ", 10, (1, 2)),
    ],
)
def test_range_examples(value: str, size: int, expected: tuple[int, int]) -> None:
    assert parse_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=10-20", 10),
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=-0", 10),
        ("bytes=-000", 10),
        ("bytes=-0", 0),
        ("bytes=99999999999999999999-", 10),
    ],
)
def test_unsatisfiable_ranges_answer_416(value: str, size: int) -> None:
    _assert_416(_unsatisfiable(value, size), size)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes=",
        "bytes=-",
        "bytes=5-3",
        "bytes=0-1,3-4",
        "bytes=0-1, 3-4",
        "items=0-5",
        "bytes 0-5",
        "bytes=0-5/10",
        "bytes=a-b",
        "bytes=0x1-2",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=--1",
        "bytes=1--2",
        "0-5",
    ],
)
def test_ranges_this_server_ignores_send_the_whole_blob(value: str) -> None:
    assert parse_range(value, 10) is None


@given(header_text, sizes)
def test_parse_range_raises_nothing_but_416(value: str, size: int) -> None:
    try:
        result = parse_range(value, size)
    except RegistryError as error:
        _assert_416(error, size)
        return
    if result is not None:
        start, end = result
        assert 0 <= start <= end <= size - 1


@given(st.integers(min_value=1, max_value=10**12))
def test_suffix_range_on_an_empty_blob_is_not_416(suffix: int) -> None:
    assert parse_range(f"bytes=-{suffix}", 0) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=" + "1" * 5000 + "-", UNSATISFIABLE),
        ("bytes=0-" + "9" * 5000, (0, 9)),
        ("bytes=-" + "9" * 5000, (0, 9)),
    ],
)
def test_huge_positions_are_handled(value: str, expected: tuple[int, int] | str) -> None:
    if expected == UNSATISFIABLE:
        _assert_416(_unsatisfiable(value, 10), 10)
    else:
        assert parse_range(value, 10) == expected


def test_non_ascii_digits_are_not_positions() -> None:
    assert parse_range("bytes=\u0663-\u0665", 10) is None  # ARABIC-INDIC DIGIT THREE, FIVE


# --- Content-Range ----------------------------------------------------------------------------


def _content_range_error(value: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_content_range(value)
    return info.value


@given(positions, positions, zeros, zeros)
def test_content_range_start_end(a: int, b: int, za: int, zb: int) -> None:
    start, end = min(a, b), max(a, b)
    value = f"{'0' * za}{start}-{'0' * zb}{end}"
    assert parse_content_range(value) == (start, end)


@given(positions, st.integers(min_value=1, max_value=10**6))
def test_content_range_ending_before_it_starts_is_416(start: int, back: int) -> None:
    assume(start - back >= 0)
    error = _content_range_error(f"{start}-{start - back}")
    assert error.code is ErrorCode.BLOB_UPLOAD_INVALID
    assert error.status == 416


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-0", (0, 0)),
        ("0-1023", (0, 1023)),
        ("1024-2047", (1024, 2047)),
        ("bytes=0-9", (0, 9)),
        ("bytes 0-9", (0, 9)),
        ("bytes 0-9/10", (0, 9)),
        ("bytes 0-9/*", (0, 9)),
        ("0-9/*", (0, 9)),
        (" 0-9 ", (0, 9)),
    ],
)
def test_content_range_examples(value: str, expected: tuple[int, int]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "-",
        "5",
        "5-",
        "-5",
        "a-b",
        "1-2-3",
        "1 - 2",
        "1-2,3-4",
        "0x1-2",
        "+1-2",
        "1-+2",
        "-1-2",
        "1.0-2",
        "1-2/",
        "1-2/x",
        "1-2/-3",
        "bytes=1-",
        "bytes=-1",
        "bytes-1-2",
        "items 1-2",
        "bytes */10",
        "BYTES 1-2",
        "5-3",
        "1-0",
    ],
)
def test_malformed_content_ranges_are_416(value: str) -> None:
    error = _content_range_error(value)
    assert error.code is ErrorCode.BLOB_UPLOAD_INVALID
    assert error.status == 416


@given(header_text)
def test_parse_content_range_raises_nothing_but_416(value: str) -> None:
    try:
        start, end = parse_content_range(value)
    except RegistryError as error:
        assert error.code is ErrorCode.BLOB_UPLOAD_INVALID
        assert error.status == 416
        return
    assert 0 <= start <= end
    assert str(start) in value
    assert str(end) in value


def test_huge_content_range_is_416() -> None:
    error = _content_range_error("1" * 5000 + "-" + "2" * 5000)
    assert error.status == 416


def test_content_range_with_non_ascii_digits_is_416() -> None:
    assert _content_range_error("\u0663-\u0665").status == 416
