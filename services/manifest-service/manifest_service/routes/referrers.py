"""``/v2/<name>/referrers/<digest>``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from manifest_service import referrers
from manifest_service.deps import RepositoryName
from manifest_service.media_types import OCI_INDEX
from shared.reference import parse_digest

router = APIRouter()


@router.get("/v2/{name:path}/referrers/{digest}")
async def list_referrers(
    name: RepositoryName,
    digest: str,
    artifact_type: Annotated[str | None, Query(alias="artifactType")] = None,
) -> JSONResponse:
    parse_digest(digest)
    # In a worker thread whatever the database: a subject may have many referrers.
    index = await asyncio.to_thread(referrers.referrers, name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    return JSONResponse(index, media_type=OCI_INDEX, headers=headers)
