"""Online garbage collection: blobs no manifest references, and (by policy) manifests no tag,
index or living subject refers to. The registry stays writable throughout.

Reviews: every change that can leave a blob unreferenced records a review of it, in its own
transaction (``shared.reviews``), so a run reads the review queue only: its cost follows what
changed, not the size of the registry. A full mark (``registry-admin gc --full``) walks the
whole blobs table and gives every unreferenced blob older than the grace period a due review,
for a review lost; it is resumable (a walk taken up goes on to the last digest, then from
the first to where it began). Sweep: due reviews are taken one at a time with
``FOR UPDATE SKIP LOCKED``; for each, under the blob row's lock:

1. the blob's repository links are deleted first: a manifest PUT that is checking them holds
   them share-locked, so this waits for it to commit;
2. a locking read then looks for any manifest referencing the blob, which sees every
   committed PUT. If one exists the links are put back (savepoint rollback) and the blob kept;
3. otherwise the blob is marked ``deleting`` (absent to every reader) and the transaction
   commits. A manifest PUT that comes after sees no link and fails cleanly with
   ``MANIFEST_BLOB_UNKNOWN``, and the client pushes the blob again;
4. its objects are deleted under a claim on the row (``janitor.claims``), holding no
   database lock, and only then the row: a crash in between leaves a ``deleting`` row that the
   next sweep or reconcile finishes, never a visible row without bytes. An upload of the same
   content meanwhile revives the row with bytes of its own, which the deletion leaves alone.

On SQLite every write transaction holds the database's write lock, which serialises steps 1-3
with a single janitor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import TypeVar

from sqlalchemy import Select, delete, exists, select
from sqlalchemy.orm import Session

from janitor.claims import BlobBusy, claimed
from janitor.report import Progress, Report
from shared import db
from shared.models import (
    BLOB_DELETING,
    BLOB_PRESENT,
    Blob,
    BlobReview,
    JanitorCursor,
    Manifest,
    ManifestReference,
    ManifestReview,
    RepositoryBlob,
    Tag,
    utcnow,
)
from shared.reference import parse_digest
from shared.repositories import delete_manifest
from shared.reviews import review_blobs, review_manifests
from shared.settings import get_settings
from shared.storage import StorageDriver, keys

log = logging.getLogger(__name__)

NOW = dt.timedelta(0)


def _unreferenced_blobs(cutoff: dt.datetime) -> Select[str, int]:
    """Blobs older than ``cutoff`` that no manifest in any repository references."""
    return select(Blob.digest, Blob.size).where(
        Blob.state == BLOB_PRESENT,
        Blob.created_at < cutoff,
        ~exists().where(ManifestReference.digest == Blob.digest),
    )


def _unreferenced(cutoff: dt.datetime, due_by: dt.datetime | None) -> list[tuple[str, int]]:
    """What a sweep would delete: of the blobs with a review due by ``due_by``, or of all
    (None: after a full mark)."""
    query = _unreferenced_blobs(cutoff)
    if due_by is not None:
        query = query.join(BlobReview, BlobReview.digest == Blob.digest).where(
            BlobReview.review_after <= due_by
        )
    with db.reading() as connection:
        return list(connection.execute(query).tuples())


MARK_CURSOR = "gc_mark"


def mark(cutoff: dt.datetime, batch: int = 1000) -> int:
    """Give every unreferenced blob older than ``cutoff`` that has no review a review due now
    (a review already recorded keeps its time: a later one is there for a reason). A walk of
    the whole blobs table, in batches by digest; where a run stopped is kept with each batch
    (``janitor_cursors``), and the next run goes on from there to the last digest, then from
    the first up to where it began: every run looks at every blob, however long ago the walk it
    took up stopped."""
    marked = 0
    with db.transaction() as session:
        cursor = session.get(JanitorCursor, MARK_CURSOR)
        began = cursor.position if cursor is not None else ""
    last, until = began, None  # until: the wrapped-around part ends at the digest it began at
    while True:
        with db.transaction() as session:
            query = (
                _unreferenced_blobs(cutoff)
                .with_only_columns(Blob.digest)
                .where(Blob.digest > last, ~exists().where(BlobReview.digest == Blob.digest))
            )
            if until is not None:
                query = query.where(Blob.digest <= until)
            digests = list(session.scalars(query.order_by(Blob.digest).limit(batch)))
            if not digests and until is None and began:
                last, until = "", began  # on from the first digest
                continue
            if not digests:
                session.execute(delete(JanitorCursor).where(JanitorCursor.name == MARK_CURSOR))
                return marked
            review_blobs(session, digests, "unreferenced", delay=NOW)
            session.merge(
                JanitorCursor(name=MARK_CURSOR, position=digests[-1], updated_at=utcnow())
            )
        marked += len(digests)
        last = digests[-1]


def mark_manifests(cutoff: dt.datetime, batch: int = 1000) -> int:
    """Give every untagged manifest older than ``cutoff`` that has no review a review due now
    (for garbage collection of untagged manifests: an index or a living subject may still
    hold it, which its review looks at). A walk of the manifests in batches by id; one
    stopped starts again from the first, and skips what it reviewed already."""
    marked, last = 0, 0
    while True:
        with db.transaction() as session:
            ids = list(
                session.scalars(
                    select(Manifest.id)
                    .where(
                        Manifest.id > last,
                        Manifest.created_at < cutoff,
                        ~exists().where(Tag.manifest_id == Manifest.id),
                        ~exists().where(ManifestReview.manifest_id == Manifest.id),
                    )
                    .order_by(Manifest.id)
                    .limit(batch)
                )
            )
            if not ids:
                return marked
            review_manifests(session, ids, "untagged", delay=NOW)
        marked += len(ids)
        last = ids[-1]


def _due_by(grace: dt.timedelta) -> dt.datetime:
    """Reviews were recorded due after the configured grace period; a run with a shorter one
    (``registry-admin gc --grace 0s``) takes them that much earlier."""
    configured = dt.timedelta(seconds=get_settings().gc_grace_seconds)
    return utcnow() + max(NOW, configured - grace)


Review = TypeVar("Review", BlobReview, ManifestReview)


def _next_due(session: Session, kind: type[Review], due_by: dt.datetime) -> Review | None:
    """The review of ``kind`` due first (by ``due_by``), locked; reviews other sweeps hold are
    skipped."""
    return session.scalars(
        select(kind)
        .where(kind.review_after <= due_by)
        .order_by(kind.review_after)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def _review_next_blob(grace: dt.timedelta, due_by: dt.datetime) -> tuple[str, str, int] | None:
    """Take one review due by ``due_by`` and decide it. Returns (outcome, digest, size), or
    None when no review is due."""
    with db.transaction() as session:
        review = _next_due(session, BlobReview, due_by)
        if review is None:
            return None
        digest = review.digest
        blob = session.get(Blob, digest, with_for_update=True)
        if blob is None or blob.state == BLOB_DELETING:
            session.delete(review)
            return ("deleting" if blob is not None else "gone", digest, 0)
        if blob.created_at > utcnow() - grace:
            review.review_after = blob.created_at + grace
            return ("young", digest, blob.size)
        savepoint = session.begin_nested()
        session.execute(delete(RepositoryBlob).where(RepositoryBlob.blob_digest == digest))
        referenced = session.scalars(
            select(ManifestReference.manifest_id)
            .where(ManifestReference.digest == digest)
            .limit(1)
            .with_for_update(read=True)
        ).first()
        if referenced is not None:
            savepoint.rollback()
            session.delete(review)
            return ("referenced", digest, blob.size)
        savepoint.commit()
        blob.state = BLOB_DELETING
        session.delete(review)
        return ("delete", digest, blob.size)


async def finish_deletion(
    storage: StorageDriver, digest: str, *, orphan: tuple[str, int] | None = None
) -> int | None:
    """Delete the objects of a blob marked ``deleting``, then its row. Returns the bytes
    freed, or None if the blob was not (or no longer) being deleted. ``orphan`` (an object's
    key and size): an object no row knows, which a row marked ``deleting`` claims first.
    Raises :class:`~janitor.claims.BlobBusy` when another janitor task works on the blob."""
    async with claimed(digest, orphan=orphan) as claim:
        if claim is None or claim.state != BLOB_DELETING:
            return None
        # The claim keeps a promote from moving bytes to the blob's key meanwhile; an upload
        # of the same content revives the row with bytes of its own, which stay.
        for key in {claim.storage_key, keys.blob_key(parse_digest(digest))}:
            claim.check()
            await storage.delete(key)

        def record(session: Session, blob: Blob) -> None:
            if blob.state == BLOB_DELETING:
                session.delete(blob)

        claim.record = record
        return claim.size


def _review_again(digest: str) -> None:
    with db.transaction() as session:
        review_blobs(session, [digest], "claimed", delay=NOW)


def is_referenced(session: Session, manifest: Manifest) -> bool:
    """Whether a tag, an index of its repository or its living subject refers to
    ``manifest`` (the rows that say so held until the transaction ends, so that none appears
    while it is deleted)."""
    return bool(referenced(session, manifest.repository_id, [manifest]))


def referenced(session: Session, repository_id: int, manifests: Sequence[Manifest]) -> set[int]:
    """The ids of those of ``manifests`` (all of the repository ``repository_id``) that a tag,
    an index of the repository or a living subject refers to: three statements whatever their
    number, the rows that say so held until the transaction ends."""
    by_digest = {manifest.digest: manifest.id for manifest in manifests}
    found = set(
        session.scalars(
            select(Tag.manifest_id)
            .where(Tag.manifest_id.in_(list(by_digest.values())))
            .with_for_update(read=True)
        )
    )
    parents = session.scalars(
        select(ManifestReference.digest)
        .join(Manifest, Manifest.id == ManifestReference.manifest_id)
        .where(
            ManifestReference.digest.in_(list(by_digest)),
            ManifestReference.is_manifest,
            Manifest.repository_id == repository_id,
        )
        .with_for_update(read=True)
    )
    found.update(by_digest[digest] for digest in parents)
    subjects = {m.subject_digest for m in manifests if m.subject_digest is not None}
    if subjects:
        living = set(
            session.scalars(
                select(Manifest.digest).where(
                    Manifest.repository_id == repository_id, Manifest.digest.in_(list(subjects))
                )
            )
        )
        found.update(m.id for m in manifests if m.subject_digest in living)
    return found


def _review_next_manifest(grace: dt.timedelta, due_by: dt.datetime) -> tuple[str, str] | None:
    with db.transaction() as session:
        review = _next_due(session, ManifestReview, due_by)
        if review is None:
            return None
        manifest = session.get(Manifest, review.manifest_id, with_for_update=True)
        if manifest is None:
            session.delete(review)
            return ("gone", "")
        if manifest.created_at > utcnow() - grace:
            review.review_after = manifest.created_at + grace
            return ("young", manifest.digest)
        referenced = is_referenced(session, manifest)
        session.delete(review)
        if referenced:
            return ("referenced", manifest.digest)
        digest = manifest.digest
        delete_manifest(session, manifest, "manifest collected", delay=NOW)
        return ("delete", digest)


async def collect_garbage(
    storage: StorageDriver,
    *,
    grace: dt.timedelta | None = None,
    untagged_manifests: bool | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Progress = None,
    full: bool = False,
) -> Report:
    """Sweep at most ``limit`` due reviews: work in proportion to what changed, since every
    change that can leave something unreferenced records a review. ``full`` marks first (a walk
    of the whole blobs table, and with ``untagged_manifests`` of the untagged manifests: for a
    review lost, by hand or to a bug, or never recorded by an older version). ``dry_run`` only
    reports what a run would delete and how many bytes it would free. What is not given is as
    configured."""
    settings = get_settings()
    grace = dt.timedelta(seconds=settings.gc_grace_seconds) if grace is None else grace
    if untagged_manifests is None:
        untagged_manifests = settings.gc_untagged_manifests
    limit = settings.gc_batch_size if limit is None else limit
    report = Report("collect_garbage", dry_run=dry_run)
    cutoff = utcnow() - grace
    if dry_run:
        unreferenced = await db.read(_unreferenced, cutoff, None if full else _due_by(grace))
        for digest, size in unreferenced:
            report.tick(progress)
            report.deleted += 1
            report.bytes_freed += size
            report.would_delete.append(digest)
        return report
    # Each loop takes the reviews due when it starts: those that fall due meanwhile (pushes
    # go on) are the next sweep's, so that a sweep ends under any load and its lease passes on.
    if untagged_manifests:
        if full:
            await db.write(mark_manifests, cutoff)
        due_by = _due_by(grace)
        for _ in range(limit):
            decided = await db.write(_review_next_manifest, grace, due_by)
            if decided is None:
                break
            report.tick(progress)
            if decided[0] == "delete":
                log.info("gc manifest deleted digest=%s", decided[1])
    if full:
        await db.write(mark, cutoff)
    due_by = _due_by(grace)
    busy: set[str] = set()
    for _ in range(limit):
        decided_blob = await db.write(_review_next_blob, grace, due_by)
        if decided_blob is None:
            break
        outcome, digest, size = decided_blob
        report.tick(progress)
        if outcome in ("delete", "deleting"):
            try:
                freed = await finish_deletion(storage, digest)
            except BlobBusy:
                # A promote is moving its bytes: reviewed again, after every review due now
                # (met again in this sweep, those have all been taken: the next sweep does it).
                await db.write(_review_again, digest)
                report.kept += 1
                if digest in busy:
                    break
                busy.add(digest)
                continue
            if freed is not None:
                report.deleted += 1
                report.bytes_freed += freed
                log.info("gc blob deleted digest=%s bytes=%s", digest, freed)
        elif outcome in ("referenced", "young"):
            report.kept += 1
    log.info("gc done %s", json.dumps(report.as_dict()))
    return report
