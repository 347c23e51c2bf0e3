"""``/v2/<name>/referrers/<digest>``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from manifest_service import referrers
from manifest_service.media_types import OCI_INDEX
from shared import mirrors
from shared.reference import parse_digest
from shared.web import Endpoint, repository_name


async def list_referrers(request: Request) -> JSONResponse:
    name = repository_name(request)
    digest: str = request.path_params["digest"]
    parse_digest(digest)
    artifact_type = request.query_params.get("artifactType")
    stored = mirrors.configured().stored_name(name)
    index = await referrers.referrers(stored, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    return JSONResponse(index, media_type=OCI_INDEX, headers=headers)


routes = [Endpoint("/v2/{name:path}/referrers/{digest}", list_referrers, methods=["GET"])]
