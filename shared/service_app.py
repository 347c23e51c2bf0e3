"""The application of a service behind the gateway (the blob and the manifest service): what
both are made of, assembled once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shared import events, health, internal_auth, mirrors, notifications, read_cache, upstream
from shared.observability import ObservabilityMiddleware, configure_logging
from shared.settings import get_settings
from shared.web import (
    ApiVersionMiddleware,
    freeze_startup_heap,
    install_error_handlers,
    retry_later,
)


@asynccontextmanager
async def service_lifespan(app: Starlette) -> AsyncIterator[None]:
    """The event relay runs while the service does (``shared.events``); at shutdown it sends
    what is waiting, and what it cannot send stays in the database for another relay."""
    events.start_relay()
    freeze_startup_heap()
    yield
    await read_cache.close()
    await upstream.close()
    await asyncio.to_thread(events.stop_relay)


def service_app(
    service: str, routes: Sequence[BaseRoute], readiness: dict[str, health.Check], host: str
) -> Starlette:
    """A service's application (the blob or manifest service): its routes, health and
    readiness, the spec's errors, the internal secret, metrics and request ids, and the event
    relay while it runs. ``host`` is the address it listens on."""
    settings = get_settings()
    configure_logging(settings.log_level, service)
    # The mirrors and notifications files are read now: one that cannot be used stops the
    # service at start; and a notifications file with endpoints has its schema (pydantic)
    # loaded before the first request, not on the event loop during it.
    mirrors.read_at_start()
    notifications.read_at_start()
    health_routes = health.health_routes(readiness, advisory={"broker": health.broker})
    app = Starlette(routes=[*health_routes, *routes], lifespan=service_lifespan)
    install_error_handlers(app)
    database_failed = retry_later("database", trace=True)
    app.add_exception_handler(OperationalError, database_failed)
    app.add_exception_handler(PoolTimeout, database_failed)
    internal_auth.install(app, settings, host)
    app.add_middleware(ApiVersionMiddleware)
    app.add_middleware(ObservabilityMiddleware, service=service)
    return app
