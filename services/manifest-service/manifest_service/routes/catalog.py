"""``/v2/_catalog``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from manifest_service import catalog
from manifest_service.pagination import next_link, page_size
from shared.web import Endpoint


async def list_repositories(request: Request) -> JSONResponse:
    size = page_size(request.query_params.get("n"))
    names, more = await catalog.list_repositories(size, request.query_params.get("last"))
    headers = {}
    if more and names:
        headers["Link"] = next_link("/v2/_catalog", size, names[-1])
    return JSONResponse({"repositories": names}, headers=headers)


routes = [Endpoint("/v2/_catalog", list_repositories, methods=["GET"])]
