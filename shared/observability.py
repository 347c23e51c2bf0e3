"""Metrics, structured logs and request ids, the same in every process.

Metrics are Prometheus metrics, served at ``/metrics`` by each HTTP service (and by the janitor
on its own port). Logs are JSON lines carrying the request id: the gateway gives every request
one (or keeps the client's ``X-Request-Id``), passes it to the services, and the services put it
into the events the janitor consumes.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pythonjsonlogger.json import JsonFormatter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.blobs import TransferAborted

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
# The request being served (its ASGI scope), for what records who asked: notifications.
request_scope_var: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "request_scope", default=None
)

REQUESTS = Counter(
    "registry_http_requests_total",
    "HTTP requests answered",
    ["service", "route", "method", "status"],
)
DURATION = Histogram(
    "registry_http_request_duration_seconds",
    "Time to answer an HTTP request, until the last byte of the answer was sent",
    ["service", "route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
REQUEST_BYTES = Counter(
    "registry_http_request_bytes_total", "Bytes of request bodies received", ["service"]
)
RESPONSE_BYTES = Counter(
    "registry_http_response_bytes_total", "Bytes of response bodies sent", ["service"]
)
UPLOADS_IN_PROGRESS = Gauge(
    "registry_uploads_in_progress",
    "Upload requests (PATCH, PUT, POST with a body) being received",
    ["service"],
)

CLIENT_CONNECTIONS_REFUSED = Counter(
    "registry_client_connections_refused_total",
    "Connections refused at the gateway: the client address held its cap of connections",
)
CLIENTS_CUT_OFF = Counter(
    "registry_clients_cut_off_total",
    "Requests cut off at the gateway for sending too slowly, by phase (headers, body, request)",
    ["phase"],
)

# ASGI's zero-copy send extension: its message type (the gateway implements it).
ZERO_COPY_SEND = "http.response.zerocopysend"
MIRROR_REQUESTS = Counter(
    "registry_mirror_requests_total",
    "Reads of mirrored namespaces, by kind (manifest, blob) and result: hit (served from the "
    "cache), miss (fetched from the upstream), stale (the upstream failed, the cached copy "
    "served), error (the upstream failed and nothing was cached)",
    ["kind", "result"],
)
MIRROR_UPSTREAM_ERRORS = Counter(
    "registry_mirror_upstream_errors_total",
    "Requests to an upstream registry that failed, by mirror namespace",
    ["namespace"],
)
MIRROR_BYTES_FETCHED = Counter(
    "registry_mirror_bytes_fetched_total", "Blob bytes fetched from upstream registries"
)
UPLOAD_BYTES_READ_BACK = Counter(
    "registry_upload_bytes_read_back_total",
    "Bytes of uploads read back from storage to verify their digest, the running hash not being "
    "in the process that completed them (chunks through another replica, a restart, sha512)",
)
SENDFILE_BYTES = Counter(
    "registry_gateway_sendfile_bytes_total",
    "Response bytes the gateway's kernel sent from files (sendfile), not passing through Python",
)


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class ObservabilityMiddleware:
    """Counts and times every request by route (the route's pattern, not the path, so that
    repository names do not make a label each), and sets the request id for the logs."""

    def __init__(self, app: ASGIApp, service: str, assign_request_ids: bool = False) -> None:
        self.app = app
        self.service = service
        # The gateway gives every request an id (the client's X-Request-Id, or a new one) and
        # returns it; the services take the one the gateway sent.
        self.assign_request_ids = assign_request_ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = 0
        sent = 0
        incoming = next((v for k, v in reversed(scope["headers"]) if k == b"x-request-id"), None)
        request_id = incoming.decode("latin-1")[:128] if incoming else None
        state = scope.setdefault("state", {})  # where the route that serves it writes its name
        if self.assign_request_ids:
            request_id = request_id or uuid.uuid4().hex
            state["request_id"] = request_id
        token = request_id_var.set(request_id)
        scope_token = request_scope_var.set(scope)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.assign_request_ids and request_id is not None:
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", request_id.encode()),
                    ]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                sent += message.get("count") or 0
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            route = str(state.get("route_name", "unmatched"))
            method = scope["method"]
            REQUESTS.labels(self.service, route, method, str(status)).inc()
            DURATION.labels(self.service, route, method).observe(time.perf_counter() - started)
            REQUEST_BYTES.labels(self.service).inc(received)
            RESPONSE_BYTES.labels(self.service).inc(sent)
            request_id_var.reset(token)
            request_scope_var.reset(scope_token)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _AbortedTransferFilter(logging.Filter):
    """The server's record of a blob transfer aborted mid-body, as one warning line instead
    of a traceback: the storage's failure is already described by the exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TransferAborted):
            record.msg = "blob transfer aborted after the answer started: %s"
            record.args = (record.exc_info[1],)
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(level: str, service: str) -> None:
    """JSON lines on stderr for this process and the libraries it runs (uvicorn, Celery)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(_AbortedTransferFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # (uvicorn.access is left as uvicorn set it: off with --no-access-log.)
    for name in ("uvicorn", "uvicorn.error", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for name in ("httpx", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
