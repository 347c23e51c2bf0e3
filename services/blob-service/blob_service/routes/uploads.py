"""``/v2/<name>/blobs/uploads/``: start, mount, monolithic and chunked uploads."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from blob_service import uploads
from blob_service.deps import RepositoryName, RequestId, Storage
from blob_service.ranges import parse_content_range
from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.observability import UPLOADS_IN_PROGRESS
from shared.reference import parse_digest, validate_name

router = APIRouter()
IN_PROGRESS = UPLOADS_IN_PROGRESS.labels("blob-service")


def _created(name: str, blob: uploads.CommittedBlob) -> Response:
    return Response(
        status_code=201,
        headers={
            "Location": f"/v2/{name}/blobs/{blob.digest}",
            "Docker-Content-Digest": blob.digest,
            "Content-Length": "0",
        },
    )


def _accepted(state: uploads.UploadState) -> Response:
    return Response(
        status_code=202, headers={**uploads.upload_headers(state), "Content-Length": "0"}
    )


@router.post("/v2/{name:path}/blobs/uploads/")
async def start_upload(
    name: RepositoryName,
    request: Request,
    storage: Storage,
    request_id: RequestId,
    digest: Annotated[str | None, Query()] = None,
    mount: Annotated[str | None, Query()] = None,
    source: Annotated[str | None, Query(alias="from")] = None,
) -> Response:
    if mount is not None:
        mount_digest = parse_digest(mount)
        source_name = validate_name(source) if source is not None else None
        mounted = await asyncio.to_thread(uploads.mount, name, mount_digest, source_name)
        if mounted is not None:
            return _created(name, mounted)
        # Not mountable: the spec says to start an ordinary upload instead.
    elif digest is not None:
        with IN_PROGRESS.track_inprogress():
            blob = await uploads.monolithic(
                storage, name, parse_digest(digest), request.stream(), request_id
            )
        return _created(name, blob)
    state = await asyncio.to_thread(uploads.start, name)
    return _accepted(state)


@router.patch("/v2/{name:path}/blobs/uploads/{upload_uuid}")
async def upload_chunk(
    name: RepositoryName, upload_uuid: str, request: Request, storage: Storage
) -> Response:
    header = request.headers.get("content-range")
    content_range = parse_content_range(header) if header else None
    with IN_PROGRESS.track_inprogress():
        state = await uploads.append(storage, name, upload_uuid, request.stream(), content_range)
    return _accepted(state)


@router.put("/v2/{name:path}/blobs/uploads/{upload_uuid}")
async def complete_upload(
    name: RepositoryName,
    upload_uuid: str,
    request: Request,
    storage: Storage,
    request_id: RequestId,
    digest: Annotated[str | None, Query()] = None,
) -> Response:
    if digest is None:
        await db.run_read(uploads.find, name, upload_uuid)  # 404 for an unknown upload first
        raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    with IN_PROGRESS.track_inprogress():
        blob = await uploads.complete(
            storage, name, upload_uuid, parse_digest(digest), request.stream(), request_id
        )
    return _created(name, blob)


@router.get("/v2/{name:path}/blobs/uploads/{upload_uuid}")
async def upload_status(name: RepositoryName, upload_uuid: str) -> Response:
    state = await db.run_read(uploads.find, name, upload_uuid)
    return Response(status_code=204, headers=uploads.upload_headers(state))


@router.delete("/v2/{name:path}/blobs/uploads/{upload_uuid}")
async def cancel_upload(name: RepositoryName, upload_uuid: str, request_id: RequestId) -> Response:
    await uploads.cancel(name, upload_uuid, request_id)
    return Response(status_code=204)
