"""The application of a service behind the gateway (the blob and the manifest service): what
both are made of, assembled once."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.routing import BaseRoute

from shared import health, internal_auth
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.web import ApiVersionMiddleware, install_error_handlers, service_lifespan


def service_app(
    service: str, routes: Sequence[BaseRoute], readiness: dict[str, health.Check], host: str
) -> FastAPI:
    """A service's application (the blob or manifest service): its routes, health and
    readiness, the spec's errors, the internal secret, metrics and request ids, and the event
    relay while it runs. ``host`` is the address it listens on."""
    settings = get_settings()
    configure_logging(settings.log_level, service)
    app = FastAPI(title=service, docs_url=None, redoc_url=None, lifespan=service_lifespan)
    app.router.routes.extend([*health.health_routes(readiness), *routes])
    install_error_handlers(app)
    internal_auth.install(app, settings, host)
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=service)
    return app
