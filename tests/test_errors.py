"""Unit tests of shared.errors: the error-code registry and the spec's error body."""

from __future__ import annotations

import json
import re

import pytest

from shared.errors import (
    ANSWERS,
    DomainError,
    ErrorCode,
    ManifestMediaTypeUnsupported,
    ManifestTooLarge,
    RegistryError,
    UploadRangeMismatch,
    error_body,
)

# The codes of the OCI Distribution Specification v1.1 ("Error Codes"), with the HTTP status
# the reference registry (distribution/distribution, registry/api/v2/errors.go) registers for
# them; BLOB_UPLOAD_INVALID differs, see its own test.
SPEC_CODES = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
}


def test_no_member_is_an_alias() -> None:
    # Two members with the same (code, status, message) would silently become one.
    assert list(ErrorCode.__members__) == [member.name for member in ErrorCode]


def test_codes_are_unique() -> None:
    codes = [member.code for member in ErrorCode]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("member", list(ErrorCode), ids=lambda m: m.name)
def test_code_shape(member: ErrorCode) -> None:
    assert re.fullmatch(r"[A-Z]+(?:_[A-Z]+)*", member.code)
    assert member.code == member.name
    assert isinstance(member.status, int)
    assert type(member.status) is int
    assert 400 <= member.status <= 599
    assert isinstance(member.message, str)
    assert member.message.strip() == member.message != ""
    assert len(member.value) == 3


@pytest.mark.parametrize(("code", "status"), sorted(SPEC_CODES.items()))
def test_every_spec_code_exists_with_the_reference_status(code: str, status: int) -> None:
    member = ErrorCode[code]
    assert member.code == code
    assert member.status == status


def test_spec_codes_are_all_there() -> None:
    assert set(SPEC_CODES) <= {member.code for member in ErrorCode}


def test_other_codes_used_by_the_registry() -> None:
    assert ErrorCode.TAG_INVALID.status == 400
    assert ErrorCode.RANGE_INVALID.status == 416
    assert ErrorCode.PAGINATION_NUMBER_INVALID.status == 400
    assert ErrorCode.NOT_FOUND.status == 404
    assert ErrorCode.UNAVAILABLE.status == 503
    assert ErrorCode.UNKNOWN.status == 500
    assert ErrorCode.REQUEST_TIMEOUT.status == 408
    assert ErrorCode.HEADERS_TOO_LARGE.status == 431
    assert ErrorCode.URI_TOO_LONG.status == 414


@pytest.mark.parametrize("member", list(ErrorCode), ids=lambda m: m.name)
def test_error_body(member: ErrorCode) -> None:
    body = error_body(member, "some detail")
    assert body == {
        "errors": [{"code": member.code, "message": member.message, "detail": "some detail"}]
    }
    assert json.loads(json.dumps(body)) == body


def test_error_body_without_detail() -> None:
    body = error_body(ErrorCode.BLOB_UNKNOWN)
    assert body == {
        "errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": None}]
    }
    assert json.dumps(body, separators=(",", ":")) == (
        '{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":null}]}'
    )


def test_registry_error_defaults() -> None:
    error = RegistryError(ErrorCode.MANIFEST_UNKNOWN, "no manifest latest")
    assert error.code is ErrorCode.MANIFEST_UNKNOWN
    assert error.detail == "no manifest latest"
    assert error.status == 404
    assert error.headers == {}
    assert str(error) == "MANIFEST_UNKNOWN: no manifest latest"
    assert isinstance(error, Exception)


def test_blob_upload_invalid_follows_the_spec_s_endpoint_table_not_the_reference() -> None:
    """The reference registry registers 404 for BLOB_UPLOAD_INVALID. The spec's endpoint
    table (end-6) allows 400 or 404 for a failed PUT or PATCH of an upload; the registry
    answers 400: the request failed (a body that ended early, bytes that do not add up), and
    404 is what a client reads as "this upload session does not exist" (BLOB_UPLOAD_UNKNOWN)."""
    assert ErrorCode.BLOB_UPLOAD_INVALID.status == 400
    assert ErrorCode.BLOB_UPLOAD_UNKNOWN.status == 404


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (UploadRangeMismatch, "BLOB_UPLOAD_INVALID", 416),
        (ManifestTooLarge, "SIZE_INVALID", 413),
        (ManifestMediaTypeUnsupported, "MANIFEST_INVALID", 415),
    ],
)
def test_domain_errors_are_answered_from_one_table(
    error: type[DomainError], code: str, status: int
) -> None:
    raised = error("why", headers={"Range": "0-9"})
    assert isinstance(raised, RegistryError)
    assert (raised.code.code, raised.status) == (code, status) == (ANSWERS[error][0].code, status)
    assert raised.detail == "why" and raised.headers == {"Range": "0-9"}


def test_every_domain_error_has_an_answer() -> None:
    assert set(DomainError.__subclasses__()) == set(ANSWERS)


def test_a_refined_domain_error_is_answered_as_the_situation_it_refines() -> None:
    class UploadBusy(UploadRangeMismatch):
        pass

    raised = UploadBusy("another request is writing", headers={"Range": "0-9"})
    assert (raised.code.code, raised.status) == ("BLOB_UPLOAD_INVALID", 416)
    assert raised.headers == {"Range": "0-9"}


def test_registry_errors_do_not_share_headers() -> None:
    first = RegistryError(ErrorCode.UNKNOWN)
    second = RegistryError(ErrorCode.UNKNOWN)
    first.headers["X"] = "y"
    assert second.headers == {}
    assert first.detail is None
