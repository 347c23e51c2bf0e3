"""The record of housekeeping sweeps (``janitor_runs``): one row per sweep a janitor ran, with
what it did, for the web interface's overview. A sweep skipped because another replica held
its lease leaves none; rows older than :data:`KEPT` go as new ones come."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine
from typing import Any

from sqlalchemy import delete, insert

from janitor import leases
from janitor.report import Report
from shared import db
from shared.models import JanitorRun, utcnow

KEPT = dt.timedelta(days=14)


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
