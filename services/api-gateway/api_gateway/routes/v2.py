"""The gateway's routes: the API version check, and everything else under ``/v2/`` forwarded to
the service the route table names.

:func:`build_router` makes them for the configuration: with no authentication and no limits
(the default) the routes are the plain ones, doing no work for either; otherwise the version
check asks the guard, and each forwarded request is checked (guard, then limits) first.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api_gateway import routing
from api_gateway.auth import Guard
from api_gateway.limits import RequestLimits
from api_gateway.proxy import forward
from shared.settings import get_settings
from shared.web import request_id

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _raw_path(request: Request) -> str:
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    return raw_path.split("?", 1)[0]


def build_router(
    guard: Guard | None = None,
    limits: RequestLimits | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> APIRouter:
    router = APIRouter()
    settings = get_settings()
    # Where each service is, worked out once rather than per request.
    service_urls = {service: settings.service_url(service) for service in ("blob", "manifest")}

    @router.get("/v2/_ping")
    async def ping() -> Response:
        return JSONResponse({"status": "OK"})

    if guard is None:

        @router.api_route("/v2/", methods=["GET", "HEAD"])
        async def api_version() -> Response:
            return JSONResponse({})
    else:

        @router.api_route("/v2/", methods=["GET", "HEAD"])
        async def api_version_authenticated(request: Request) -> Response:
            await guard.check_base(request)
            return JSONResponse({})

    # The forwarding routes are plain Starlette routes: they take nothing FastAPI's dependency
    # machinery would resolve, and skipping it is a good part of a proxied request's cost.
    if guard is None and limits is None and not extra_headers:

        async def to_service(request: Request) -> Response:
            found = routing.match(_raw_path(request), request.method)
            request.state.route_name = found.route.name
            base_url = service_urls[found.route.service]
            storage = request.app.state.local_storage
            serve_locally = storage if found.route.blob_bytes and request.method == "GET" else None
            return await forward(
                request.app.state.http,
                base_url,
                found.path,
                request,
                request_id(request),
                serve_locally,
                blob_bytes=found.route.blob_bytes,
            )

        router.add_route("/{path:path}", to_service, methods=METHODS)
        return router

    async def to_service_checked(request: Request) -> Response:
        client = request.app.state.http
        storage = request.app.state.local_storage
        found = routing.match(_raw_path(request), request.method)
        request.state.route_name = found.route.name
        query = await guard.check(request, found) if guard is not None else None
        done = limits.admit(request, found) if limits is not None else None
        base_url = service_urls[found.route.service]
        serve_locally = storage if found.route.blob_bytes and request.method == "GET" else None
        try:
            return await forward(
                client,
                base_url,
                found.path,
                request,
                request_id(request),
                serve_locally,
                extra_headers,
                query,
                blob_bytes=found.route.blob_bytes,
            )
        finally:
            if done is not None:
                done()

    router.add_route("/{path:path}", to_service_checked, methods=METHODS)
    return router
