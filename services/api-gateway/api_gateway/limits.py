"""Limits the gateway enforces before a request reaches a service."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import TTLCache
from prometheus_client import Counter
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api_gateway.routing import Match
from shared.errors import ErrorCode, RegistryError
from shared.internal_auth import OPEN_PATHS
from shared.settings import Settings
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
                response = error_response(ErrorCode.HEADERS_TOO_LARGE, detail)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- rate limits and concurrent uploads (off unless configured) -------------------------------
#
# In-process token buckets: each gateway replica counts on its own, so with N replicas a
# client gets up to N times the rate (a shared store such as Redis would make it exact, at a
# round trip per request). Buckets of clients that went quiet are dropped as the table grows.

RATE_LIMITED = Counter(
    "registry_rate_limited_total", "Requests refused with 429 by the gateway, by limit", ["limit"]
)
UPLOAD_ROUTES = frozenset({"upload start", "upload"})
UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if rate <= 0:
            raise ValueError("a rate limit needs a positive rate")
        self.rate = rate
        self.burst = float(burst if burst > 0 else max(1, math.ceil(rate)))
        # A bucket unused for burst/rate seconds is full again: it is forgotten then (and the
        # least recently used one when there are too many keys).
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(
            maxsize=max_keys, ttl=self.burst / rate, timer=time.monotonic
        )  # key -> (tokens, when)

    def take(self, key: str) -> float:
        """0 when a request for ``key`` may go now, else the seconds until it may."""
        now = time.monotonic()
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


def too_many(limit: str, wait: float, detail: str) -> RegistryError:
    RATE_LIMITED.labels(limit).inc()
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS, detail, headers={"Retry-After": str(max(1, math.ceil(wait)))}
    )


class ClientRateLimitMiddleware:
    """429 ``TOOMANYREQUESTS`` with ``Retry-After`` for a client (its address, as uvicorn sees
    it: behind an ingress, have uvicorn trust the ingress's X-Forwarded-For) above its rate.
    Health, readiness and metrics are not counted."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "")
            if wait > 0:
                error = too_many("client", wait, "too many requests from this client")
                response = error_response(
                    error.code,
                    error.detail,
                    headers=error.headers,
                    head=scope["method"] == "HEAD",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestLimits:
    """The limits the gateway's route applies once it knows the repository: its rate, and the
    client's uploads in progress."""

    def __init__(self, repository_rate: float, repository_burst: int, uploads: int) -> None:
        self.repositories = (
            TokenBuckets(repository_rate, repository_burst) if repository_rate > 0 else None
        )
        self.max_uploads = uploads
        self._uploads: dict[str, int] = {}

    def admit(self, request: Request, match: Match) -> Callable[[], None] | None:
        """Raise 429 when the request is over a limit; else the function to call when it is
        done (for an upload that counts), or None."""
        if self.repositories is not None and match.name is not None:
            wait = self.repositories.take(match.name)
            if wait > 0:
                raise too_many("repository", wait, "too many requests for this repository")
        if (
            self.max_uploads <= 0
            or match.route.name not in UPLOAD_ROUTES
            or request.method not in UPLOAD_METHODS
        ):
            return None
        client = request.client.host if request.client is not None else ""
        count = self._uploads.get(client, 0)
        if count >= self.max_uploads:
            raise too_many(
                "uploads", 1, f"at most {self.max_uploads} uploads at once from one client"
            )
        self._uploads[client] = count + 1

        def done() -> None:
            left = self._uploads.get(client, 1) - 1
            if left > 0:
                self._uploads[client] = left
            else:
                self._uploads.pop(client, None)

        return done


def request_limits(settings: Settings) -> RequestLimits | None:
    if (
        settings.rate_limit_repository_per_second <= 0
        and settings.max_concurrent_uploads_per_client <= 0
    ):
        return None
    return RequestLimits(
        settings.rate_limit_repository_per_second,
        settings.rate_limit_repository_burst,
        settings.max_concurrent_uploads_per_client,
    )
