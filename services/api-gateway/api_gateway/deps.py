"""Dependencies of the gateway's routes."""

from __future__ import annotations

from typing import Annotated

import aiohttp
from fastapi import Depends, Request

from shared.storage import StorageDriver


async def _client(request: Request) -> aiohttp.ClientSession:
    client: aiohttp.ClientSession = request.app.state.http
    return client


Client = Annotated[aiohttp.ClientSession, Depends(_client)]


async def _local_storage(request: Request) -> StorageDriver | None:
    storage: StorageDriver | None = request.app.state.local_storage
    return storage


LocalStorage = Annotated[StorageDriver | None, Depends(_local_storage)]
