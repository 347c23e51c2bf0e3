"""Uploads nobody finished: sessions idle for longer than the purge age are deleted with their
data (as the reference registry's upload purging does, by default after a week)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select

from janitor.report import Progress, Report
from shared import db
from shared.models import Upload, utcnow
from shared.settings import get_settings
from shared.storage import StorageDriver


def _take_stale(cutoff: dt.datetime, batch: int) -> list[tuple[str, str]]:
    with db.transaction() as session:
        stale = session.execute(
            select(Upload.uuid, Upload.storage_key)
            .where(Upload.updated_at < cutoff)
            .order_by(Upload.updated_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).all()
        if stale:
            session.execute(delete(Upload).where(Upload.uuid.in_([uuid for uuid, _ in stale])))
    return [(uuid, key) for uuid, key in stale]


async def purge_stale_uploads(
    storage: StorageDriver,
    *,
    older_than: dt.timedelta | None = None,
    batch: int = 200,
    progress: Progress = None,
) -> Report:
    """Rows first (in batches that replicas split between them), then their objects: a crash
    in between leaves only an orphan object, which reconcile deletes. ``older_than`` is as
    configured unless given."""
    if older_than is None:
        older_than = dt.timedelta(seconds=get_settings().upload_purge_age_seconds)
    report = Report("purge_stale_uploads")
    cutoff = utcnow() - older_than
    while True:
        stale = await db.write(_take_stale, cutoff, batch)
        if not stale:
            return report
        for _, key in stale:
            report.tick(progress)
            size = await storage.size(key)
            await storage.delete(key)
            report.deleted += 1
            report.bytes_freed += size or 0
