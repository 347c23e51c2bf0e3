"""Leases for singleton jobs: a periodic sweep runs on one janitor replica at a time
(``shared.leases``)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from shared.leases import acquire, release

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
