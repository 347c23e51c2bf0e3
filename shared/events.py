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
import queue
import threading
import time
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
    # No longer published (a push leaves the janitor nothing to do); kept so that events
    # queued by an earlier version are still read.
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
        options["broker_transport"] = "shared.filesystem_broker:Transport"
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


class _Outbox:
    """Events waiting to be sent, by one background thread per process: answering a client
    never waits for the broker (Starlette's background tasks would hold the connection until
    the send finished, delaying the client's next request on it)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=100_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-outbox", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("event dropped, outbox full: action=%s id=%s", event.action, event.id)

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            publish(event)

    def flush(self, timeout: float = 10) -> None:
        """Send what is waiting (at shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)


_outbox = _Outbox()


def publish_later(event: Event) -> None:
    """Queue ``event`` for the janitor; call it only after the transaction has committed. An
    event that cannot be sent is logged; reconcile finds the work it would have started."""
    _outbox.put(event)


def flush() -> None:
    _outbox.flush()


def broker_connection_check() -> None:
    """Raise unless the broker accepts a connection now (readiness)."""
    with _producer().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def publish(event: Event) -> None:
    """Send ``event`` to the janitor now. Call it only after the transaction has committed."""
    try:
        _producer().send_task(
            EVENT_TASK,
            args=[event.model_dump(mode="json")],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception:
        log.warning("event not published: action=%s id=%s", event.action, event.id, exc_info=True)
