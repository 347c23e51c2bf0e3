"""The janitor's Celery tasks: thin wrappers that run the housekeeping functions.

Every task is idempotent (each function re-reads the database and does nothing when the work
is done), acknowledged only after it ran (``acks_late``), retried with backoff on transient
database and storage errors only, and bounded in time. Periodic sweeps hold a lease, so that
several janitor replicas never run the same sweep at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from typing import Any

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError

from janitor import (
    gc,
    metrics,
    mirrors,
    notifications,
    promotion,
    reconcile,
    retention,
    runs,
    storage_sweep,
    uploads,
)
from janitor.claims import BlobBusy, ClaimLost
from janitor.report import Report
from janitor.worker import SWEEP_LIMIT, app
from shared import db
from shared import leases as shared_leases
from shared.events import EVENT_TASK, NOTIFY_TASK, Event
from shared.notifications import configured as configured_endpoints
from shared.observability import request_id_var
from shared.settings import get_settings
from shared.storage import StorageError, get_storage

log = logging.getLogger(__name__)

# A blob another task works on, a claim lost, or a task that could not be queued (the broker
# failed) is tried again later too.
TRANSIENT = (
    DBAPIError,
    StorageError,
    ConnectionError,
    TimeoutError,
    BrokerError,
    BlobBusy,
    ClaimLost,
)

common: dict[str, Any] = {
    "acks_late": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
}


@app.task(name=EVENT_TASK, time_limit=300, soft_time_limit=240, **common)
def handle_event(payload: dict[str, Any]) -> str:
    """The services' events: a committed upload is promoted, a cancelled one discarded. The
    others need no immediate work (their garbage-collection reviews are in the database)."""
    event = Event.parse(payload)
    request_id_var.set(event.request_id)
    log.info(
        "event action=%s repository=%s digest=%s request_id=%s",
        event.action,
        event.target.repository,
        event.target.digest,
        event.request_id,
    )
    if event.action == "notifications:recorded":  # as an earlier version sent it
        dispatch_notifications.delay(event.target.repository)
        return "dispatch"
    storage = get_storage()
    target = event.target
    if event.action == "blob:upload:committed" and target.digest:
        outcome = asyncio.run(promotion.promote(storage, target.digest, target.storage_key))
        return f"promote {outcome}"
    if event.action == "blob:upload:cancelled" and target.storage_key:
        discarded = asyncio.run(promotion.discard(storage, target.storage_key))
        return f"discard {discarded}"
    return event.action


def _sweep(name: str, work: Any) -> dict[str, Any]:
    report = runs.run(name, work)
    if report is None:
        return Report(name, skipped="another janitor holds its lease").as_dict()
    if name == "collect_garbage":
        metrics.GC_BYTES.inc(report.bytes_freed)
        metrics.GC_BLOBS.inc(report.deleted)
    elif name == "sweep_storage":
        metrics.ORPHANS.inc(report.deleted)
    log.info("%s", report.summary())
    return report.as_dict()


def _sweep_task(name: str) -> Any:
    return app.task(
        name=f"janitor.{name}", time_limit=SWEEP_LIMIT, soft_time_limit=SWEEP_LIMIT - 60, **common
    )


def _seconds(given: int | None) -> dt.timedelta | None:
    return None if given is None else dt.timedelta(seconds=given)


def _not_due(name: str, interval_seconds: int) -> dict[str, Any] | None:
    """For beat's calls (``when_due``): a skipped report when sweep ``name`` ran within its
    interval (``runs.due``), else None."""
    if runs.due(name, dt.timedelta(seconds=interval_seconds)):
        return None
    log.info("%s: not due (its last run began less than %d s ago)", name, interval_seconds)
    return Report(name, skipped="ran within its interval").as_dict()


@_sweep_task("purge_stale_uploads")
def purge_stale_uploads(
    older_than_seconds: int | None = None, when_due: bool = False
) -> dict[str, Any]:
    interval = get_settings().upload_purge_interval_seconds
    if when_due and (skipped := _not_due("purge_stale_uploads", interval)):
        return skipped
    work = uploads.purge_stale_uploads(get_storage(), older_than=_seconds(older_than_seconds))
    return _sweep("purge_stale_uploads", work)


@_sweep_task("collect_garbage")
def collect_garbage(
    grace_seconds: int | None = None, dry_run: bool = False, full: bool = False
) -> dict[str, Any]:
    work = gc.collect_garbage(
        get_storage(), grace=_seconds(grace_seconds), dry_run=dry_run, full=full
    )
    return _sweep("collect_garbage", work)


@_sweep_task("reconcile")
def reconcile_storage() -> dict[str, Any]:
    return _sweep("reconcile", reconcile.reconcile(get_storage()))


@_sweep_task("sweep_storage")
def sweep_storage(when_due: bool = False) -> dict[str, Any]:
    """A time slice of the walk of storage (``janitor.storage_sweep``); one that did not reach
    the end queues the next, which goes on where it stopped. With ``when_due`` (beat's
    calls), a walk begins only once the last one began an interval ago; one in progress goes
    on."""
    settings = get_settings()
    if (
        when_due
        and storage_sweep.position() is None
        and (skipped := _not_due("sweep_storage", settings.storage_sweep_interval_seconds))
    ):
        return skipped
    work = storage_sweep.sweep(get_storage(), seconds=settings.storage_sweep_segment_seconds)
    done = _sweep("sweep_storage", work)
    if done.get("resume_after"):
        sweep_storage.apply_async(countdown=1)
    return done


@_sweep_task("expire_mirrors")
def expire_mirrors() -> dict[str, Any]:
    return _sweep("expire_mirrors", mirrors.expire())


@_sweep_task("retention")
def apply_retention(dry_run: bool = False) -> dict[str, Any]:
    return _sweep("retention", retention.apply(dry_run=dry_run))


PRUNE_EVERY = dt.timedelta(minutes=10)


@app.task(name="janitor.notifications.deliver", time_limit=SWEEP_LIMIT, **common)
def deliver_notifications(endpoint: str, repository: str) -> int:
    """One stream's due events, in order (``janitor.notifications``)."""
    return notifications.deliver(endpoint, repository)


@app.task(name=NOTIFY_TASK, time_limit=SWEEP_LIMIT, **common)
def dispatch_notifications(repository: str | None = None) -> int:
    """A delivery task for every stream with an event due (of ``repository``: the events a
    change just recorded, sent by the service that recorded them); on its schedule, also
    prunes delivered events past retention. The one stream of a repository due is delivered
    by this task itself (it is on the deliveries' queue): one task a change, not two."""
    if not configured_endpoints().endpoints:
        return 0
    streams = notifications.due_streams(repository)
    if repository is not None and len(streams) == 1:
        notifications.deliver(*streams[0])
        return 1
    for endpoint, name in streams:
        deliver_notifications.delay(endpoint, name)
    # At most once per PRUNE_EVERY on all replicas: the lease is never released, and its
    # owner is this call alone (a later call of this process does not hold it).
    if repository is None and db.retrying(
        shared_leases.acquire, "notifications-prune", PRUNE_EVERY, owner=uuid.uuid4().hex
    ):
        notifications.prune()
    return len(streams)
