"""``/v2/<name>/tags/list``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from manifest_service import tags
from manifest_service.deps import RepositoryName
from manifest_service.pagination import next_link, page_size
from shared import db

router = APIRouter()


@router.get("/v2/{name:path}/tags/list")
async def list_tags(
    name: RepositoryName,
    n: Annotated[str | None, Query()] = None,
    last: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    size = page_size(n)
    names, more = await db.run_read(tags.list_tags, name, size, last)
    headers = {}
    if more and names:
        headers["Link"] = next_link(f"/v2/{name}/tags/list", size, names[-1])
    return JSONResponse({"name": name, "tags": names}, headers=headers)
