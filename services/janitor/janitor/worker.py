"""The janitor's Celery application: ``celery -A janitor.worker worker`` consumes the services'
events and runs the housekeeping tasks; ``celery -A janitor.worker beat`` schedules the
periodic sweeps (garbage collection, stale upload purging, reconcile)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from shared.events import broker_options
from shared.observability import configure_logging
from shared.settings import get_settings

# The longest a sweep may run (seconds): the tasks' time limit.
SWEEP_LIMIT = 3000

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
    beat_schedule={
        "collect-garbage": {
            "task": "janitor.collect_garbage",
            "schedule": settings.gc_interval_seconds,
        },
        "purge-stale-uploads": {
            "task": "janitor.purge_stale_uploads",
            "schedule": settings.upload_purge_interval_seconds,
        },
        "reconcile": {"task": "janitor.reconcile", "schedule": settings.reconcile_interval_seconds},
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
