"""Dependencies of the blob service's routes. All are coroutines: FastAPI would run plain
functions in a thread pool, a thread hop per request for nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from shared.reference import Digest, parse_digest, validate_name
from shared.storage import StorageDriver, get_storage
from shared.web import request_id


async def _name(name: Annotated[str, Path()]) -> str:
    return validate_name(name)


async def _digest(digest: Annotated[str, Path()]) -> Digest:
    return parse_digest(digest)


async def _request_id(request: Request) -> str:
    return request_id(request)


async def _storage() -> StorageDriver:
    return get_storage()


RepositoryName = Annotated[str, Depends(_name)]
PathDigest = Annotated[Digest, Depends(_digest)]
Storage = Annotated[StorageDriver, Depends(_storage)]
RequestId = Annotated[str, Depends(_request_id)]
