"""Dependencies of the manifest service's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from shared.reference import validate_name
from shared.web import request_id


async def _name(name: Annotated[str, Path()]) -> str:
    return validate_name(name)


async def _request_id(request: Request) -> str:
    return request_id(request)


RepositoryName = Annotated[str, Depends(_name)]
RequestId = Annotated[str, Depends(_request_id)]
