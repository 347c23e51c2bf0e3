"""Limits the gateway enforces before a request reaches a service."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ErrorCode
from shared.web import error_response


class HeaderLimitMiddleware:
    """Refuses requests whose headers are larger than ``max_bytes`` in all, or more than
    ``max_count``, with 431 (RFC 6585) in the spec's error format. The HTTP server itself sets
    no such limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_count: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = sum(len(k) + len(v) + 4 for k, v in headers)
            if size > self.max_bytes or len(headers) > self.max_count:
                detail = (
                    f"request headers are {size} bytes in {len(headers)} fields; "
                    f"at most {self.max_bytes} bytes and {self.max_count} fields are accepted"
                )
                response = error_response(ErrorCode.SIZE_INVALID, detail, status=431)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
