"""Unit tests of shared.reference: the grammar of repository names, tags and digests.

The expected grammar is written here from the OCI Distribution Specification v1.1 ("Pulling
manifests"), independently of the patterns the module compiles.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.errors import ErrorCode, RegistryError
from shared.reference import (
    Digest,
    digest_of,
    is_digest,
    parse_digest,
    validate_name,
    validate_tag,
)

SPEC_NAME = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
SPEC_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
SPEC_NAME_RE = re.compile(SPEC_NAME)
SPEC_TAG_RE = re.compile(SPEC_TAG)
MAX_NAME = 255

HEX = "0123456789abcdef"

names = st.from_regex(SPEC_NAME, fullmatch=True).filter(lambda n: len(n) <= MAX_NAME)
tags = st.from_regex(SPEC_TAG, fullmatch=True)


def _spec_name(value: str) -> bool:
    return SPEC_NAME_RE.fullmatch(value) is not None and len(value) <= MAX_NAME


def _spec_tag(value: str) -> bool:
    return SPEC_TAG_RE.fullmatch(value) is not None


def _name_error(value: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        validate_name(value)
    return info.value


def _tag_error(value: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        validate_tag(value)
    return info.value


def _digest_error(value: str) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse_digest(value)
    return info.value


# --- repository names -------------------------------------------------------------------------


@given(names)
def test_every_spec_name_is_accepted(name: str) -> None:
    assert validate_name(name) == name


@given(st.lists(st.from_regex(r"[a-z0-9]+", fullmatch=True), min_size=1, max_size=40))
def test_names_of_many_components_are_accepted_up_to_255(components: list[str]) -> None:
    name = "/".join(components)
    if len(name) <= MAX_NAME:
        assert validate_name(name) == name
    else:
        error = _name_error(name)
        assert error.code is ErrorCode.NAME_INVALID
        assert error.status == 400


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "0",
        "library/ubuntu",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a---b",
        "a.b_c__d-e--f/g0/h1.i",
        "x" * 255,
        "/".join(["a"] * 128),  # 255 characters
        "a" * 127 + "/" + "b" * 127,  # 255 characters
    ],
)
def test_example_names_are_accepted(name: str) -> None:
    assert len(name) <= MAX_NAME
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Library/ubuntu",
        "library/Ubuntu",
        "a..b",
        "a._b",
        "a___b",
        "a_-b",
        "a.-b",
        ".a",
        "a.",
        "_a",
        "a_",
        "-a",
        "a-",
        "/a",
        "a/",
        "a//b",
        "/",
        "..",
        ".",
        "../a",
        "a/..",
        "a/../b",
        "a/./b",
        "./a",
        "a/.",
        "..%2fa",
        "a%2F..%2Fb",
        "a\\b",
        "a\\..\\b",
        "a b",
        " a",
        "a ",
        "a\n",
        "a\x00",
        "a:b",
        "a@b",
        "a+b",
        "é",
        "\uff41",  # fullwidth a
        "x" * 256,
        "/".join(["a"] * 128) + "a",  # 256 characters
        "a" * 1000,
    ],
)
def test_example_names_are_refused(name: str) -> None:
    assert not _spec_name(name)
    error = _name_error(name)
    assert error.code is ErrorCode.NAME_INVALID
    assert error.status == 400


@given(st.text(alphabet="abz09._-/A:@ \\%\n", max_size=30))
def test_name_acceptance_is_exactly_the_spec_grammar(value: str) -> None:
    if _spec_name(value):
        assert validate_name(value) == value
    else:
        assert _name_error(value).code is ErrorCode.NAME_INVALID


@given(st.text(max_size=300))
def test_names_outside_the_spec_grammar_are_refused(value: str) -> None:
    assume(not _spec_name(value))
    error = _name_error(value)
    assert error.code is ErrorCode.NAME_INVALID
    assert error.status == 400


_NAME_BREAKERS = {
    "uppercase": lambda name, i: name[:i] + "A" + name[i:],
    "double dot": lambda name, i: name[:i] + ".." + name[i:],
    "leading slash": lambda name, i: "/" + name,
    "trailing slash": lambda name, i: name + "/",
    "double slash": lambda name, i: name[:i] + "//" + name[i:],
    "parent traversal": lambda name, i: name + "/../" + name,
    "current traversal": lambda name, i: name + "/./" + name,
    "leading traversal": lambda name, i: "../" + name,
    "trailing traversal": lambda name, i: name + "/..",
    "too long": lambda name, i: name + "a" * (MAX_NAME + 1 - len(name)),
}


@given(names, st.sampled_from(sorted(_NAME_BREAKERS)), st.integers(min_value=0))
def test_broken_spec_names_are_refused(name: str, breaker: str, position: int) -> None:
    broken = _NAME_BREAKERS[breaker](name, position % (len(name) + 1))
    assert not _spec_name(broken)
    error = _name_error(broken)
    assert error.code is ErrorCode.NAME_INVALID
    assert error.status == 400


# --- tags -------------------------------------------------------------------------------------


@given(tags)
def test_every_spec_tag_is_accepted(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    ["a", "A", "0", "_", "latest", "v1.2.3-rc.1_build", "_a.b-c", "a" * 128, "_" + "." * 127],
)
def test_example_tags_are_accepted(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        ".a",
        "-a",
        "a" * 129,
        "_" + "-" * 128,
        "a/b",
        "a:b",
        "a@b",
        "a b",
        "a\n",
        "a+b",
        "é",
        "sha256:" + "a" * 64,
    ],
)
def test_example_tags_are_refused(tag: str) -> None:
    assert not _spec_tag(tag)
    error = _tag_error(tag)
    assert error.code is ErrorCode.TAG_INVALID
    assert error.status == 400


@given(tags)
def test_tags_of_129_characters_are_refused(tag: str) -> None:
    long_tag = (tag * 129)[:129]
    error = _tag_error(long_tag)
    assert error.code is ErrorCode.TAG_INVALID
    assert error.status == 400


@given(st.text(alphabet="aZ09._-/:@ \n", max_size=140))
def test_tag_acceptance_is_exactly_the_spec_grammar(value: str) -> None:
    if _spec_tag(value):
        assert validate_tag(value) == value
    else:
        assert _tag_error(value).code is ErrorCode.TAG_INVALID


@given(st.text(max_size=200))
def test_tags_outside_the_spec_grammar_are_refused(value: str) -> None:
    assume(not _spec_tag(value))
    error = _tag_error(value)
    assert error.code is ErrorCode.TAG_INVALID
    assert error.status == 400


# --- digests ----------------------------------------------------------------------------------


@given(st.from_regex(r"[a-f0-9]{64}", fullmatch=True))
def test_sha256_digests_are_accepted(encoded: str) -> None:
    digest = parse_digest(f"sha256:{encoded}")
    assert digest == Digest("sha256", encoded)
    assert str(digest) == f"sha256:{encoded}"
    assert digest.hasher().name == "sha256"


@given(st.from_regex(r"[a-f0-9]{128}", fullmatch=True))
def test_sha512_digests_are_accepted(encoded: str) -> None:
    digest = parse_digest(f"sha512:{encoded}")
    assert digest == Digest("sha512", encoded)
    assert str(digest) == f"sha512:{encoded}"
    assert digest.hasher().name == "sha512"


@given(
    st.sampled_from([("sha256", 64), ("sha512", 128)]),
    st.integers(min_value=0, max_value=300),
    st.data(),
)
def test_digests_of_the_wrong_length_are_refused(
    algorithm_length: tuple[str, int], length: int, data: st.DataObject
) -> None:
    algorithm, expected = algorithm_length
    assume(length != expected)
    encoded = data.draw(st.text(alphabet=HEX, min_size=length, max_size=length))
    error = _digest_error(f"{algorithm}:{encoded}")
    assert error.code is ErrorCode.DIGEST_INVALID
    assert error.status == 400


@given(
    st.sampled_from([("sha256", 64), ("sha512", 128)]),
    st.data(),
)
def test_digests_with_uppercase_hex_are_refused(
    algorithm_length: tuple[str, int], data: st.DataObject
) -> None:
    algorithm, length = algorithm_length
    encoded = data.draw(st.text(alphabet=HEX + "ABCDEF", min_size=length, max_size=length))
    assume(encoded != encoded.lower())
    error = _digest_error(f"{algorithm}:{encoded}")
    assert error.code is ErrorCode.DIGEST_INVALID


@given(
    st.sampled_from([("sha256", 64), ("sha512", 128)]),
    st.data(),
)
def test_digests_with_non_hex_characters_are_refused(
    algorithm_length: tuple[str, int], data: st.DataObject
) -> None:
    algorithm, length = algorithm_length
    encoded = data.draw(st.text(alphabet=HEX + "g=_-z", min_size=length, max_size=length))
    assume(not set(encoded) <= set(HEX))
    assert _digest_error(f"{algorithm}:{encoded}").code is ErrorCode.DIGEST_INVALID


@pytest.mark.parametrize(
    "digest",
    [
        "md5:" + "a" * 32,
        "sha1:" + "a" * 40,
        "sha384:" + "a" * 96,
        "sha224:" + "a" * 56,
        "blake3:" + "a" * 64,
        "SHA256:" + "a" * 64,
        "Sha256:" + "a" * 64,
        "sha256+b64u:" + "a" * 64,
        "sha-256:" + "a" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 128,
    ],
)
def test_unknown_algorithms_are_refused(digest: str) -> None:
    error = _digest_error(digest)
    assert error.code is ErrorCode.DIGEST_INVALID
    assert error.status == 400


@pytest.mark.parametrize(
    "digest",
    [
        "",
        ":",
        "sha256",
        "sha256" + "a" * 64,
        "a" * 64,
        "sha256:",
        ":" + "a" * 64,
        "sha256::" + "a" * 64,
        "sha256:" + "a" * 63 + ":",
        "sha256:" + "a" * 64 + "\n",
        " sha256:" + "a" * 64,
        "sha256:" + "a" * 64 + " ",
        "sha256 :" + "a" * 64,
        "sha256: " + "a" * 63,
        "sha256:" + "a" * 63 + "/",
    ],
)
def test_malformed_digests_are_refused(digest: str) -> None:
    error = _digest_error(digest)
    assert error.code is ErrorCode.DIGEST_INVALID
    assert error.status == 400


@given(st.text(max_size=140))
def test_text_without_a_colon_is_never_a_digest(value: str) -> None:
    assume(":" not in value)
    assert is_digest(value) is False
    assert _digest_error(value).code is ErrorCode.DIGEST_INVALID


@given(st.text(max_size=200))
def test_parse_digest_accepts_exactly_the_verifiable_digests(value: str) -> None:
    verifiable = re.fullmatch(r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}", value) is not None
    if verifiable:
        assert str(parse_digest(value)) == value
    else:
        assert _digest_error(value).code is ErrorCode.DIGEST_INVALID


def test_is_digest() -> None:
    assert is_digest("sha256:" + "a" * 64) is True
    assert is_digest("latest") is False
    assert is_digest("a:b") is True


# --- digest_of --------------------------------------------------------------------------------


def test_digest_of_known_values() -> None:
    assert digest_of(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert digest_of(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert digest_of(b"abc", "sha512") == (
        "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    )


@given(st.binary(max_size=4096), st.sampled_from(["sha256", "sha512"]))
def test_digest_of_round_trips_through_parse_digest(data: bytes, algorithm: str) -> None:
    value = digest_of(data, algorithm)
    assert value == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    digest = parse_digest(value)
    assert digest.algorithm == algorithm
    assert str(digest) == value
    hasher = digest.hasher()
    hasher.update(data)
    assert hasher.hexdigest() == digest.encoded
    assert is_digest(value) is True


@given(st.binary(max_size=1024))
def test_digest_of_defaults_to_sha256(data: bytes) -> None:
    assert digest_of(data) == digest_of(data, "sha256")
    assert parse_digest(digest_of(data)).algorithm == "sha256"
