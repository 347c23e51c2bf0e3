"""The manifest service's ASGI application: ``create_app()``."""

from __future__ import annotations

from fastapi import FastAPI

from manifest_service.routes import catalog, manifests, referrers, tags
from shared import health, internal_auth
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.web import ApiVersionMiddleware, install_error_handlers, service_lifespan

SERVICE = "manifest-service"


def create_app() -> FastAPI:
    configure_logging(get_settings().log_level, SERVICE)
    app = FastAPI(title=SERVICE, docs_url=None, redoc_url=None, lifespan=service_lifespan)
    app.include_router(health.health_router({"database": health.database, "broker": health.broker}))
    app.include_router(catalog.router)
    app.include_router(manifests.router)
    app.include_router(tags.router)
    app.include_router(referrers.router)
    install_error_handlers(app)
    internal_auth.install(app, get_settings(), get_settings().manifest_service_host)
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=SERVICE)
    return app
