"""Claims on a blob's objects: one janitor task at a time moves or deletes them, and no
database transaction is open while it does.

Mark, act, record. A short transaction claims the blob's row (``claimed_by``,
``claimed_until``) and reads what the task needs; the storage work then runs holding no
database lock (an OSS move of a large blob is a multipart copy that may take minutes); a short
transaction records the outcome and frees the claim. A crash between them leaves the claim to
expire and the work to be done again: every step is safe to repeat.

What a claim keeps apart: a promote moving an upload's object to the blob's key, and a
garbage-collection (or reconcile) deletion of that key. The blob service never waits for a
claim: an upload of the same content revives a row being deleted (it keeps its own bytes at its
upload's key), and its promote waits until the deletion is over.

A claim lasts :data:`CLAIM_SECONDS` and is renewed while the task works. A task checks, by its
own clock, that its claim still holds before each storage operation: a task paused past its
claim (a frozen pod) stops rather than touch objects another task may now own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import db
from shared.models import BLOB_DELETING, Blob, utcnow

CLAIM_SECONDS = 300
# A claim is renewed this often while its task works, and counted lost this long before it
# expires (the margin covers a renewal that is slow to commit).
RENEW_EVERY = CLAIM_SECONDS / 5
MARGIN = CLAIM_SECONDS / 5


class BlobBusy(Exception):
    """Another janitor task holds the blob's claim: the work is tried again later."""


class ClaimLost(Exception):
    """The claim expired before the task was done (it was paused, or the database was
    unreachable for longer than the claim): the task stops; another one does the work."""


@dataclass
class Claim:
    """What the task read when it claimed the blob, and what it records at the end."""

    digest: str
    token: str
    state: str
    storage_key: str
    size: int
    deadline: float  # time.monotonic() after which the claim is counted lost
    record: Callable[[Session, Blob], None] | None = field(default=None)

    def check(self) -> None:
        """Raise :class:`ClaimLost` unless the claim still holds (call before storage work)."""
        if time.monotonic() > self.deadline:
            raise ClaimLost(f"the claim on blob {self.digest} expired")


def _take(digest: str, token: str, orphan: tuple[str, int] | None) -> Claim | None:
    with db.transaction() as session:
        blob = None
        if orphan is not None:
            # An object no row knows: a row marked deleting claims it, so that an upload of
            # the same content meanwhile revives the row instead of losing its bytes. Insert
            # first: a locking read of a missing row takes a gap lock on MySQL.
            key, size = orphan
            try:
                with session.begin_nested():
                    session.add(
                        Blob(digest=digest, size=size, storage_key=key, state=BLOB_DELETING)
                    )
            except IntegrityError:
                pass
        blob = session.get(Blob, digest, with_for_update=True, populate_existing=True)
        if blob is None:
            return None
        now = utcnow()
        if (
            blob.claimed_by not in (None, token)
            and blob.claimed_until is not None
            and blob.claimed_until > now
        ):
            raise BlobBusy(f"blob {digest} is claimed by another janitor task")
        taken_at = time.monotonic()
        blob.claimed_by = token
        blob.claimed_until = now + dt.timedelta(seconds=CLAIM_SECONDS)
        return Claim(
            digest,
            token,
            blob.state,
            blob.storage_key,
            blob.size,
            taken_at + CLAIM_SECONDS - MARGIN,
        )


def _renew(claim: Claim) -> bool:
    with db.transaction() as session:
        renewed = session.execute(
            update(Blob)
            .where(Blob.digest == claim.digest, Blob.claimed_by == claim.token)
            .values(claimed_until=utcnow() + dt.timedelta(seconds=CLAIM_SECONDS))
        )
        return renewed.rowcount == 1  # type: ignore[attr-defined, no-any-return]


def _finish(claim: Claim) -> None:
    with db.transaction() as session:
        blob = session.get(Blob, claim.digest, with_for_update=True)
        if blob is None or blob.claimed_by != claim.token:
            return  # expired and taken by another task: it records its own outcome
        blob.claimed_by = None
        blob.claimed_until = None
        if claim.record is not None:
            claim.record(session, blob)


async def _keep_renewed(claim: Claim) -> None:
    while True:
        await asyncio.sleep(RENEW_EVERY)
        renewed_at = time.monotonic()
        if not await db.write(_renew, claim):
            claim.deadline = 0.0  # taken over: every later check fails
            return
        claim.deadline = renewed_at + CLAIM_SECONDS - MARGIN


@asynccontextmanager
async def claimed(
    digest: str, *, orphan: tuple[str, int] | None = None
) -> AsyncIterator[Claim | None]:
    """Claim blob ``digest`` for the block (None when there is no such row). With ``orphan``
    (an object's key and size) a missing row is first recorded as being deleted. What the
    block sets as ``claim.record`` is applied to the row when the claim is freed, in the same
    transaction. Raises :class:`BlobBusy` when another task holds the claim."""
    token = uuid.uuid4().hex
    claim = await db.write(_take, digest, token, orphan)
    if claim is None:
        yield None
        return
    renewer = asyncio.create_task(_keep_renewed(claim))
    try:
        yield claim
    except BaseException:
        claim.record = None  # nothing to record: the work is done again later
        raise
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await db.write(_finish, claim)
