"""Leases: a row (``job_leases``) naming who does a thing until when, so that one process at
a time, on any replica, does it: the janitor's periodic sweeps, the fetch of one blob from a
mirror's upstream. Taking a lease is a plain read and an insert (or a conditional update), so it
works the same on MySQL and SQLite and needs no broker feature; a holder that dies leaves a lease
that simply expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, insert, select, update

from shared import db
from shared.models import JobLease, utcnow

T = TypeVar("T")
log = logging.getLogger(__name__)

OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
NAME_LENGTH = 64  # job_leases.name


def name_for(kind: str, *parts: str) -> str:
    """A lease's name for one thing of ``kind`` named by ``parts`` (a repository and a digest,
    say): ``kind:`` and a hash of the parts, which fits the column whatever their length."""
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{kind}:{digest}"[:NAME_LENGTH]


def acquire(name: str, ttl: dt.timedelta, owner: str = OWNER) -> bool:
    """Take (or renew) the lease ``name`` for ``owner``: whether it is the owner's now. The
    lease is read plainly first: one held by another is left at that (no lock taken); a new
    one is inserted (which fails, changing nothing, when someone inserted it meanwhile); an
    expired or own one is updated. (On MySQL an UPDATE that finds no row locks the gap where
    it would go, and two first takers doing that before their INSERTs deadlocked.)"""
    now = utcnow()
    with db.transaction() as session:
        found = session.execute(_LEASE, {"name": name}).first()
        if found is not None and found.owner != owner and found.expires_at >= now:
            return False
        row = {"name": name, "owner": owner, "expires_at": now + ttl}
        if found is not None:
            taken = session.execute(
                update(JobLease)
                .where(
                    JobLease.name == name, (JobLease.expires_at < now) | (JobLease.owner == owner)
                )
                .values(owner=owner, expires_at=now + ttl)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return True
            # Taken meanwhile by another, or released (and its row deleted).
        return db.insert_new(session.connection(), _INSERT, row) is not None


_LEASE = select(JobLease.owner, JobLease.expires_at).where(JobLease.name == bindparam("name"))
_INSERT = insert(JobLease)


def release(name: str, owner: str = OWNER) -> None:
    with db.transaction() as session:
        session.execute(delete(JobLease).where(JobLease.name == name, JobLease.owner == owner))


def held_names(kind: str) -> set[str]:
    """The names of ``kind`` (``name_for(kind, ...)``) held now."""
    with db.reading() as connection:
        return set(
            connection.scalars(
                select(JobLease.name).where(
                    JobLease.name.startswith(f"{kind}:"), JobLease.expires_at >= utcnow()
                )
            )
        )


def held(name: str) -> bool:
    """Whether anyone holds ``name`` now (a plain read, no lock)."""
    with db.reading() as connection:
        found = connection.execute(_LEASE, {"name": name}).first()
    return found is not None and found.expires_at >= utcnow()


async def take_or_wait(
    name: str,
    owner: str,
    ttl: dt.timedelta,
    done: Callable[[], Awaitable[T | None]],
    pause_seconds: float,
) -> tuple[T | None, bool]:
    """One request at a time, on any replica, does a piece of work that concurrent requests
    would otherwise all do (fetching one blob or manifest from a mirror's upstream); the
    others wait for what it leaves behind. ``done()`` reads that, or None while it is not
    there; it is read again every ``pause_seconds`` while the lease ``name`` is held.

    Returns ``(result, waited)``: a result found by ``done()`` (``waited``: once another
    request had done the work), or None when this request now holds the lease for ``owner``
    (``done()`` read once more after taking it): the caller does the work and then releases
    the lease. The holder that fails lets the next waiter take the lease and try in turn; one
    that dies leaves a lease that expires after ``ttl``."""
    waited = False
    while True:
        result = await done()
        if result is not None:
            return result, waited
        # A request that has waited reads the lease plainly before trying to take it: a
        # crowd waiting for one fetch polls with reads, not write transactions.
        if (not waited or not await db.read(held, name)) and await db.write(
            acquire, name, ttl, owner
        ):
            break
        waited = True
        await asyncio.sleep(pause_seconds)
    try:
        result = await done()  # done between the last look and the lease
    except BaseException:
        await db.write(release, name, owner)
        raise
    if result is not None:
        release_soon(name, owner)
        return result, True
    return None, waited


# Releases made in the background, kept referenced until they end.
_releasing: set[asyncio.Task[Any]] = set()


def release_soon(name: str, owner: str) -> None:
    """Release the lease in the background: the caller answers without waiting for it (what
    waits for the work looks for its result before the lease); a release that fails leaves a
    lease that expires by itself."""

    async def releasing() -> None:
        try:
            await db.write(release, name, owner)
        except Exception:
            log.warning("could not release the lease %s", name, exc_info=True)

    task = asyncio.ensure_future(releasing())
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)
