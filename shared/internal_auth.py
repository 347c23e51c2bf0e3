"""Requests between the gateway and the services, authenticated by a shared secret.

With ``REGISTRY_INTERNAL_SECRET`` set, the gateway adds :data:`SECRET_HEADER` to every request it
forwards, and the blob and manifest services answer only requests that carry it: a client that
reaches a service's port directly (around the gateway, and so around its authentication) gets
401 ``UNAUTHORIZED`` without the header and 403 ``DENIED`` with a wrong one. Health, readiness
and metrics stay open for probes and Prometheus.

The header has the gateway's internal prefix, so a client cannot send it through the gateway
(the gateway drops every such header a client sends).

Without a secret a service answers anyone who reaches its port, around the gateway's
authentication. So with authentication on (``REGISTRY_AUTH`` htpasswd or token) and no secret,
a service refuses to start (one log line, exit status 2) when it listens on an address other
hosts can reach, unless ``REGISTRY_INTERNAL_NETWORK_TRUSTED`` says its network admits nobody
else; on loopback it starts, with a warning. ``make run`` makes a secret for its processes.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ErrorCode
from shared.settings import Settings
from shared.web import INTERNAL_PREFIX, error_response

log = logging.getLogger("registry.internal_auth")

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


class UnprotectedService(SystemExit):
    """A service that would answer anyone, around the gateway's authentication: exit status 2."""

    def __init__(self) -> None:
        super().__init__(2)


def listen_address(configured: str, argv: Sequence[str] | None = None) -> str:
    """The address this process's HTTP server listens on: the ``--host`` (or ``--uds``) its
    uvicorn command names, or ``UVICORN_HOST``; else ``configured``, the service's
    ``REGISTRY_*_HOST``. (The images' commands say ``--host 0.0.0.0`` whatever the settings
    say, so the command is what counts.)"""
    args = list(sys.argv if argv is None else argv)
    for i, arg in enumerate(args):
        option, equals, value = arg.partition("=")
        if option in ("--host", "--uds"):
            if not equals:
                if i + 1 == len(args):
                    break
                value = args[i + 1]
            return value if option == "--host" else f"unix:{value}"
    return os.environ.get("UVICORN_HOST") or configured


def is_loopback(address: str) -> bool:
    """Only processes on this host can connect: a loopback address, or a Unix socket."""
    if address == "localhost" or address.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or a wildcard: other hosts may reach it


def install(app: Starlette, settings: Settings, configured_host: str) -> None:
    """Add the middleware to a service's app when a secret is configured; without one, with
    authentication on, refuse to serve a network (see the module's docstring)."""
    secret = settings.internal_secret.get_secret_value()
    if secret:
        app.add_middleware(InternalSecretMiddleware, secret=secret)
        return
    if settings.auth == "none":
        return
    address = listen_address(configured_host)
    if is_loopback(address):
        log.warning(
            "REGISTRY_AUTH=%s without REGISTRY_INTERNAL_SECRET: this service answers any "
            "process on this host that reaches its port (%s), around the gateway's checks",
            settings.auth,
            address,
        )
    elif settings.internal_network_trusted:
        log.warning(
            "REGISTRY_AUTH=%s without REGISTRY_INTERNAL_SECRET on %s: this service answers "
            "whoever reaches its port; REGISTRY_INTERNAL_NETWORK_TRUSTED says only the gateway can",
            settings.auth,
            address,
        )
    else:
        log.critical(
            "refusing to start: REGISTRY_AUTH=%s and no REGISTRY_INTERNAL_SECRET, and this "
            "service listens on %s, where anyone who reaches its port would get around the "
            "gateway's authentication; set REGISTRY_INTERNAL_SECRET (the same for the gateway "
            "and the services), listen on 127.0.0.1, or set REGISTRY_INTERNAL_NETWORK_TRUSTED=true",
            settings.auth,
            address,
        )
        raise UnprotectedService
