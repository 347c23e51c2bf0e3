"""Dependencies of the gateway's routes."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request


async def _client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.http
    return client


Client = Annotated[httpx.AsyncClient, Depends(_client)]
