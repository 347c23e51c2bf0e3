"""The janitor's Celery application: ``celery -A janitor.worker worker`` consumes the services'
events and runs the housekeeping tasks; ``celery -A janitor.worker beat`` schedules the
periodic sweeps (garbage collection, stale upload purging, reconcile), or ``worker
--beat-thread`` does both in one process (``REGISTRY_BEAT_IN_WORKER``, the embedded default)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import click
from celery import Celery, bootsteps
from celery.beat import Service
from celery.signals import setup_logging
from celery.worker import state as worker_state

from shared.events import broker_options
from shared.observability import configure_logging
from shared.settings import get_settings

log = logging.getLogger(__name__)

# The longest a sweep may run (seconds): the tasks' time limit.
SWEEP_LIMIT = 3000

# How often beat asks the sweeps of a longer interval (a day, a week) whether they are due.
DUE_CHECK_SECONDS = 3600

# Whether this worker takes the notification deliveries' queue (``python -m janitor worker``
# says): it then serves their backlog gauges.
takes_notifications = False
takes_janitor = True  # the housekeeping queue (set by ``python -m janitor worker --takes``)

settings = get_settings()

app = Celery("janitor", include=["janitor.tasks", "janitor.metrics"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_send_sent_event=True,
    worker_send_task_events=True,  # what Flower shows
    # The longest the worker's timer thread sleeps: the worker stops only once it has woken.
    worker_timer_precision=0.25,
    task_routes={"janitor.notifications.*": {"queue": settings.notifications_queue}},
    beat_schedule={
        "collect-garbage": {
            "task": "janitor.collect_garbage",
            "schedule": settings.gc_interval_seconds,
        },
        # A day's and a week's sweeps: beat asks hourly and each runs when due by its last
        # run (``janitor.runs.due``), not by beat's uptime.
        "purge-stale-uploads": {
            "task": "janitor.purge_stale_uploads",
            "schedule": min(settings.upload_purge_interval_seconds, DUE_CHECK_SECONDS),
            "kwargs": {"when_due": True},
        },
        "reconcile": {"task": "janitor.reconcile", "schedule": settings.reconcile_interval_seconds},
        "sweep_storage": {
            "task": "janitor.sweep_storage",
            "schedule": min(settings.storage_sweep_interval_seconds, DUE_CHECK_SECONDS),
            "kwargs": {"when_due": True},
        },
        "expire-mirrors": {
            "task": "janitor.expire_mirrors",
            "schedule": settings.mirror_expiry_interval_seconds,
        },
        "retention": {"task": "janitor.retention", "schedule": settings.retention_interval_seconds},
        **(
            {  # retries of notifications, and events whose own dispatch was lost
                "notifications": {
                    "task": "janitor.notifications.dispatch",
                    "schedule": settings.notifications_poll_seconds,
                }
            }
            if settings.notifications_file
            else {}
        ),
    },
    beat_schedule_filename=settings.beat_schedule_file,
    **broker_options(settings.broker_url, settings.broker_queue),
)
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    # Longer than the longest task, so that Redis does not hand a task that is still running,
    # unacknowledged, to a second worker.
    "visibility_timeout": 2 * SWEEP_LIMIT,
}


@setup_logging.connect
def _logging(**_: Any) -> None:
    # JSON lines like the services', with the request id of the event being handled.
    configure_logging(settings.log_level, "janitor")


class _Beat(threading.Thread):
    """Beat in a thread of the worker. A beat that stops on an error (its schedule file cannot
    be opened, say) stops the worker with status 1, so that whoever supervises it starts both
    again: never a worker that runs on with no beat."""

    def __init__(self, celery: Celery) -> None:
        super().__init__(name="Beat", daemon=True)
        self.celery = celery
        # A short longest sleep, so that the thread stops soon when the worker does (beat
        # looks for a stop between two sleeps; a tick reads a handful of entries).
        self.service = Service(
            celery, max_interval=0.25, schedule_filename=celery.conf.beat_schedule_filename
        )

    def run(self) -> None:
        self.celery.set_current()
        try:
            self.service.start()
        except Exception:
            log.exception("beat stopped; the worker stops with it")
            worker_state.should_stop = 1

    def stop(self) -> None:
        self.service.stop()
        self.join(timeout=10)


class BeatThread(bootsteps.StartStopStep):  # type: ignore[misc]
    """``worker --beat-thread``: beat runs in a thread of this worker (Celery's own ``--beat``
    forks a process for it)."""

    label = "Beat thread"
    conditional = True

    def __init__(self, worker: Any, beat_thread: bool = False, **kwargs: Any) -> None:
        self.enabled = beat_thread
        super().__init__(worker, **kwargs)

    def create(self, worker: Any) -> _Beat:
        return _Beat(worker.app)


app.user_options["worker"].add(
    click.Option(
        ["--beat-thread"], is_flag=True, default=False, help="Run beat in a thread of the worker."
    )
)
app.steps["worker"].add(BeatThread)
