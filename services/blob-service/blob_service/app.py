"""The blob service's ASGI application: ``create_app()``."""

from __future__ import annotations

from fastapi import FastAPI

from blob_service.routes import blobs, uploads
from shared import health, internal_auth
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.web import ApiVersionMiddleware, install_error_handlers, service_lifespan

SERVICE = "blob-service"


def create_app() -> FastAPI:
    configure_logging(get_settings().log_level, SERVICE)
    app = FastAPI(title=SERVICE, docs_url=None, redoc_url=None, lifespan=service_lifespan)
    app.include_router(
        health.health_router(
            {"database": health.database, "storage": health.storage, "broker": health.broker}
        )
    )
    # Upload routes first: their paths are more specific than /blobs/<digest>.
    app.include_router(uploads.router)
    app.include_router(blobs.router)
    install_error_handlers(app)
    internal_auth.install(app, get_settings(), get_settings().blob_service_host)
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=SERVICE)
    return app
