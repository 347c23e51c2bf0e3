"""The gateway's ASGI application: ``create_app()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api_gateway import auth
from api_gateway.limits import ClientRateLimitMiddleware, HeaderLimitMiddleware, request_limits
from api_gateway.proxy import make_client
from api_gateway.routes import ui, v2
from shared import health, internal_auth, mirrors
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.storage import StorageDriver, get_storage
from shared.web import ApiVersionMiddleware, freeze_startup_heap, install_error_handlers

SERVICE = "api-gateway"


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Requests with bodies may be many and slow (uploads over bad links): a larger pool of
    # their own, so that they wait neither for each other nor take the reads' connections.
    async with make_client() as reads, make_client(limit=4096) as writes:
        app.state.http = reads
        app.state.http_writes = writes
        app.state.local_storage = local_storage()
        freeze_startup_heap()
        yield


def local_storage() -> StorageDriver | None:
    """The storage, when this gateway may read it itself: a filesystem it shares with the
    blob service (``REGISTRY_GATEWAY_READS_STORAGE``, on by default)."""
    if not get_settings().gateway_reads_storage:
        return None
    storage = get_storage()
    return storage if storage.local else None


def _readiness() -> dict[str, health.Check]:
    settings = get_settings()
    checks = {
        "blob-service": health.service_reachable(settings.service_url("blob")),
        "manifest-service": health.service_reachable(settings.service_url("manifest")),
    }
    if local_storage() is not None:
        checks["storage"] = health.storage
    return checks


def create_app() -> Starlette:
    configure_logging(get_settings().log_level, SERVICE)
    mirrors.read_at_start()
    routes = health.health_routes(_readiness())
    settings = get_settings()
    # Authentication, limits and the internal secret: each only when configured, so that the
    # default (anonymous) gateway's routes do no work for them.
    setup = auth.configure(settings)
    if setup.issuer is not None:
        from api_gateway.routes import token

        routes += token.build_routes(setup.issuer)
    routes += ui.build_routes(setup, internal_auth.gateway_headers(settings))
    routes += v2.build_routes(
        setup.guard, request_limits(settings), internal_auth.gateway_headers(settings)
    )
    app = Starlette(routes=routes, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(
        HeaderLimitMiddleware,
        max_bytes=settings.max_header_bytes,
        max_count=settings.max_header_count,
    )
    if settings.rate_limit_client_per_second > 0:
        app.add_middleware(
            ClientRateLimitMiddleware,
            rate=settings.rate_limit_client_per_second,
            burst=settings.rate_limit_client_burst,
        )
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=SERVICE, assign_request_ids=True)
    if settings.forwarded_allow_ips.strip():
        # Outermost: every check above counts the client the trusted proxy names.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips)
    return app
