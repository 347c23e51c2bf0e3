"""Events the services publish for the janitor, sent through Celery after the database commits.

The envelope follows the reference registry's notifications (``notifications/event.go``): an id,
a timestamp, an action such as ``blob:upload:committed``, a target (repository, digest, tag,
size, media type), the request id, and the source service. Publishing never fails a client's
request: an event that cannot be sent is logged, and the janitor's reconcile pass finds the
work it would have started.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from functools import lru_cache
from typing import Any, Literal

from celery import Celery
from pydantic import BaseModel, Field

from shared.settings import get_settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVENT_TASK = "janitor.events.handle"

Action = Literal[
    "blob:upload:committed",
    "blob:upload:cancelled",
    "blob:mounted",
    "blob:deleted",
    "manifest:pushed",
    "manifest:deleted",
    "tag:deleted",
]


class Target(BaseModel):
    repository: str
    digest: str | None = None
    tag: str | None = None
    size: int | None = None
    media_type: str | None = None
    upload_uuid: str | None = None
    storage_key: str | None = None


class Event(BaseModel):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    action: Action
    target: Target
    request_id: str | None = None
    source: str = ""
    schema_version: int = SCHEMA_VERSION


def broker_options(broker_url: str, queue: str) -> dict[str, Any]:
    """Celery settings for ``broker_url`` and ``queue``; ``filesystem://<folder>`` needs no
    server."""
    options: dict[str, Any] = {"broker_url": broker_url, "task_default_queue": queue}
    if broker_url.startswith("filesystem://"):
        from pathlib import Path

        folder = Path(broker_url.removeprefix("filesystem://") or "var/broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options["broker_url"] = "filesystem://"
        options["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The worker takes one message at a time (acks_late, prefetch 1) and this transport
            # waits a polling interval whenever it cannot hand out another: keep it short.
            "polling_interval": 0.05,
        }
    return options


@lru_cache
def _producer() -> Celery:
    app = Celery("registry-events")
    app.conf.update(
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        **broker_options(get_settings().broker_url, get_settings().broker_queue),
    )
    return app


def publish(event: Event) -> None:
    """Send ``event`` to the janitor. Call it only after the transaction has committed."""
    try:
        _producer().send_task(
            EVENT_TASK,
            args=[event.model_dump(mode="json")],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        log.warning("event not published: action=%s id=%s", event.action, event.id, exc_info=True)
