"""The janitor's Prometheus metrics, served on ``REGISTRY_JANITOR_METRICS_PORT`` by the process
that runs the tasks: the worker's prefork child, or the worker itself with a pool of threads.
Flower's ``/metrics`` adds Celery's own view: events, task runtimes and states across all
workers."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.settings import get_settings

log = logging.getLogger(__name__)

TASKS = Counter("registry_janitor_tasks_total", "Janitor tasks run", ["task", "outcome"])
TASK_DURATION = Histogram(
    "registry_janitor_task_duration_seconds",
    "Time a janitor task ran",
    ["task"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600),
)
GC_BYTES = Counter(
    "registry_gc_bytes_reclaimed_total", "Bytes of storage freed by garbage collection"
)
GC_BLOBS = Counter("registry_gc_blobs_deleted_total", "Blobs deleted by garbage collection")
ORPHANS = Counter(
    "registry_reconcile_objects_deleted_total",
    "Objects no row knew (orphans), deleted by the storage sweep",
)

NOTIFICATIONS = Counter(
    "registry_notifications_total",
    "Notification attempts by endpoint and outcome (delivered, failed, parked)",
    ["endpoint", "outcome"],
)
NOTIFICATION_LATENCY = Histogram(
    "registry_notification_delivery_seconds",
    "From the change to its event's delivery",
    ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)


class NotificationBacklog(Collector):
    """Each endpoint's pending and parked events and the age of its oldest pending one, read
    from the database when scraped (the same on every replica: the table is the truth)."""

    def collect(self) -> Any:
        from janitor.notifications import pending_by_endpoint

        pending = GaugeMetricFamily(
            "registry_notifications_pending", "Events not yet delivered", labels=["endpoint"]
        )
        parked = GaugeMetricFamily(
            "registry_notifications_parked", "Events parked after failing", labels=["endpoint"]
        )
        oldest = GaugeMetricFamily(
            "registry_notifications_oldest_pending_age_seconds",
            "Age of the oldest event not yet delivered",
            labels=["endpoint"],
        )
        try:
            found = pending_by_endpoint()
        except Exception as exc:  # the database unreachable: no figures, not a failed scrape
            log.warning("notification backlog not read: %s", exc)
            return
        for endpoint, (waiting, stuck, age) in sorted(found.items()):
            pending.add_metric([endpoint], waiting)
            parked.add_metric([endpoint], stuck)
            oldest.add_metric([endpoint], age)
        yield from (pending, parked, oldest)


class QuotaUsage(Collector):
    """Each repository under a quota: its storage and tags and their limits, counted from the
    database when scraped (``registry-admin quota``'s figures)."""

    def collect(self) -> Any:
        from shared import db, policies
        from shared.repositories import under_quota

        families = {
            key: GaugeMetricFamily(f"registry_quota_{key}", text, labels=["repository"])
            for key, text in (
                (
                    "storage_bytes",
                    "Bytes of the distinct blobs the repository's manifests reference",
                ),
                ("storage_limit_bytes", "The repository's storage quota"),
                ("tags", "Tags of the repository"),
                ("tags_limit", "The repository's tag quota"),
            )
        }
        try:
            with db.reading() as connection:
                found = under_quota(connection, policies.configured())
        except Exception as exc:  # the database unreachable: no figures, not a failed scrape
            log.warning("quota usage not read: %s", exc)
            return
        for name, quota, held in found:
            families["storage_bytes"].add_metric([name], held.storage)
            families["tags"].add_metric([name], held.tags)
            if quota.storage is not None:
                families["storage_limit_bytes"].add_metric([name], int(quota.storage))
            if quota.tags is not None:
                families["tags_limit"].add_metric([name], quota.tags)
        yield from families.values()


_started: dict[str, float] = {}


@worker_init.connect
def _serve_unless_prefork(sender: Any = None, **_: Any) -> None:
    pool = getattr(sender, "pool_cls", "")
    if "prefork" not in (pool if isinstance(pool, str) else pool.__module__):
        _serve()


@worker_process_init.connect
def _serve(**_: Any) -> None:
    settings = get_settings()
    port = settings.janitor_metrics_port
    if port:
        try:
            start_http_server(port, addr=settings.janitor_metrics_host)
        except OSError as exc:  # a second worker on this machine: its metrics stay unserved
            log.warning("janitor metrics not served on port %s: %s", port, exc)
            return
        from janitor import worker

        if settings.notifications_file and worker.takes_notifications:
            REGISTRY.register(NotificationBacklog())
        if settings.policies_file and worker.takes_janitor:
            REGISTRY.register(QuotaUsage())


@task_prerun.connect
def _started_task(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _finished_task(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    name = getattr(task, "name", "unknown")
    TASKS.labels(name, (state or "unknown").lower()).inc()
    began = _started.pop(task_id or "", None)
    if began is not None:
        TASK_DURATION.labels(name).observe(time.perf_counter() - began)


@task_failure.connect
def _failed_task(sender: Any = None, **_: Any) -> None:
    log.warning("janitor task failed: %s", getattr(sender, "name", "unknown"))
