"""The registry's error codes, declared once.

Every error the registry returns is a member of :class:`ErrorCode`, carrying the code string of
the OCI Distribution Specification (section "Error Codes"), the HTTP status it is answered with,
and the spec's message. :class:`RegistryError` carries a member plus a detail; :func:`error_body`
renders the spec's JSON body ``{"errors": [{code, message, detail}]}``.

Where the spec answers one code with another status in one situation (a chunk out of order is
416, a manifest too large 413), domain code raises a domain exception named after the
situation, and :data:`ANSWERS` is the one table of what each is answered with. Domain code never
names an HTTP status.

``BLOB_UPLOAD_INVALID`` is 400: the spec's endpoint table allows 400 or 404 for a failed upload
request (end-6), and the request, not the session, is what failed; the reference registry
registers 404 for it.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.Enum):
    # (code, HTTP status, message)
    BLOB_UNKNOWN = ("BLOB_UNKNOWN", 404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = ("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = ("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
    DIGEST_INVALID = ("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (
        "MANIFEST_BLOB_UNKNOWN",
        400,
        "manifest references a blob unknown to registry",
    )
    MANIFEST_INVALID = ("MANIFEST_INVALID", 400, "manifest invalid")
    MANIFEST_UNKNOWN = ("MANIFEST_UNKNOWN", 404, "manifest unknown")
    NAME_INVALID = ("NAME_INVALID", 400, "invalid repository name")
    NAME_UNKNOWN = ("NAME_UNKNOWN", 404, "repository name not known to registry")
    SIZE_INVALID = ("SIZE_INVALID", 400, "provided length did not match content length")
    TAG_INVALID = ("TAG_INVALID", 400, "manifest tag did not match URI")
    UNAUTHORIZED = ("UNAUTHORIZED", 401, "authentication required")
    DENIED = ("DENIED", 403, "requested access to the resource is denied")
    UNSUPPORTED = ("UNSUPPORTED", 405, "the operation is unsupported")
    TOOMANYREQUESTS = ("TOOMANYREQUESTS", 429, "too many requests")
    # Not spec codes: the spec has none for what the gateway's limits refuse before a request
    # is an API call (the reference registry's HTTP server answers these in plain text). The
    # client did not send its request in time; its header fields, or its request target, are
    # larger than the gateway accepts. (SIZE_INVALID is about a blob's length, not these.)
    REQUEST_TIMEOUT = ("REQUEST_TIMEOUT", 408, "the request was not received in time")
    HEADERS_TOO_LARGE = ("HEADERS_TOO_LARGE", 431, "request header fields too large")
    URI_TOO_LONG = ("URI_TOO_LONG", 414, "request target too long")
    RANGE_INVALID = ("RANGE_INVALID", 416, "invalid content range")
    PAGINATION_NUMBER_INVALID = (
        "PAGINATION_NUMBER_INVALID",
        400,
        "invalid number of results requested",
    )
    NOT_FOUND = ("NOT_FOUND", 404, "no such endpoint")
    UNAVAILABLE = ("UNAVAILABLE", 503, "service unavailable")
    UNKNOWN = ("UNKNOWN", 500, "unknown error")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]

    @property
    def message(self) -> str:
        return self.value[2]


class RegistryError(Exception):
    """An error to be answered with the spec's error body and the code's status. ``headers``
    are added to the response (``Allow`` on a 405, ``Range`` on a 416)."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = code.status
        self.headers = headers or {}


class DomainError(RegistryError):
    """A situation the spec answers in a way of its own: code and status from :data:`ANSWERS`."""

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        # a subclass (a more particular situation) is answered as the situation it refines
        code, status = next(ANSWERS[kind] for kind in type(self).__mro__ if kind in ANSWERS)
        super().__init__(code, detail, headers=headers)
        self.status = status


class UploadRangeMismatch(DomainError):
    """A chunk that does not start where the upload ends, is not as long as its
    ``Content-Range`` says, or whose ``Content-Range`` cannot be read; or an upload another
    request is writing to. The answer carries the upload's ``Range``."""


class ManifestTooLarge(DomainError):
    """A manifest larger than the registry accepts."""


class ManifestMediaTypeUnsupported(DomainError):
    """A manifest of a media type the registry does not store."""


# What each domain exception is answered with: the one table.
ANSWERS: dict[type[DomainError], tuple[ErrorCode, int]] = {
    # Spec, "Pushing a blob in chunks": an out-of-order chunk MUST be answered 416.
    UploadRangeMismatch: (ErrorCode.BLOB_UPLOAD_INVALID, 416),
    # Spec, "Pushing manifests": a manifest over the registry's limit SHOULD get 413.
    ManifestTooLarge: (ErrorCode.SIZE_INVALID, 413),
    # As the reference registry answers a manifest of an unknown media type.
    ManifestMediaTypeUnsupported: (ErrorCode.MANIFEST_INVALID, 415),
}


def error_body(code: ErrorCode, detail: str | None = None) -> dict[str, Any]:
    return {"errors": [{"code": code.code, "message": code.message, "detail": detail}]}
