"""The manifest service's ASGI application: ``create_app()``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount

from manifest_service.routes import catalog, manifests, referrers, tags
from manifest_service.ui import Interface
from shared import health, policies
from shared.service_app import service_app
from shared.settings import get_settings

SERVICE = "manifest-service"


def create_app() -> Starlette:
    policies.read_at_start()
    return service_app(
        SERVICE,
        [
            *catalog.routes,
            *manifests.routes,
            *tags.routes,
            *referrers.routes,
            Mount("/ui", app=Interface()),
        ],
        {"database": health.database},
        get_settings().manifest_service_host,
    )
