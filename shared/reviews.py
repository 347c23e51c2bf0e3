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
from typing import TypeVar, cast

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared.db import insert_new
from shared.models import BlobReview, ManifestReview, utcnow
from shared.settings import get_settings

_Key = TypeVar("_Key", str, int)


def grace() -> dt.timedelta:
    return dt.timedelta(seconds=get_settings().gc_grace_seconds)


def review_blobs(
    session: Session, digests: Iterable[str], reason: str, delay: dt.timedelta | None = None
) -> None:
    _review(session, BlobReview, "digest", digests, reason, delay)


def review_manifests(
    session: Session, manifest_ids: Iterable[int], reason: str, delay: dt.timedelta | None = None
) -> None:
    # (A manifest deleted meanwhile fails the insert's foreign key: nothing to review.)
    _review(session, ManifestReview, "manifest_id", manifest_ids, reason, delay)


def _review(
    session: Session,
    model: type[BlobReview] | type[ManifestReview],
    column: str,
    keys: Iterable[_Key],
    reason: str,
    delay: dt.timedelta | None,
) -> None:
    due = utcnow() + (grace() if delay is None else delay)
    session.flush()  # the session's pending changes first (a deleted manifest goes before)
    connection = session.connection()
    add = insert(model)
    # A fixed order, so that two transactions reviewing the same rows do not deadlock.
    for key in sorted(set(keys)):
        # Insert first: on MySQL a locking read of a missing row takes a gap lock, and two
        # transactions doing that before inserting deadlock each other.
        row = {column: key, "review_after": due, "reason": reason}
        if insert_new(connection, add, row) is not None:
            continue
        review = cast(
            "BlobReview | ManifestReview | None",
            session.get(model, key, with_for_update=True, populate_existing=True),
        )
        if review is not None and review.review_after < due:
            review.review_after = due
            review.reason = reason
