"""Review queues of online garbage collection.

Every change that can leave a blob or a manifest unreferenced (an upload that no manifest uses
yet, a blob unlinked from a repository, a manifest deleted, a tag deleted or moved) records a
review in the same transaction as the change, due after a grace delay. The janitor takes due
reviews one at a time (``FOR UPDATE SKIP LOCKED``, so replicas split the work), checks again
under a lock whether the blob or manifest is still unreferenced, and only then deletes it.
Recording a review again never brings it forward: it only pushes ``review_after`` later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import cast

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.models import BlobReview, ManifestReview, utcnow
from shared.settings import get_settings


def grace() -> dt.timedelta:
    return dt.timedelta(seconds=get_settings().gc_grace_seconds)


def review_blobs(
    session: Session, digests: Iterable[str], reason: str, delay: dt.timedelta | None = None
) -> None:
    due = utcnow() + (grace() if delay is None else delay)
    # A fixed order, so that two transactions reviewing the same blobs do not deadlock.
    for digest in sorted(set(digests)):
        _upsert(session, BlobReview, digest, {"digest": digest}, due, reason)


def _upsert(
    session: Session,
    model: type[BlobReview] | type[ManifestReview],
    key: object,
    fields: dict[str, object],
    due: dt.datetime,
    reason: str,
) -> None:
    # Insert first: on MySQL a locking read of a missing row takes a gap lock, and two
    # transactions doing that before inserting deadlock each other.
    try:
        with session.begin_nested():
            session.add(model(**fields, review_after=due, reason=reason))
        return
    except IntegrityError:
        pass
    review = cast(
        "BlobReview | ManifestReview | None",
        session.get(model, key, with_for_update=True, populate_existing=True),
    )
    if review is not None and review.review_after < due:
        review.review_after = due
        review.reason = reason


def review_manifests(
    session: Session, manifest_ids: Iterable[int], reason: str, delay: dt.timedelta | None = None
) -> None:
    due = utcnow() + (grace() if delay is None else delay)
    for manifest_id in sorted(set(manifest_ids)):
        # (A manifest deleted meanwhile fails the insert's foreign key: nothing to review.)
        _upsert(session, ManifestReview, manifest_id, {"manifest_id": manifest_id}, due, reason)
