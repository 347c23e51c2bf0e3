"""The storage sweep: a walk of every object in storage for those no row knows, deleted.

Such objects come only from failures between storage and database (a crash after an object was
written and before its row, a cancelled upload whose event was lost, a purge interrupted
between row and object), so the walk is rare (``REGISTRY_STORAGE_SWEEP_INTERVAL_SECONDS``, a
week by default) while the hourly ``reconcile`` works from the database alone. Its cost is
bounded and steady:

- **Resumable.** Objects are listed in key order, and the key a walk has finished is kept
  (``janitor_cursors``) after every page: a walk stopped by a restart, or at the end of its
  time slice (``REGISTRY_STORAGE_SWEEP_SEGMENT_SECONDS``), goes on from there.
- **Rate-limited.** At most ``REGISTRY_STORAGE_SWEEP_RATE`` objects a second: on OSS, a
  LIST request for each 1,000 objects and two database reads for each page.
- **Batched.** A page of blob objects is checked against the database in one statement.

Objects younger than the grace period are never called orphans: their rows may be about to be
written. An orphan blob object is deleted under a claim on a row recorded as being deleted
(``janitor.claims``), so a concurrent upload of the same content revives that row with bytes
of its own rather than losing them; no database lock is held while storage works.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from sqlalchemy import delete, select

from janitor.claims import BlobBusy
from janitor.gc import finish_deletion
from janitor.promotion import discard
from janitor.report import Progress, Report
from shared import db
from shared.models import BLOB_PRESENT, Blob, JanitorCursor, utcnow
from shared.settings import get_settings
from shared.storage import ObjectInfo, StorageDriver, keys

log = logging.getLogger(__name__)

CURSOR = "storage_sweep"
PREFIXES = ("blobs/", "uploads/")  # in key order
PAGE = 500


def position() -> tuple[str, dt.datetime] | None:
    """Where the walk in progress stands (the last key done) and since when; None between
    walks."""
    with db.reading() as connection:
        row = connection.execute(
            select(JanitorCursor.position, JanitorCursor.updated_at).where(
                JanitorCursor.name == CURSOR
            )
        ).first()
    return None if row is None else (row[0], row[1])


def _save(key: str | None) -> None:
    with db.transaction() as session:
        if key is None:
            session.execute(delete(JanitorCursor).where(JanitorCursor.name == CURSOR))
        else:
            session.merge(JanitorCursor(name=CURSOR, position=key, updated_at=utcnow()))


def _owned(digests: list[str]) -> set[str]:
    """Those of ``digests`` a present blob row owns (read first: most objects are owned, and
    claiming each would write)."""
    with db.reading() as connection:
        return set(
            connection.scalars(
                select(Blob.digest).where(Blob.digest.in_(digests), Blob.state == BLOB_PRESENT)
            )
        )


class _Pace:
    """At most ``rate`` objects a second (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.began = time.monotonic()
        self.count = 0

    async def passed(self, count: int) -> None:
        self.count += count
        if self.rate > 0:
            ahead = self.count / self.rate - (time.monotonic() - self.began)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def sweep(
    storage: StorageDriver,
    *,
    grace: dt.timedelta | None = None,
    seconds: float | None = None,
    rate: float | None = None,
    progress: Progress = None,
    restart: bool = False,
) -> Report:
    """Walk on from where the walk in progress stopped (or from the start; with ``restart``,
    that walk is dropped, under the sweep's lease like the walk itself, so never under a
    walker's feet), for at most ``seconds`` (None: to the end) at ``rate`` objects a second
    (default: as configured). The report's ``resume_after`` is where it stopped, None when the
    walk is done."""
    settings = get_settings()
    grace = dt.timedelta(seconds=settings.reconcile_grace_seconds) if grace is None else grace
    pace = _Pace(settings.storage_sweep_rate if rate is None else rate)
    deadline = None if seconds is None else time.monotonic() + seconds
    report = Report("sweep_storage")
    now = utcnow()
    if restart:
        await db.write(_save, None)
    where = await db.read(position)
    after = where[0] if where else ""
    for prefix in PREFIXES:
        if after >= prefix and not after.startswith(prefix):
            continue  # walked already
        page: list[ObjectInfo] = []
        async for item in storage.list(prefix, after if after.startswith(prefix) else ""):
            page.append(item)
            if len(page) == PAGE:
                await _check(storage, prefix, page, now - grace, report, progress)
                after = page[-1].key
                await db.write(_save, after)
                await pace.passed(len(page))
                page = []
                if deadline is not None and time.monotonic() > deadline:
                    report.resume_after = after
                    return report
        if page:
            await _check(storage, prefix, page, now - grace, report, progress)
            await pace.passed(len(page))
    await db.write(_save, None)
    return report


async def _check(
    storage: StorageDriver,
    prefix: str,
    page: list[ObjectInfo],
    young: dt.datetime,
    report: Report,
    progress: Progress,
) -> None:
    """Delete the orphans of ``page`` (objects under ``prefix``)."""
    for _ in page:
        report.tick(progress)
    old = [item for item in page if item.modified <= young]
    if prefix == "uploads/":
        for item in old:
            if keys.upload_uuid_of_key(item.key) is None:
                continue
            if await discard(storage, item.key):
                log.info("storage sweep deleted orphan upload object key=%s", item.key)
                report.deleted += 1
                report.bytes_freed += item.size
        return
    owners = {item.key: keys.digest_of_blob_key(item.key) for item in old}
    owned = await db.read(_owned, sorted({str(d) for d in owners.values() if d is not None}))
    for item in old:
        owner = owners[item.key]
        if owner is None:
            continue
        if str(owner) in owned:
            report.kept += 1
            continue
        try:
            freed = await finish_deletion(storage, str(owner), orphan=(item.key, item.size))
        except BlobBusy:
            freed = None
        if freed is not None:
            log.info("storage sweep deleted orphan blob object key=%s", item.key)
            report.deleted += 1
            report.bytes_freed += item.size
        else:
            report.kept += 1
