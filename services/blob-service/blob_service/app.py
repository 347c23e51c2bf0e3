"""The blob service's ASGI application: ``create_app()``."""

from __future__ import annotations

from fastapi import FastAPI

from blob_service.routes import blobs, uploads
from shared.settings import get_settings
from shared.web import (
    ApiVersionMiddleware,
    configure_logging,
    install_error_handlers,
    service_lifespan,
)


def create_app() -> FastAPI:
    configure_logging(get_settings().log_level)
    app = FastAPI(title="blob-service", docs_url=None, redoc_url=None, lifespan=service_lifespan)
    # Upload routes first: their paths are more specific than /blobs/<digest>.
    app.include_router(uploads.router)
    app.include_router(blobs.router)
    install_error_handlers(app)
    app.add_middleware(ApiVersionMiddleware)
    return app
