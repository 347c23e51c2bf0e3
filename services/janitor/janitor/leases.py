"""Leases for singleton jobs: a periodic sweep runs on one janitor replica at a time
(``shared.leases``)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from shared import db
from shared.leases import OWNER, acquire, release

HEARTBEAT = dt.timedelta(minutes=2)


@contextmanager
def lease(name: str, ttl: dt.timedelta = HEARTBEAT) -> Iterator[bool]:
    """``with lease("reconcile") as mine:`` runs the block with ``mine`` true only on the
    replica that holds the lease. While the block runs, a thread renews the lease every third
    of ``ttl``: a holder that is killed stops renewing, and its lease is free ``ttl`` later.
    The holder is this call, not the process: a task running in another thread of the same
    worker does not hold it too. Taking and letting go are tried again when MySQL picks them as
    a deadlock's victim (two replicas taking a lease whose row was just deleted)."""
    owner = f"{OWNER}:{uuid.uuid4().hex[:12]}"
    mine = db.retrying(acquire, name, ttl, owner)
    if not mine:
        yield False
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl.total_seconds() / 3):
            try:
                acquire(name, ttl, owner)
            except Exception:  # the database is briefly away: try again at the next beat
                continue

    heartbeat = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    heartbeat.start()
    try:
        yield True
    finally:
        done.set()
        heartbeat.join()
        db.retrying(release, name, owner)
