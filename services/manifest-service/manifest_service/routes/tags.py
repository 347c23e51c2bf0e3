"""``/v2/<name>/tags/list``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from manifest_service import tags
from manifest_service.pagination import next_link, page_size
from shared import mirrors
from shared.web import Endpoint, repository_name


async def list_tags(request: Request) -> JSONResponse:
    name = repository_name(request)
    size = page_size(request.query_params.get("n"))
    stored = mirrors.configured().stored_name(name)
    names, more = await tags.list_tags(stored, size, request.query_params.get("last"))
    headers = {}
    if more and names:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", size, names[-1])
    return JSONResponse({"name": name, "tags": names}, headers=headers)


routes = [Endpoint("/v2/{name:path}/tags/list", list_tags, methods=["GET"])]
