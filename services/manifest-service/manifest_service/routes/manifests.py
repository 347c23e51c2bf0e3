"""``/v2/<name>/manifests/<reference>``: PUT, GET, HEAD and DELETE."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from manifest_service import manifests, media_types
from manifest_service.deps import RepositoryName
from shared import db
from shared.errors import ErrorCode, ManifestTooLarge, RegistryError
from shared.numbers import NumberInvalid, is_decimal, parse_decimal
from shared.reference import validate_name
from shared.settings import get_settings

router = APIRouter()


def _accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header admits ``media_type``. Only indexes are withheld from a
    client that lists media types without them, as the reference registry does: such a client
    cannot read an index and would fail on it."""
    if not accept or media_type not in media_types.INDEXES:
        return True
    offered = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(offered & (media_types.INDEXES | {"*/*", "application/*"}))


async def _serve(name: str, reference: str, request: Request, with_body: bool) -> Response:
    stored = await db.run_read(manifests.get, name, reference)
    if not _accepts(",".join(request.headers.getlist("accept")), stored.media_type):
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest {reference!r} is an index ({stored.media_type}), "
            "which the Accept header does not list",
        )
    headers = {
        "Docker-Content-Digest": stored.digest,
        "ETag": f'"{stored.digest}"',
        "Content-Length": str(len(stored.content)),
    }
    return Response(
        stored.content if with_body else b"", media_type=stored.media_type, headers=headers
    )


async def read_manifest(request: Request) -> Response:
    """GET and HEAD: the hottest route of a registry, a plain Starlette route (nothing for
    FastAPI's dependency machinery to resolve)."""
    request.state.route_name = MANIFEST_PATH  # (plain routes leave scope["route"] unset)
    name = validate_name(request.path_params["name"])
    reference: str = request.path_params["reference"]
    return await _serve(name, reference, request, with_body=request.method == "GET")


MANIFEST_PATH = "/v2/{name:path}/manifests/{reference}"
router.add_route(MANIFEST_PATH, read_manifest, methods=["GET", "HEAD"])


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ManifestTooLarge(f"manifests are limited to {limit} bytes")
    # The HTTP server has checked the framing; a declared length above the limit is refused
    # before any byte is read.
    if declared is not None and is_decimal(declared):
        try:
            parse_decimal(declared, limit)
        except NumberInvalid:
            raise too_large from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@router.put("/v2/{name:path}/manifests/{reference}")
async def put_manifest(
    name: RepositoryName,
    reference: str,
    request: Request,
) -> Response:
    manifests.check_reference(reference)
    body = await _read_limited(request, get_settings().max_manifest_size)
    pushed = await asyncio.to_thread(
        manifests.put, name, reference, body, request.headers.get("content-type")
    )
    headers = {
        "Location": f"/v2/{name}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
        "Content-Length": "0",
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    return Response(status_code=201, headers=headers)


@router.delete("/v2/{name:path}/manifests/{reference}")
async def delete_manifest(name: RepositoryName, reference: str) -> Response:
    await asyncio.to_thread(manifests.delete_reference, name, reference)
    return Response(status_code=202, headers={"Content-Length": "0"})
