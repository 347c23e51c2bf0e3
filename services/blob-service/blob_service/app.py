"""The blob service's ASGI application: ``create_app()``."""

from __future__ import annotations

from starlette.applications import Starlette

from blob_service.routes import blobs, uploads
from shared import health
from shared.service_app import service_app
from shared.settings import get_settings

SERVICE = "blob-service"


def create_app() -> Starlette:
    return service_app(
        SERVICE,
        # Upload routes first: their paths are more specific than /blobs/<digest>.
        [*uploads.routes, *blobs.routes],
        {"database": health.database, "storage": health.storage},
        get_settings().blob_service_host,
    )
