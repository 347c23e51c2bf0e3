"""The gateway's ASGI application: ``create_app()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api_gateway.limits import HeaderLimitMiddleware
from api_gateway.proxy import make_client
from api_gateway.routes import v2
from shared import health
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.storage import StorageDriver, get_storage
from shared.web import ApiVersionMiddleware, install_error_handlers

SERVICE = "api-gateway"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with make_client() as client:
        app.state.http = client
        app.state.local_storage = local_storage()
        yield


def local_storage() -> StorageDriver | None:
    """The storage, when this gateway may read it itself: a filesystem it shares with the
    blob service (``REGISTRY_GATEWAY_READS_STORAGE``, on by default)."""
    if not get_settings().gateway_reads_storage:
        return None
    storage = get_storage()
    return storage if storage.local_path("blobs") is not None else None


def _readiness() -> dict[str, health.Check]:
    settings = get_settings()
    checks = {
        "blob-service": health.service_reachable(settings.service_url("blob")),
        "manifest-service": health.service_reachable(settings.service_url("manifest")),
    }
    if local_storage() is not None:
        checks["storage"] = health.storage
    return checks


def create_app() -> FastAPI:
    configure_logging(get_settings().log_level, SERVICE)
    app = FastAPI(title=SERVICE, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.include_router(health.health_router(_readiness()))
    app.include_router(v2.router)
    install_error_handlers(app)
    settings = get_settings()
    app.add_middleware(
        HeaderLimitMiddleware,
        max_bytes=settings.max_header_bytes,
        max_count=settings.max_header_count,
    )
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=SERVICE, assign_request_ids=True)
    return app
