"""Reconcile storage with the database: finish what a lost event or a killed worker left
undone, and delete what no row knows.

1. Blobs still at their upload's key well after their upload finished are moved (promote).
2. Blobs left ``deleting`` by an interrupted sweep are deleted.
3. Upload objects that no upload session and no blob uses (a cancelled upload whose event was
   lost, a purge interrupted between row and object) are deleted.
4. Blob objects that no blob row knows (a crash between storage and database) are deleted.

(Garbage collection's full mark, which gives a review to every unreferenced blob that has
none, is ``registry-admin gc --full``: the changes themselves record reviews.)

Objects younger than the grace period are never called orphans: their rows may be about to be
written. An orphan blob object is deleted under a claim on a row recorded as being deleted
(``janitor.claims``), so a concurrent upload of the same content revives that row with bytes
of its own rather than losing them; no database lock is held while storage works.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from janitor.claims import BlobBusy
from janitor.gc import finish_deletion
from janitor.promotion import discard, promote
from janitor.report import Progress, Report
from shared import db
from shared.models import BLOB_DELETING, BLOB_PRESENT, Blob, utcnow
from shared.settings import get_settings
from shared.storage import StorageDriver, keys

log = logging.getLogger(__name__)


def _present(digest: str) -> bool:
    """Whether a blob row owns the object (read first: most objects are owned, and claiming
    each would write)."""
    with db.reading() as connection:
        state = connection.scalars(select(Blob.state).where(Blob.digest == digest)).first()
    return state == BLOB_PRESENT


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


async def reconcile(
    storage: StorageDriver,
    *,
    grace: dt.timedelta | None = None,
    progress: Progress = None,
) -> Report:
    """Objects younger than ``grace`` (default: as configured) are never called orphans."""
    settings = get_settings()
    grace = dt.timedelta(seconds=settings.reconcile_grace_seconds) if grace is None else grace
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

    async for item in storage.list("uploads/"):
        report.tick(progress)
        if item.modified > now - grace or keys.upload_uuid_of_key(item.key) is None:
            continue
        if await discard(storage, item.key):
            log.info("reconcile deleted orphan upload object key=%s", item.key)
            report.deleted += 1
            report.bytes_freed += item.size

    async for item in storage.list("blobs/"):
        report.tick(progress)
        owner = keys.digest_of_blob_key(item.key)
        if owner is None or item.modified > now - grace:
            continue
        if await db.read(_present, str(owner)):
            report.kept += 1
            continue
        try:
            freed = await finish_deletion(storage, str(owner), orphan=(item.key, item.size))
        except BlobBusy:
            freed = None
        if freed is not None:
            log.info("reconcile deleted orphan blob object key=%s", item.key)
            report.deleted += 1
            report.bytes_freed += item.size
        else:
            report.kept += 1

    return report
