"""Blobs of mirrored namespaces (``shared.mirrors``), pulled through from their upstream.

A blob the repository does not hold is fetched from the upstream as a monolithic upload of
this registry's own: written to storage while its digest is computed, made visible only when
the digest matches (an upstream that sends other bytes leaves nothing behind), then served
like any other blob.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from blob_service import blobs, uploads
from shared.errors import ErrorCode, RegistryError
from shared.mirrors import Mirror
from shared.observability import MIRROR_BYTES_FETCHED, MIRROR_REQUESTS
from shared.reference import Digest
from shared.storage import StorageDriver
from shared.upstream import (
    UpstreamNotFound,
    UpstreamRefused,
    UpstreamUnavailable,
    unavailable,
    upstream,
)

HIT = "registry; hit"
MISS = "registry; fwd=miss; stored"


async def _counted(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        MIRROR_BYTES_FETCHED.inc(len(chunk))
        yield chunk


async def stat(
    storage: StorageDriver,
    mirror: Mirror,
    repository: str,
    digest: Digest,
    request_id: str | None,
) -> tuple[blobs.BlobInfo, str]:
    """The blob as the repository holds it, fetched first when it does not; and the
    ``Cache-Status`` to answer with."""
    try:
        info = await blobs.stat(repository, digest)
    except RegistryError as exc:
        if exc.code is not ErrorCode.BLOB_UNKNOWN:
            raise
        return await fetch(storage, mirror, repository, digest, request_id), MISS
    MIRROR_REQUESTS.labels("blob", "hit").inc()
    return info, HIT


async def fetch(
    storage: StorageDriver,
    mirror: Mirror,
    repository: str,
    digest: Digest,
    request_id: str | None,
) -> blobs.BlobInfo:
    """Fetch blob ``digest`` of ``repository`` from the mirror's upstream and store it."""
    name = mirror.upstream_name(repository)
    try:
        async with upstream(mirror).blob(name, str(digest)) as response:
            await uploads.monolithic(
                storage, repository, digest, _counted(response.aiter_bytes()), request_id
            )
    except UpstreamNotFound:
        MIRROR_REQUESTS.labels("blob", "miss").inc()
        raise RegistryError(
            ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to {name!r} at {mirror.url}"
        ) from None
    except (UpstreamUnavailable, UpstreamRefused) as exc:
        raise unavailable(mirror, "blob", f"blob {digest} of {name!r}", exc) from None
    except RegistryError as exc:
        if exc.code is not ErrorCode.DIGEST_INVALID:
            raise
        wrong = UpstreamRefused("it sent bytes of another digest")
        raise unavailable(mirror, "blob", f"blob {digest} of {name!r}", wrong) from None
    MIRROR_REQUESTS.labels("blob", "miss").inc()
    return await blobs.stat(repository, digest)
