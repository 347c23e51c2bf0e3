"""Requests between the gateway and the services, authenticated by a shared secret.

With ``REGISTRY_INTERNAL_SECRET`` set, the gateway adds :data:`SECRET_HEADER` to every request it
forwards, and the blob and manifest services answer only requests that carry it: a client that
reaches a service's port directly (around the gateway, and so around its authentication) gets
401 ``UNAUTHORIZED`` without the header and 403 ``DENIED`` with a wrong one. Health, readiness
and metrics stay open for probes and Prometheus.

The header has the gateway's internal prefix, so a client cannot send it through the gateway
(the gateway drops every such header a client sends).
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ErrorCode
from shared.settings import Settings
from shared.web import INTERNAL_PREFIX, error_response

SECRET_HEADER = INTERNAL_PREFIX + "secret"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def gateway_headers(settings: Settings) -> list[tuple[str, str]]:
    """What the gateway adds to each forwarded request: the secret's header, when one is set."""
    secret = settings.internal_secret.get_secret_value()
    return [(SECRET_HEADER, secret)] if secret else []


class InternalSecretMiddleware:
    """Refuses every request without the shared secret, except :data:`OPEN_PATHS`. The
    comparison is constant-time; the secret is never logged or echoed."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        if not secret:
            raise ValueError("an empty internal secret protects nothing")
        self.app = app
        self.secret = secret.encode()
        self.header = SECRET_HEADER.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = [value for key, value in scope["headers"] if key == self.header]
        if len(given) == 1 and hmac.compare_digest(given[0], self.secret):
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if not given:
            response = error_response(
                ErrorCode.UNAUTHORIZED, "this service answers the gateway only", head=head
            )
        else:
            response = error_response(
                ErrorCode.DENIED, "this service answers the gateway only", head=head
            )
        await response(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware to a service's app when a secret is configured."""
    secret = settings.internal_secret.get_secret_value()
    if secret:
        app.add_middleware(InternalSecretMiddleware, secret=secret)
