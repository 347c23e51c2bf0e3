"""Leases for singleton jobs: a periodic sweep runs on one janitor replica at a time.

A lease is a row (``job_leases``) naming its owner and when it expires; taking it is one
conditional update, so it works the same on MySQL and SQLite and needs no broker feature. A
replica that dies leaves a lease that simply expires.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from shared import db
from shared.models import JobLease, utcnow

OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(name: str, ttl: dt.timedelta, owner: str = OWNER) -> bool:
    now = utcnow()
    with db.transaction() as session:
        taken = session.execute(
            update(JobLease)
            .where(JobLease.name == name, (JobLease.expires_at < now) | (JobLease.owner == owner))
            .values(owner=owner, expires_at=now + ttl)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return True
        if session.get(JobLease, name) is not None:
            return False
        try:
            with session.begin_nested():
                session.add(JobLease(name=name, owner=owner, expires_at=now + ttl))
        except IntegrityError:
            return False
        return True


def release(name: str, owner: str = OWNER) -> None:
    with db.transaction() as session:
        session.execute(delete(JobLease).where(JobLease.name == name, JobLease.owner == owner))


HEARTBEAT = dt.timedelta(minutes=2)


@contextmanager
def lease(name: str, ttl: dt.timedelta = HEARTBEAT) -> Iterator[bool]:
    """``with lease("reconcile") as mine:`` runs the block with ``mine`` true only on the
    replica that holds the lease. While the block runs, a thread renews the lease every third
    of ``ttl``: a holder that is killed stops renewing, and its lease is free ``ttl`` later."""
    mine = acquire(name, ttl)
    if not mine:
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl.total_seconds() / 3):
            try:
                acquire(name, ttl)
            except Exception:  # the database is briefly away: try again at the next beat
                continue

    heartbeat = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    heartbeat.start()
    try:
        yield True
    finally:
        done.set()
        heartbeat.join()
        release(name)
