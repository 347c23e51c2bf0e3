"""``/v2/_catalog``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from manifest_service import catalog
from manifest_service.pagination import next_link, page_size
from shared import db

router = APIRouter()


@router.get("/v2/_catalog")
async def list_repositories(
    n: Annotated[str | None, Query()] = None,
    last: Annotated[str | None, Query()] = None,
) -> JSONResponse:
    size = page_size(n)
    names, more = await db.run_read(catalog.list_repositories, size, last)
    headers = {}
    if more and names:
        headers["Link"] = next_link("/v2/_catalog", size, names[-1])
    return JSONResponse({"repositories": names}, headers=headers)
