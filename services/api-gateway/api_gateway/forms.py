"""The small url-encoded forms the gateway reads itself: the token endpoint's OAuth2 form and
the web interface's posts. At most 16 KiB, UTF-8, the first value of each field; read once
(Starlette keeps the bytes, so a post can still be forwarded after its fields were checked)."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request

from shared.numbers import NumberInvalid, parse_decimal

MAX_FORM_BYTES = 16 * 1024


class FormInvalid(Exception):
    """A form that cannot be read: malformed, not UTF-8, or a bad Content-Length."""


class FormTooLarge(FormInvalid):
    """A form of more than ``MAX_FORM_BYTES``."""


async def read_form(request: Request) -> dict[str, str]:
    """The fields of ``request``'s url-encoded body. With a Content-Length (which the server
    holds the body to), it is checked before a byte is read; without one, the body is read
    until it passes the limit, and then cannot be forwarded."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            parse_decimal(length, MAX_FORM_BYTES)
        except NumberInvalid:
            raise FormTooLarge(
                f"a form post needs a Content-Length of at most {MAX_FORM_BYTES} bytes"
            ) from None
        body = await request.body()
    else:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise FormTooLarge(f"a form is at most {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise FormInvalid("the form is not UTF-8 url-encoded fields") from None
    return {name: values[0] for name, values in fields.items()}
