"""The gateway's routes: the API version check, and everything else under ``/v2/`` forwarded to
the service the route table names.

:func:`build_routes` makes them for the configuration: with no authentication and no limits
(the default) neither does any work; otherwise the version check asks the guard, and each
forwarded request is checked (guard, then limits) first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from api_gateway import mirroring, routing
from api_gateway.auth import Guard
from api_gateway.limits import RequestLimits
from api_gateway.proxy import forward
from shared.errors import ErrorCode, RegistryError
from shared.observability import CLIENTS_CUT_OFF
from shared.settings import get_settings
from shared.web import ACTOR_HEADER, Endpoint, request_id

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _raw_path(request: Request) -> str:
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    return raw_path.split("?", 1)[0]


def _pool(request: Request) -> aiohttp.ClientSession:
    """Reads and writes go through connection pools of their own: requests that send bodies
    (which a slow client sends slowly) never take the connections that reads need."""
    state = request.app.state
    return state.http if request.method in ("GET", "HEAD") else state.http_writes  # type: ignore[no-any-return]


@asynccontextmanager
async def _time_limit(route: routing.Route, seconds: float, method: str) -> AsyncIterator[None]:
    """Requests that move no blob bytes (manifests, tags, catalog, referrers) end in time."""
    if route.service != "manifest":
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        CLIENTS_CUT_OFF.labels("request").inc()
        if method in ("GET", "HEAD"):
            raise RegistryError(ErrorCode.UNAVAILABLE, f"no answer within {seconds:g} s") from None
        raise RegistryError(
            ErrorCode.REQUEST_TIMEOUT, f"the request took longer than {seconds:g} s"
        ) from None


def build_routes(
    guard: Guard | None = None,
    limits: RequestLimits | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> list[BaseRoute]:
    settings = get_settings()
    # Where each service is, worked out once rather than per request.
    service_urls = {service: settings.service_url(service) for service in ("blob", "manifest")}
    limit = settings.request_timeout_seconds

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "OK"})

    async def api_version(request: Request) -> Response:
        if guard is not None:
            await guard.check_base(request)
        return JSONResponse({})

    async def to_service(request: Request) -> Response:
        found = mirroring.resolve(routing.match(_raw_path(request), request.method), request)
        request.state.route_name = found.route.name
        query = await guard.check(request, found) if guard is not None else None
        done = limits.admit(request, found) if limits is not None else None
        user = getattr(request.state, "user", None)
        headers = extra_headers if user is None else [*extra_headers, (ACTOR_HEADER, user)]
        storage = request.app.state.local_storage
        serve_locally = storage if found.route.blob_bytes and request.method == "GET" else None
        try:
            async with _time_limit(found.route, limit, request.method):
                return await forward(
                    _pool(request),
                    service_urls[found.route.service],
                    found.path,
                    request,
                    request_id(request),
                    serve_locally,
                    headers,
                    query,
                    blob_bytes=found.route.blob_bytes,
                )
        finally:
            if done is not None:
                done()

    return [
        Endpoint("/v2/_ping", ping, methods=["GET"]),
        Endpoint("/v2/", api_version, methods=["GET", "HEAD"]),
        Endpoint("/{path:path}", to_service, methods=METHODS),
    ]
