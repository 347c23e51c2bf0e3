"""What every HTTP service of the registry answers the same way: errors, the API version header,
request ids and logs.

All errors leave in the spec's body ``{"errors": [{code, message, detail}]}``; an unexpected
exception is logged with its traceback and answered 500 ``UNKNOWN`` with no trace in the body;
an unreachable or locked database and a failing storage backend are answered 503 ``UNAVAILABLE``
with ``Retry-After``, as nothing was recorded and the request may be sent again.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ErrorCode, RegistryError, error_body
from shared.reference import validate_name
from shared.storage import StorageError

log = logging.getLogger("registry")

API_VERSION_HEADER = ("Docker-Distribution-Api-Version", "registry/2.0")
REQUEST_ID_HEADER = "X-Request-Id"

# Between the gateway and the blob service only (the gateway drops any such header a client
# sends): when the gateway can read the storage itself (a local filesystem), it asks the blob
# service for a blob's location instead of its bytes, and sends the bytes from the file, the
# way a web server honours X-Accel-Redirect. One copy of the bytes through Python, not two.
INTERNAL_PREFIX = "x-registry-internal-"
SERVE_LOCALLY_HEADER = INTERNAL_PREFIX + "serve-locally"
STORAGE_KEY_HEADER = INTERNAL_PREFIX + "storage-key"
BYTE_RANGE_HEADER = INTERNAL_PREFIX + "byte-range"
# A blob a mirror fetches while a client waits for it: a gateway that can send files itself
# says so (FOLLOW_UPLOAD_HEADER), and the blob service then answers with the upload's key
# (UPLOAD_KEY_HEADER) and the blob's length (UPLOAD_LENGTH_HEADER), its body lines telling
# how far the fetch has gone (``blob_service.pull_through.progress``): the gateway sends the
# bytes from the file as it is written, the last one once the blob is verified and stored.
# The gateway's value is its kernel's boot id (``kernel_id``): a file being written is read
# coherently only through the kernel that writes it (on a shared network filesystem another
# machine may see a grown file before its bytes), so the blob service follows an upload only for
# a gateway on its own machine (or pod), and sends the bytes otherwise.
FOLLOW_UPLOAD_HEADER = INTERNAL_PREFIX + "follow-upload"
UPLOAD_KEY_HEADER = INTERNAL_PREFIX + "upload-key"
UPLOAD_LENGTH_HEADER = INTERNAL_PREFIX + "upload-length"


@cache
def kernel_id() -> str:
    """This machine's kernel, as long as it runs (Linux's boot id; empty elsewhere)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


# Who made the request, as the gateway authenticated them (absent: anonymous).
ACTOR_HEADER = INTERNAL_PREFIX + "actor"
# The web interface's forms: the field each form sends back, checked by the gateway before it
# forwards a post. With a session, it must be the session's own token, which the gateway hands
# the page in UI_CSRF_HEADER; without one (the sign-in form), equal to the cookie the page set.
UI_CSRF_COOKIE = "registry_csrf"
UI_CSRF_FIELD = "csrf"
UI_CSRF_HEADER = INTERNAL_PREFIX + "form-token"
# The signed-in session's id, with ACTOR_HEADER: the manifest service shows nothing of the user's
# to a session signed out since (``ui_ended_sessions``).
UI_SESSION_HEADER = INTERNAL_PREFIX + "session"
UI_SESSION_EXPIRES_HEADER = INTERNAL_PREFIX + "session-expires"  # seconds since the epoch


def freeze_startup_heap() -> None:
    """Put every object alive once the process has started (modules, the application, its
    routes) out of the cyclic garbage collector's reach. A full collection walks every
    tracked object (80,000 in the manifest service after start-up, 48 ms here) while the
    process answers nothing: the requests waiting then were the slowest ones. Called when the
    service starts serving."""
    gc.collect()
    gc.freeze()


def error_response(
    code: ErrorCode,
    detail: str | None = None,
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    head: bool = False,
) -> Response:
    all_headers = {API_VERSION_HEADER[0]: API_VERSION_HEADER[1], **(headers or {})}
    if head:
        # A HEAD answer has no body; its status and headers carry the error.
        return Response(status_code=status or code.status, headers=all_headers)
    return JSONResponse(
        error_body(code, detail), status_code=status or code.status, headers=all_headers
    )


def request_id(request: Request) -> str:
    assigned: str | None = getattr(request.state, "request_id", None)
    return assigned or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


class Endpoint(Route):
    """A route of the registry's: a plain endpoint, ``async (request) -> Response``. Its path
    pattern labels the request's metrics (never the path, which names a repository); an
    endpoint may name what it did more closely (the gateway's forwarding route names the API
    route it forwarded)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["route_name"] = self.path
        await super().handle(scope, receive, send)


def repository_name(request: Request) -> str:
    """The repository a ``/v2/{name:path}/...`` route names, checked against the spec's grammar."""
    return validate_name(request.path_params["name"])


def install_error_handlers(app: Starlette) -> None:
    """The answers every HTTP process gives; a service adds the database's
    (``shared.service_app``)."""

    async def registry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RegistryError)
        return error_response(
            exc.code,
            exc.detail,
            status=exc.status,
            headers=exc.headers,
            head=request.method == "HEAD",
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = ErrorCode.UNSUPPORTED if exc.status_code == 405 else ErrorCode.NOT_FOUND
        return error_response(
            code,
            f"{request.method} {request.url.path}",
            status=exc.status_code,
            head=request.method == "HEAD",
        )

    async def client_gone(request: Request, exc: Exception) -> Response:
        # The client closed the connection before its body ended: nothing was kept (storage
        # writes are undone), and nobody is left to read this answer.
        log.info("client disconnected method=%s path=%s", request.method, request.url.path)
        return error_response(
            ErrorCode.BLOB_UPLOAD_INVALID,
            "the request body ended early",
            head=request.method == "HEAD",
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error(
            "unhandled error method=%s path=%s", request.method, request.url.path, exc_info=exc
        )
        return error_response(ErrorCode.UNKNOWN, "internal error", head=request.method == "HEAD")

    app.add_exception_handler(RegistryError, registry_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(StorageError, retry_later("storage backend", trace=False))
    app.add_exception_handler(Exception, unexpected)


def retry_later(backend: str, *, trace: bool) -> Callable[..., Awaitable[Response]]:
    """503 ``UNAVAILABLE`` with ``Retry-After``: the storage backend failed (after the driver's
    own retries), or the database could not be reached or granted a lock in time (SQLite's
    busy timeout, InnoDB's lock wait after the retries). Nothing was recorded, and the client
    may send the request again."""

    async def handler(request: Request, exc: Exception) -> Response:
        log.warning(
            "%s error method=%s path=%s: %s",
            backend,
            request.method,
            request.url.path,
            exc,
            exc_info=exc if trace else None,
        )
        return error_response(
            ErrorCode.UNAVAILABLE,
            f"the {backend} is unavailable; retry the request",
            headers={"Retry-After": "1"},
            head=request.method == "HEAD",
        )

    return handler


class ApiVersionMiddleware:
    """Adds ``Docker-Distribution-Api-Version`` to every response (the spec's "API version
    check"), errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h
                    for h in message.get("headers", [])
                    if h[0].lower() != b"docker-distribution-api-version"
                ]
                headers.append((b"docker-distribution-api-version", b"registry/2.0"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)
