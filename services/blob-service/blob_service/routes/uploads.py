"""``/v2/<name>/blobs/uploads/``: start, mount, monolithic and chunked uploads."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blob_service import uploads
from blob_service.ranges import parse_content_range
from shared.errors import ErrorCode, RegistryError
from shared.observability import UPLOADS_IN_PROGRESS
from shared.reference import parse_digest, validate_name
from shared.storage import get_storage
from shared.web import Endpoint, repository_name, request_id

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


async def start_upload(request: Request) -> Response:
    name = repository_name(request)
    query = request.query_params
    mount, digest = query.get("mount"), query.get("digest")
    if mount is not None:
        source = query.get("from")
        source_name = validate_name(source) if source is not None else None
        mounted = await uploads.mount(name, parse_digest(mount), source_name)
        if mounted is not None:
            return _created(name, mounted)
        # Not mountable: the spec says to start an ordinary upload instead.
    elif digest is not None:
        with IN_PROGRESS.track_inprogress():
            blob = await uploads.monolithic(
                get_storage(), name, parse_digest(digest), request.stream(), request_id(request)
            )
        return _created(name, blob)
    return _accepted(await uploads.start(name))


async def upload_chunk(request: Request) -> Response:
    header = request.headers.get("content-range")
    content_range = parse_content_range(header) if header else None
    name, upload_uuid = repository_name(request), request.path_params["upload_uuid"]
    with IN_PROGRESS.track_inprogress():
        state = await uploads.append(
            get_storage(), name, upload_uuid, request.stream(), content_range
        )
    return _accepted(state)


async def complete_upload(request: Request) -> Response:
    name, upload_uuid = repository_name(request), request.path_params["upload_uuid"]
    digest = request.query_params.get("digest")
    if digest is None:
        await uploads.find(name, upload_uuid)  # 404 for an unknown upload first
        raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
    with IN_PROGRESS.track_inprogress():
        blob = await uploads.complete(
            get_storage(),
            name,
            upload_uuid,
            parse_digest(digest),
            request.stream(),
            request_id(request),
        )
    return _created(name, blob)


async def upload_status(request: Request) -> Response:
    state = await uploads.find(repository_name(request), request.path_params["upload_uuid"])
    return Response(status_code=204, headers=uploads.upload_headers(state))


async def cancel_upload(request: Request) -> Response:
    name, upload_uuid = repository_name(request), request.path_params["upload_uuid"]
    await uploads.cancel(name, upload_uuid, request_id(request))
    return Response(status_code=204)


SESSION = "/v2/{name:path}/blobs/uploads/{upload_uuid}"
routes = [
    Endpoint("/v2/{name:path}/blobs/uploads/", start_upload, methods=["POST"]),
    Endpoint(SESSION, upload_chunk, methods=["PATCH"]),
    Endpoint(SESSION, complete_upload, methods=["PUT"]),
    Endpoint(SESSION, upload_status, methods=["GET"]),
    Endpoint(SESSION, cancel_upload, methods=["DELETE"]),
]
