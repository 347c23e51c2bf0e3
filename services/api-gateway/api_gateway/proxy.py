"""Forwarding a request to a service and its answer back, streamed both ways.

Bodies are never held: the client's request body is handed to httpx as an async iterator of
chunks (with its ``Content-Length`` when it has one), and the service's answer is relayed chunk
by chunk as it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from shared.errors import ErrorCode, RegistryError
from shared.web import REQUEST_ID_HEADER

# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the gateway sets itself.
_DROP_REQUEST = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "expect",
}
_DROP_RESPONSE = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "date",
    "server",
}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def make_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=5.0, read=300.0, write=300.0, pool=30.0),
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        follow_redirects=False,
    )


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def forward(
    client: httpx.AsyncClient, base_url: str, path: str, request: Request, request_id: str
) -> Response:
    headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_REQUEST]
    headers.append((REQUEST_ID_HEADER.lower(), request_id))
    if request.client is not None:
        headers.append(("x-forwarded-for", request.client.host))
    query = request.url.query
    url = f"{base_url}{path}" + (f"?{query}" if query else "")
    content = _body(request) if request.method in _BODY_METHODS else None
    if content is not None and request.headers.get("content-length") == "0":
        content = None
        headers.append(("content-length", "0"))
    upstream_request = client.build_request(request.method, url, headers=headers, content=content)
    try:
        upstream = await client.send(upstream_request, stream=True)
    except ClientDisconnect:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID, "the client closed the request before its body ended"
        ) from None
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise RegistryError(
            ErrorCode.UNAVAILABLE, f"the service is unreachable ({type(exc).__name__})"
        ) from None
    except httpx.TransportError as exc:
        raise RegistryError(
            ErrorCode.UNAVAILABLE, f"the service failed to answer ({type(exc).__name__})"
        ) from None
    response_headers = [
        (k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _DROP_RESPONSE
    ]
    return _relay(upstream, response_headers)


def _relay(upstream: httpx.Response, headers: list[tuple[str, str]]) -> Response:
    response = StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        background=BackgroundTask(upstream.aclose),
    )
    # Replace the headers wholesale: the service's Content-Length (or none) is the right one.
    response.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return response
