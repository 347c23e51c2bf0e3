"""Delivering notifications (``shared.notifications``): each endpoint's events of one
repository are a stream, delivered in ``id`` order by one janitor task at a time (a lease per
stream), so that streams never wait for each other and a stream's order holds on any number of
replicas.

An event is delivered when the endpoint answers 2xx. Otherwise it is tried again after a
backoff (doubling from one second up to the endpoint's ``max_backoff_seconds``, with jitter)
and the stream waits for it; once it has failed for the endpoint's ``park_after_seconds`` it
is parked (kept, and shown by ``registry-admin``) and the stream goes on. Redirects are not
followed. Delivered events are kept ``REGISTRY_NOTIFICATIONS_RETENTION_SECONDS`` for
replays, then pruned. Pull events waiting together are sent in one request (a batch).

Delivery is at least once: a worker killed after the endpoint took an event but before the
row says so sends it again, with the same delivery id (``X-Registry-Delivery``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Connection, Select, bindparam, delete, func, select, update

from janitor.metrics import NOTIFICATION_LATENCY, NOTIFICATIONS
from shared import db, leases
from shared.models import Notification, utcnow
from shared.notifications import DELIVERED, PARKED, PENDING, configured
from shared.settings import get_settings

if TYPE_CHECKING:
    from shared.notifications_file import Endpoint

log = logging.getLogger(__name__)

FIRST_BACKOFF = 1.0
PRUNE_BATCH = 1000
PER_TASK = 1000  # requests one task makes at most; the next dispatch goes on
PULL_BATCH = 100  # pull events sent in one request at most
PAGE = 100  # pending events read at once


def due_streams(repository: str | None = None, limit: int = 1000) -> list[tuple[str, str]]:
    """(endpoint, repository) of the streams with an event due now (of ``repository``) and no
    task delivering them: a task that holds a stream looks again when it lets it go."""
    query = (
        select(Notification.endpoint, Notification.repository)
        .where(Notification.state == PENDING, Notification.next_attempt_at <= utcnow())
        .distinct()
        .limit(limit)
    )
    if repository is not None:
        query = query.where(Notification.repository == repository)
    with db.reading() as connection:
        due = [(e, r) for e, r in connection.execute(query)]
    if not due:
        return due
    busy = leases.held_names("notify")
    return [(e, r) for e, r in due if leases.name_for("notify", e, r) not in busy]


_STREAM = (
    select(Notification)
    .where(
        Notification.endpoint == bindparam("endpoint"),
        Notification.state == PENDING,
        Notification.repository == bindparam("repository"),
    )
    .order_by(Notification.id)
)


def _rows(connection: Connection, query: Select[Any], **params: object) -> list[Notification]:
    return [Notification(**row._asdict()) for row in connection.execute(query, params)]


def _head(endpoint: str, repository: str) -> list[Notification]:
    """The stream's next request: its first pending event, or the batch of pull events that
    starts with it (formed at its first attempt, and the same at every retry). Empty when the
    stream has none."""
    key = {"endpoint": endpoint, "repository": repository}
    with db.reading() as connection:
        head = _rows(connection, _STREAM.limit(1), **key)
        if not head or head[0].action != "pull":
            return head
        first = head[0]
        if first.batch_of is not None:
            return _rows(
                connection,
                _STREAM.where(Notification.batch_of == first.batch_of).limit(PULL_BATCH),
                **key,
            )
        following = _rows(
            connection, _STREAM.where(Notification.id > first.id).limit(PULL_BATCH - 1), **key
        )
    batch, now = [first], utcnow()
    for row in following:  # the due pulls up to the next event of another kind or batch
        if row.action != "pull" or row.batch_of is not None or row.next_attempt_at > now:
            break
        batch.append(row)
    with db.transaction() as session:
        session.execute(
            update(Notification)
            .where(Notification.id.in_([row.id for row in batch]))
            .values(batch_of=first.id)
        )
    for row in batch:
        row.batch_of = first.id
    return batch


@cache
def _client() -> httpx.Client:
    return httpx.Client(follow_redirects=False, trust_env=False)


def _send(endpoint: Endpoint, rows: list[Notification]) -> str | None:
    """Deliver ``rows`` in one request: None when the endpoint took them, else why not."""
    body, headers = endpoint.request(rows)
    try:
        response = _client().post(
            endpoint.url, content=body, headers=headers, timeout=endpoint.timeout_seconds
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


def _backoff(attempts: int, longest: float) -> dt.timedelta:
    seconds = min(longest, FIRST_BACKOFF * 2 ** min(attempts - 1, 30))
    return dt.timedelta(seconds=seconds * random.uniform(0.5, 1.0))


def _failed(rows: list[Notification], endpoint: Endpoint, error: str) -> bool:
    """Record a failed attempt at a request; whether the stream goes on (it was parked)."""
    first, now = rows[0], utcnow()
    values: dict[str, object] = {"attempts": first.attempts + 1, "last_error": error}
    parked = now - first.created_at >= dt.timedelta(seconds=endpoint.park_after_seconds)
    if parked:
        values["state"] = PARKED
    else:
        values["next_attempt_at"] = now + _backoff(first.attempts + 1, endpoint.max_backoff_seconds)
    with db.transaction() as session:
        session.execute(
            update(Notification)
            .where(Notification.id.in_([row.id for row in rows]), Notification.state == PENDING)
            .values(**values)
        )
    NOTIFICATIONS.labels(endpoint.name, PARKED if parked else "failed").inc(len(rows))
    log.warning(
        "notification not delivered endpoint=%s repository=%s delivery=%s events=%d "
        "attempt=%d: %s%s",
        endpoint.name,
        first.repository,
        first.delivery_id,
        len(rows),
        first.attempts + 1,
        error,
        " (parked)" if parked else "",
    )
    return parked


class _Delivered:
    """Events the endpoint took, recorded delivered together (one transaction for many, not
    one each: every ``EVERY`` events or ``WITHIN`` seconds, and before the stream's lease is
    let go); the stream's reads meanwhile skip them. A worker killed before that sends them
    again, with the same delivery ids."""

    EVERY = 50  # events
    WITHIN = 0.1  # seconds after the first of them

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.rows: list[Notification] = []
        self.since = 0.0

    def add(self, rows: list[Notification]) -> None:
        if not self.rows:
            self.since = time.monotonic()
        self.rows.extend(rows)
        sent = dt.datetime.now(dt.UTC)
        for row in rows:  # from the event's own timestamp: DATETIME keeps whole seconds
            changed = dt.datetime.fromisoformat(json.loads(row.payload)["timestamp"])
            latency = (sent - changed).total_seconds()
            NOTIFICATION_LATENCY.labels(self.endpoint.name).observe(max(0.0, latency))
        if len(self.rows) >= self.EVERY or time.monotonic() - self.since >= self.WITHIN:
            self.flush()

    def ids(self) -> set[int]:
        """The rows taken and not yet recorded delivered."""
        return {row.id for row in self.rows}

    def flush(self) -> None:
        if not self.rows:
            return
        with db.transaction() as session:
            session.execute(
                update(Notification)
                .where(
                    Notification.id.in_([row.id for row in self.rows]),
                    Notification.state == PENDING,
                )
                .values(
                    state=DELIVERED,
                    attempts=Notification.attempts + 1,
                    delivered_at=utcnow(),
                    last_error=None,
                )
            )
        NOTIFICATIONS.labels(self.endpoint.name, "delivered").inc(len(self.rows))
        self.rows = []


def _requests(endpoint: str, repository: str, taken: _Delivered) -> Iterator[list[Notification]]:
    """The stream's requests in order: its pending events a page at a time (one query per
    page, not per event; those ``taken`` holds, sent and not yet recorded delivered, are
    skipped), a batch of pulls where they start (what was sent before it recorded first: a
    batch is formed from the table). The caller stops at the first request that fails."""
    key = {"endpoint": endpoint, "repository": repository}
    while True:
        sent = taken.ids()
        with db.reading() as connection:
            page = [
                row
                for row in _rows(connection, _STREAM.limit(PAGE + len(sent)), **key)
                if row.id not in sent
            ]
        if not page:
            return
        for row in page:
            if row.action == "pull":
                taken.flush()
                yield _head(endpoint, repository)
                break  # the batch took some of the page: read on after it
            yield [row]


def deliver(endpoint_name: str, repository: str) -> int:
    """Deliver the stream's due events in order, until it is empty, waits for a retry, or
    another task holds it. Returns how many were delivered."""
    endpoint = configured().get(endpoint_name)
    if endpoint is None:  # no longer configured: its events stay, for when it is back
        return 0
    name = leases.name_for("notify", endpoint_name, repository)
    # An attempt lasts at most the timeout, and the lease is renewed once a third of it has
    # gone: it never runs out during an attempt, and a killed holder's streams are taken
    # over this long after.
    ttl = dt.timedelta(seconds=endpoint.timeout_seconds * 3 + 5)
    # This task's own: the worker's threads each run tasks, and one thread's lease must not
    # count as another's.
    owner = f"{leases.OWNER}:{uuid.uuid4().hex[:12]}"
    delivered = attempts = 0
    # The lease's statements again when MySQL picks one as a deadlock victim (two takers of a
    # stream whose row was just deleted), not the whole task after a backoff.
    while attempts < PER_TASK and db.retrying(leases.acquire, name, ttl, owner):
        renewed = time.monotonic()
        taken = _Delivered(endpoint)
        try:
            try:
                for rows in _requests(endpoint_name, repository, taken):
                    if not rows or rows[0].next_attempt_at > utcnow():
                        break
                    if time.monotonic() - renewed > ttl.total_seconds() / 3:
                        if not db.retrying(leases.acquire, name, ttl, owner):
                            break  # it ran out and another task holds the stream now
                        renewed = time.monotonic()
                    error = _send(endpoint, rows)
                    attempts += 1
                    if error is None:
                        taken.add(rows)
                        delivered += len(rows)
                    else:
                        taken.flush()
                        if not _failed(rows, endpoint, error):
                            break
                    if attempts >= PER_TASK:
                        break
            finally:
                taken.flush()
        finally:
            db.retrying(leases.release, name, owner)
        # An event committed while this task held the lease had no task of its own (the
        # dispatch saw the lease held): look again, now that the lease is free.
        if not _due(endpoint_name, repository):
            break
    return delivered


def _due(endpoint: str, repository: str) -> bool:
    with db.reading() as connection:
        head = _rows(connection, _STREAM.limit(1), endpoint=endpoint, repository=repository)
    return bool(head) and head[0].next_attempt_at <= utcnow()


def prune(retention: dt.timedelta | None = None) -> int:
    """Delete delivered events older than the retention period; how many."""
    if retention is None:
        retention = dt.timedelta(seconds=get_settings().notifications_retention_seconds)
    cutoff = utcnow() - retention
    with db.transaction() as session:
        ids = list(
            session.scalars(
                select(Notification.id)
                .where(Notification.state == DELIVERED, Notification.created_at < cutoff)
                .limit(PRUNE_BATCH)
            )
        )
        if ids:
            session.execute(delete(Notification).where(Notification.id.in_(ids)))
    return len(ids)


def _undelivered(connection: Connection) -> dict[tuple[str, str], tuple[int, dt.datetime]]:
    """(endpoint, state) of the events not delivered (pending, parked): how many, and when
    the oldest was recorded."""
    return {
        (endpoint, state): (count, oldest)
        for endpoint, state, count, oldest in connection.execute(
            select(
                Notification.endpoint,
                Notification.state,
                func.count(),
                func.min(Notification.created_at),
            )
            .where(Notification.state.in_([PENDING, PARKED]))
            .group_by(Notification.endpoint, Notification.state)
        )
    }


def pending_by_endpoint() -> dict[str, tuple[int, int, float]]:
    """Per endpoint with events not delivered: how many are pending, how many parked, and
    the age in seconds of the oldest pending one (0 when none is)."""
    now = utcnow()
    with db.reading() as connection:
        counts = _undelivered(connection)
    found: dict[str, tuple[int, int, float]] = {}
    for endpoint in sorted({e for e, _ in counts}):
        pending, oldest = counts.get((endpoint, PENDING), (0, now))
        parked = counts.get((endpoint, PARKED), (0, now))[0]
        found[endpoint] = (pending, parked, max(0.0, (now - oldest).total_seconds()))
    return found


@dataclass(frozen=True)
class Backlog:
    """What ``registry-admin notifications list`` shows of one endpoint."""

    endpoint: str
    configured: bool
    pending: int
    parked: int
    oldest_pending: dt.datetime | None
    last_delivered: dt.datetime | None
    last_error: str | None


def backlogs() -> list[Backlog]:
    """Every configured endpoint, and every endpoint the table still has events of."""
    with db.reading() as connection:
        counts = _undelivered(connection)
        delivered: dict[str, dt.datetime | None] = {
            endpoint: last
            for endpoint, last in connection.execute(
                select(Notification.endpoint, func.max(Notification.delivered_at))
                .where(Notification.state == DELIVERED)
                .group_by(Notification.endpoint)
            )
        }
        names = {e.name for e in configured().endpoints}
        found = []
        for name in sorted(names | {e for e, _ in counts} | set(delivered)):
            error = connection.scalar(
                select(Notification.last_error)
                .where(Notification.endpoint == name, Notification.last_error.is_not(None))
                .order_by(Notification.id.desc())
                .limit(1)
            )
            pending, oldest = counts.get((name, PENDING), (0, None))
            found.append(
                Backlog(
                    endpoint=name,
                    configured=name in names,
                    pending=pending,
                    parked=counts.get((name, PARKED), (0, None))[0],
                    oldest_pending=oldest,
                    last_delivered=delivered.get(name),
                    last_error=error,
                )
            )
    return found


def replay(endpoint: str, since: dt.datetime, until: dt.datetime | None = None) -> int:
    """Send the endpoint's events recorded from ``since`` to ``until`` again (delivered and
    parked ones alike), in their order, with new delivery ids (a receiver that dropped
    duplicates takes them again). Returns how many."""
    query = select(Notification.id).where(
        Notification.endpoint == endpoint,
        Notification.state != PENDING,
        Notification.created_at >= since,
    )
    if until is not None:
        query = query.where(Notification.created_at <= until)
    with db.transaction() as session:
        ids = list(session.scalars(query.order_by(Notification.id).with_for_update()))
        for row_id in ids:  # one by one: each gets a delivery id of its own
            session.execute(
                update(Notification)
                .where(Notification.id == row_id)
                .values(
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=utcnow(),
                    delivery_id=str(uuid.uuid4()),
                    last_error=None,
                    batch_of=None,
                )
            )
    return len(ids)
