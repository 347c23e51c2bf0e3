"""The record of housekeeping sweeps (``janitor_runs``): one row per sweep a janitor ran, with
what it did, for the web interface's overview. A sweep skipped because another replica held
its lease leaves none; rows older than :data:`KEPT` go as new ones come."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import delete, func, insert, select

from janitor import leases
from janitor.report import Report
from shared import db
from shared.models import JanitorRun, utcnow

KEPT = dt.timedelta(days=14)  # (the last run of each job stays, however old)


def due(name: str, interval: dt.timedelta) -> bool:
    """Whether sweep ``name`` is due: it never ran, or its last run (not a dry run) began about
    ``interval`` ago (5% early counts: a run that beat asks for on time begins a moment after
    the last one did, plus the queue's delay). Beat counts an interval from its own start (its
    schedule file is temporary in a container), so a sweep due once a week would never run
    under a beat restarted more often: beat asks hourly (``janitor.worker.DUE_CHECK_SECONDS``)
    and this answers."""
    with db.reading() as connection:
        last = connection.scalar(
            select(func.max(JanitorRun.started_at)).where(
                JanitorRun.job == name, JanitorRun.dry_run.is_(False)
            )
        )
    return last is None or last <= utcnow() - interval * 0.95


def run(name: str, work: Coroutine[Any, Any, Report]) -> Report | None:
    """Run the sweep ``work`` under its lease (``name``) and record it; None, with ``work``
    never started, when another janitor holds the lease."""
    with leases.lease(name) as mine:
        if not mine:
            work.close()
            return None
        started = utcnow()
        report = asyncio.run(work)
    db.retrying(record, report, started)
    return report


def record(report: Report, started: dt.datetime) -> None:
    finished = utcnow()
    with db.transaction() as session:
        session.execute(
            insert(JanitorRun).values(
                job=report.job,
                started_at=started,
                finished_at=finished,
                examined=report.examined,
                deleted=report.deleted,
                bytes_freed=report.bytes_freed,
                moved=report.moved,
                dry_run=report.dry_run,
            )
        )
        session.execute(
            delete(JanitorRun).where(
                JanitorRun.job == report.job, JanitorRun.finished_at < finished - KEPT
            )
        )
