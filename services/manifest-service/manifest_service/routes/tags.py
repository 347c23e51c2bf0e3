"""``/v2/<name>/tags/list``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from manifest_service import tags
from manifest_service.pagination import next_link, page_size
from shared import db
from shared.reference import validate_name

router = APIRouter()


async def list_tags(request: Request) -> JSONResponse:
    """A plain Starlette route: a client walking a long list pages through it one request
    at a time, so each request's overhead counts."""
    request.state.route_name = TAGS_PATH  # (plain routes leave scope["route"] unset)
    name = validate_name(request.path_params["name"])
    size = page_size(request.query_params.get("n"))
    names, more = await db.run_read(tags.list_tags, name, size, request.query_params.get("last"))
    headers = {}
    if more and names:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", size, names[-1])
    return JSONResponse({"name": name, "tags": names}, headers=headers)


TAGS_PATH = "/v2/{name:path}/tags/list"
router.add_route(TAGS_PATH, list_tags, methods=["GET"])
