"""``/v2/<name>/blobs/<digest>``: HEAD, GET (with ``Range``) and DELETE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from blob_service import blobs, pull_through
from blob_service.ranges import parse_range
from shared import mirrors, notifications
from shared.blobs import open_blob
from shared.errors import ErrorCode, RegistryError
from shared.reference import Digest, parse_digest
from shared.storage import get_storage, keys
from shared.web import (
    BYTE_RANGE_HEADER,
    FOLLOW_UPLOAD_HEADER,
    SERVE_LOCALLY_HEADER,
    STORAGE_KEY_HEADER,
    UPLOAD_KEY_HEADER,
    UPLOAD_LENGTH_HEADER,
    Endpoint,
    kernel_id,
    repository_name,
    request_id,
)

# Content under a digest never changes.
CACHE_CONTROL = "max-age=31536000, immutable"


def _headers(digest: str) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": digest,
        "ETag": f'"{digest}"',
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
    }


def _blob(request: Request) -> tuple[str, Digest]:
    return repository_name(request), parse_digest(request.path_params["digest"])


async def get_blob(request: Request) -> Response:
    """GET (the bytes, or the ``Range`` asked for) and HEAD (the headers alone)."""
    name, digest = _blob(request)
    storage = get_storage()
    mirror = mirrors.configured().find(name)
    cache_status = None
    if mirror is None:
        try:
            info = await blobs.stat(name, digest)
        except RegistryError as exc:
            default = None
            if exc.code is ErrorCode.BLOB_UNKNOWN:
                default = await mirrors.default_for(name)
            if default is None:
                raise
            mirror, name = default
    if mirror is not None:
        # A whole GET of a blob this request fetches is streamed to it as it comes.
        whole = request.method == "GET" and "range" not in request.headers
        served = await pull_through.serve(
            storage, mirror, name, digest, request_id(request), stream=whole
        )
        cache_status = served.cache_status
        if served.stream is not None:
            await _pulled(name, str(digest), served.size)
            headers = {**_headers(str(digest)), "Cache-Status": cache_status}
            gateway_kernel = request.headers.get(FOLLOW_UPLOAD_HEADER)
            if served.upload_key and gateway_kernel and gateway_kernel == kernel_id():
                # The gateway, on this machine, sends the bytes from the upload's file as it
                # is written.
                headers[UPLOAD_KEY_HEADER] = served.upload_key
                headers[UPLOAD_LENGTH_HEADER] = str(served.size)
                return StreamingResponse(pull_through.progress(served.stream), headers=headers)
            headers["Content-Length"] = str(served.size)
            return StreamingResponse(served.stream, headers=headers)
        assert served.info is not None
        info = served.info
    headers = _headers(info.digest)
    if cache_status is not None:
        headers["Cache-Status"] = cache_status
    if request.method == "HEAD":
        return Response(headers={**headers, "Content-Length": str(info.size)})
    await _pulled(name, info.digest, info.size)
    wanted = request.headers.get("range")
    span = parse_range(wanted, info.size) if wanted else None
    status = 200
    start, end = 0, info.size - 1
    if span is not None:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    if request.headers.get(SERVE_LOCALLY_HEADER) == "1" and info.size > 0:
        # The gateway reads the bytes from storage itself (see shared.web).
        headers[STORAGE_KEY_HEADER] = info.storage_key
        headers[BYTE_RANGE_HEADER] = f"{start}-{end}"
        return Response(status_code=status, headers=headers)
    if info.size > 0 and info.storage_key == keys.blob_key(digest):
        # Storage that serves clients itself (OSS with REGISTRY_OSS_REDIRECT): the client
        # fetches the bytes from there, as the reference registry's redirect option does.
        url = await storage.redirect_url(info.storage_key)
        if url is not None:
            return Response(
                status_code=307,
                headers={
                    "Location": url,
                    "Docker-Content-Digest": info.digest,
                    "Content-Length": "0",
                },
            )
    headers["Content-Length"] = str(end - start + 1)
    if info.size == 0:
        return Response(status_code=status, headers=headers)
    body = await open_blob(storage, info.storage_key, info.digest, start, end)
    return StreamingResponse(body, status_code=status, headers=headers)


async def _pulled(repository: str, digest: str, size: int | None) -> None:
    await notifications.pulled(
        repository, digest, notifications.BLOB_MEDIA_TYPE, size, kind="blobs"
    )


async def delete_blob(request: Request) -> Response:
    await blobs.unlink(*_blob(request))
    return Response(status_code=202, headers={"Content-Length": "0"})


PATH = "/v2/{name:path}/blobs/{digest}"
routes = [
    Endpoint(PATH, get_blob, methods=["GET", "HEAD"]),
    Endpoint(PATH, delete_blob, methods=["DELETE"]),
]
