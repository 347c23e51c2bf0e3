"""The gateway's routes: the API version check, and everything else under ``/v2/`` forwarded to
the service the route table names."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api_gateway import routing
from api_gateway.deps import Client, LocalStorage
from api_gateway.proxy import forward
from shared.settings import get_settings
from shared.web import request_id

router = APIRouter()


@router.api_route("/v2/", methods=["GET", "HEAD"])
async def api_version() -> Response:
    return JSONResponse({})


@router.get("/v2/_ping")
async def ping() -> Response:
    return JSONResponse({"status": "OK"})


@router.api_route(
    "/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
)
async def to_service(request: Request, client: Client, storage: LocalStorage) -> Response:
    raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    raw_path = raw_path.split("?", 1)[0]
    found = routing.match(raw_path, request.method)
    request.state.route_name = found.route.name
    base_url = get_settings().service_url(found.route.service)
    serve_locally = storage if found.route.blob_bytes and request.method == "GET" else None
    return await forward(client, base_url, found.path, request, request_id(request), serve_locally)
