"""The janitor's Celery application: ``celery -A janitor.worker worker``.

It consumes the events the services publish (see ``shared.events``). The housekeeping those
events drive (moving objects, deleting cancelled uploads, garbage collection) is built on this
consumer; for now each event is validated and logged.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from shared.events import EVENT_TASK, Event, broker_options
from shared.settings import get_settings

log = logging.getLogger(__name__)

app = Celery("janitor")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    # Longer than the longest task, so Redis does not hand an unacknowledged task to a second
    # worker while the first still runs it.
    **broker_options(get_settings().broker_url),
)
app.conf.broker_transport_options = {
    **(app.conf.broker_transport_options or {}),
    "visibility_timeout": 3600,
}


@app.task(name=EVENT_TASK, acks_late=True, time_limit=300, soft_time_limit=240)
def handle_event(payload: dict[str, Any]) -> str:
    event = Event.model_validate(payload)
    log.info(
        "event action=%s repository=%s digest=%s request_id=%s",
        event.action,
        event.target.repository,
        event.target.digest,
        event.request_id,
    )
    return event.action
