"""``/v2/<name>/blobs/<digest>``: HEAD, GET (with ``Range``) and DELETE."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from blob_service import blobs
from blob_service.deps import PathDigest, RepositoryName, Storage
from blob_service.ranges import parse_range
from shared import db
from shared.blobs import open_blob
from shared.storage import keys
from shared.web import BYTE_RANGE_HEADER, SERVE_LOCALLY_HEADER, STORAGE_KEY_HEADER

router = APIRouter()

# Content under a digest never changes.
CACHE_CONTROL = "max-age=31536000, immutable"


def _headers(info: blobs.BlobInfo) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": info.digest,
        "ETag": f'"{info.digest}"',
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
    }


@router.head("/v2/{name:path}/blobs/{digest}")
async def head_blob(name: RepositoryName, digest: PathDigest) -> Response:
    info = await db.run_read(blobs.stat, name, digest)
    return Response(headers={**_headers(info), "Content-Length": str(info.size)})


@router.get("/v2/{name:path}/blobs/{digest}")
async def get_blob(
    name: RepositoryName, digest: PathDigest, request: Request, storage: Storage
) -> Response:
    info = await db.run_read(blobs.stat, name, digest)
    headers = _headers(info)
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


@router.delete("/v2/{name:path}/blobs/{digest}", status_code=202)
async def delete_blob(name: RepositoryName, digest: PathDigest) -> Response:
    await asyncio.to_thread(blobs.unlink, name, digest)
    return Response(status_code=202, headers={"Content-Length": "0"})
