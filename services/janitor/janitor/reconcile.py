"""Reconcile storage with the database, from the database: finish what a lost event or a
killed worker left undone. Hourly; its cost follows what is unfinished, not the registry's
size (two indexed reads when nothing is).

1. Blobs still at their upload's key well after their upload finished are moved (promote).
2. Blobs left ``deleting`` by an interrupted sweep are deleted.

Objects no row knows are found by the storage sweep (``janitor.storage_sweep``), a rare walk of
storage; garbage collection's full mark, which gives a review to every unreferenced blob that
has none, is ``registry-admin gc --full`` (the changes themselves record reviews).
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from janitor.claims import BlobBusy
from janitor.gc import finish_deletion
from janitor.promotion import promote
from janitor.report import Progress, Report
from shared import db
from shared.models import BLOB_DELETING, BLOB_PRESENT, Blob, utcnow
from shared.settings import get_settings
from shared.storage import StorageDriver

log = logging.getLogger(__name__)


def _unfinished(promote_before: dt.datetime) -> tuple[list[str], list[str]]:
    """Blobs whose promotion is overdue, and blobs whose deletion began."""
    with db.reading() as connection:
        stragglers = list(
            connection.scalars(
                select(Blob.digest).where(
                    Blob.state == BLOB_PRESENT,
                    Blob.storage_key.like("uploads/%"),
                    Blob.created_at < promote_before,
                )
            )
        )
        deleting = list(connection.scalars(select(Blob.digest).where(Blob.state == BLOB_DELETING)))
    return stragglers, deleting


async def reconcile(storage: StorageDriver, *, progress: Progress = None) -> Report:
    """Finish the overdue moves and the deletions begun."""
    settings = get_settings()
    promote_after = dt.timedelta(seconds=settings.promote_delay_seconds)
    report = Report("reconcile")
    now = utcnow()

    stragglers, deleting = await db.read(_unfinished, now - promote_after)
    for digest in stragglers:
        report.tick(progress)
        try:
            if await promote(storage, digest) == "moved":
                report.moved += 1
        except BlobBusy:
            report.kept += 1  # another janitor task works on it
    for digest in deleting:
        report.tick(progress)
        try:
            freed = await finish_deletion(storage, digest)
        except BlobBusy:
            report.kept += 1
            continue
        if freed is not None:
            report.deleted += 1
            report.bytes_freed += freed

    return report
