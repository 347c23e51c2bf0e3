"""The registry's processes and the commands that start them.

``make run`` (``python -m shared.runner``), the tests and the deployment files start the same
commands, defined here once. The modules are named as strings: ``shared`` imports no service.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]
    url: str | None  # where it answers HTTP, if it does


def _uvicorn(
    factory: str, host: str, port: int, log_level: str, http: str = "httptools", *options: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        http,
        # No WebSocket support: nothing here speaks it (uvicorn would import a WebSocket
        # library into every HTTP process otherwise).
        "--ws",
        "none",
        "--no-access-log",
        "--log-level",
        log_level,
        "--timeout-graceful-shutdown",
        "30",
        *options,
    ]


# The gateway, the only public port: its connections have time limits and a cap per client
# (``api_gateway.connections``), and it believes X-Forwarded-For only from the proxies its
# settings name (its app applies them; uvicorn's default would believe anything on 127.0.0.1).
GATEWAY_PROTOCOL = "api_gateway.connections:GatewayProtocol"


def _janitor(command: str, *options: str, level: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "janitor",
        command,
        "--loglevel",
        level.upper(),
        *options,
    ]


_IN_ONE = ("--pool", "threads", "--beat-thread")


def processes(settings: Settings) -> list[Process]:
    level = settings.log_level
    http = [
        Process(
            "blob-service",
            _uvicorn(
                "blob_service.app:create_app",
                settings.blob_service_host,
                settings.blob_service_port,
                level,
            ),
            # Where it listens (the service URL settings say where the gateway finds it).
            f"http://{settings.blob_service_host}:{settings.blob_service_port}",
        ),
        Process(
            "manifest-service",
            _uvicorn(
                "manifest_service.app:create_app",
                settings.manifest_service_host,
                settings.manifest_service_port,
                level,
            ),
            f"http://{settings.manifest_service_host}:{settings.manifest_service_port}",
        ),
        Process(
            "api-gateway",
            _uvicorn(
                "api_gateway.app:create_app",
                settings.gateway_host,
                settings.gateway_port,
                level,
                GATEWAY_PROTOCOL,
                "--no-proxy-headers",
            ),
            f"http://{settings.gateway_host}:{settings.gateway_port}",
        ),
    ]
    worker = ("--concurrency", "1", "--hostname", "janitor@%h")
    if settings.beat_in_worker:
        # One process: the tasks of both queues in a thread, beat in another.
        argv = _janitor("worker", *worker, *_IN_ONE, level=level)
        return [*http, Process("janitor", argv, None)]
    found = [
        *http,
        Process("janitor", _janitor("worker", *worker, "--takes", "janitor", level=level), None),
        Process(
            "janitor-beat",
            _janitor("beat", "--schedule", settings.beat_schedule_file, level=level),
            None,
        ),
    ]
    if settings.notifications_file:
        # Deliveries apart from the rest, one task at a time in a prefork child, as the
        # janitor's (replicas deliver several streams at once). Not a pool of threads: with
        # Redis as the broker, a connection lost while a thread acknowledges a task can stop
        # that worker for good (kombu's Redis transport).
        notify = ("--takes", "notifications", "--concurrency", "1",
                  "--hostname", "notifications@%h")  # fmt: skip
        found.append(
            Process("janitor-notifications", _janitor("worker", *notify, level=level), None)
        )
    return found
