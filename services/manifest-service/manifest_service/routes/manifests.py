"""``/v2/<name>/manifests/<reference>``: PUT, GET, HEAD and DELETE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from manifest_service import manifests, media_types, pull_through
from shared import mirrors, notifications, pulls
from shared.errors import ErrorCode, ManifestTooLarge, RegistryError
from shared.numbers import NumberInvalid, is_decimal, parse_decimal
from shared.reference import is_digest
from shared.settings import get_settings
from shared.web import Endpoint, repository_name


def _accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header admits ``media_type``. Only indexes are withheld from a
    client that lists media types without them, as the reference registry does: such a client
    cannot read an index and would fail on it."""
    if not accept or media_type not in media_types.INDEXES:
        return True
    offered = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(offered & (media_types.INDEXES | {"*/*", "application/*"}))


async def read_manifest(request: Request) -> Response:
    """GET and HEAD: the manifest, or its headers alone."""
    reference: str = request.path_params["reference"]
    name = repository_name(request)
    mirror = mirrors.configured().find(name)
    cache_status = None
    if mirror is None:
        try:
            stored = await manifests.get(name, reference)
        except RegistryError as exc:
            default = None
            if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                default = await mirrors.default_for(name)
            if default is None:
                raise
            mirror, name = default
    if mirror is not None:
        served = await pull_through.get(mirror, name, reference)
        stored, cache_status = served.manifest, served.cache_status
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
    if cache_status is not None:
        headers["Cache-Status"] = cache_status
    body = b""
    if request.method == "GET":
        body = stored.content
        tag = None if is_digest(reference) else reference
        await notifications.pulled(name, stored.digest, stored.media_type, len(body), tag=tag)
        if tag is not None and cache_status is None:  # a mirror's tags follow their upstream
            await pulls.pulled(name, tag)
    return Response(body, media_type=stored.media_type, headers=headers)


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


async def put_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference: str = request.path_params["reference"]
    manifests.check_reference(reference)
    body = await _read_limited(request, get_settings().max_manifest_size)
    pushed = await manifests.put(name, reference, body, request.headers.get("content-type"))
    headers = {
        "Location": f"/v2/{name}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
        "Content-Length": "0",
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    return Response(status_code=201, headers=headers)


async def delete_manifest(request: Request) -> Response:
    await manifests.delete_reference(repository_name(request), request.path_params["reference"])
    return Response(status_code=202, headers={"Content-Length": "0"})


PATH = "/v2/{name:path}/manifests/{reference}"
routes = [
    Endpoint(PATH, read_manifest, methods=["GET", "HEAD"]),
    Endpoint(PATH, put_manifest, methods=["PUT"]),
    Endpoint(PATH, delete_manifest, methods=["DELETE"]),
]
