"""Liveness and readiness: ``/healthz`` answers while the process runs; ``/readyz`` answers 200
only when what the service needs to serve (database, storage, the services behind it) answers,
so that an orchestrator sends it traffic only then. ``/metrics`` is served beside them.

The broker is reported by ``/readyz`` but does not make a service unready: events wait in the
database while it is down (``shared.events``) and every request is served all the same, so
taking every replica out of service for it would turn a broker outage into a registry one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from shared.observability import metrics_response
from shared.storage import get_storage
from shared.web import Endpoint

Check = Callable[[], Awaitable[None]]
TIMEOUT = 3.0


async def database() -> None:
    # (Imported here: the gateway, which reaches no database, does not load SQLAlchemy.)
    from sqlalchemy import text

    from shared import db

    def ping() -> None:
        with db.reading() as connection:
            connection.execute(text("SELECT 1"))

    await db.read(ping)


async def storage() -> None:
    await get_storage().size("healthz")


# The broker is checked on a thread of its own: a check that hangs (a host that drops packets)
# holds that thread only, never one of those the database work runs on.
_broker_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-check")


async def broker() -> None:
    from shared.events import broker_connection_check

    await asyncio.get_running_loop().run_in_executor(_broker_thread, broker_connection_check)


async def _result(check: Check) -> str:
    try:
        await asyncio.wait_for(check(), TIMEOUT)
    except Exception as exc:  # any failure means: not ready
        return f"failing: {type(exc).__name__}"
    return "ok"


async def _run(checks: dict[str, Check]) -> dict[str, str]:
    """Each check's result; run at once, so that an answer takes TIMEOUT at most (a probe
    waits 5 s)."""
    results = await asyncio.gather(*(_result(check) for check in checks.values()))
    return dict(zip(checks, results, strict=True))


def health_routes(
    checks: dict[str, Check], advisory: dict[str, Check] | None = None
) -> list[BaseRoute]:
    """``/healthz``, ``/readyz`` (running ``checks``, and ``advisory`` checks reported without
    deciding readiness) and ``/metrics``."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        results, advised = await asyncio.gather(_run(checks), _run(advisory or {}))
        ready = all(result == "ok" for result in results.values())
        body: dict[str, object] = {"ready": ready, "checks": results}
        if advisory:
            body["advisory"] = advised
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return metrics_response()

    return [
        Endpoint("/healthz", healthz, methods=["GET"]),
        Endpoint("/readyz", readyz, methods=["GET"]),
        Endpoint("/metrics", metrics, methods=["GET"]),
    ]


def service_reachable(url: str) -> Check:
    async def check() -> None:
        import aiohttp

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
            session.get(f"{url}/healthz") as response,
        ):
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")

    return check
