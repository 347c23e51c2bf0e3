"""Events for the janitor: written to the database in the transaction that made the change
(a transactional outbox), relayed to Celery after it commits.

:func:`record` adds an event to the ``event_outbox`` table within the caller's transaction;
when that transaction commits, this process's relay sends it at once and deletes its row. A row
whose process died before sending it (or while the broker was down) is taken, a while later,
by the relay of any replica, which sends and deletes it: every change that committed is
announced at least once, and the janitor's tasks are idempotent. Sending never delays or fails
a client's request. Reconcile remains a safety net, not the mechanism.

Only actions something consumes are recorded: a committed upload (the janitor moves its
object to the blob's key), a cancelled one (it deletes the upload's object), and notifications
written for a repository (the janitor delivers them). The last is only a wake-up: the
notifications are rows of the change's own transaction, which the janitor's beat also looks
for, so it is sent after the commit with no outbox row of its own.

The envelope follows the reference registry's notifications (``notifications/event.go``): an
id, a timestamp, an action, a target (repository, digest, size, upload), the request id, and
the source service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import socket
import threading
import time
import typing
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session

from shared import db
from shared.models import OutboxEvent, utcnow
from shared.settings import get_settings

if TYPE_CHECKING:
    from kombu.connection import Connection

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
EVENT_TASK = "janitor.events.handle"
# A wake-up for notifications (``_WAKE_UPS``) is sent as this task, on the deliveries' own
# queue (``Settings.notifications_queue``), whose worker delivers them.
NOTIFY_TASK = "janitor.notifications.dispatch"

Action = Literal[
    "blob:upload:committed",
    "blob:upload:cancelled",
    # Notifications were written for a repository (shared.notifications): deliver them.
    "notifications:recorded",
    # No longer recorded (nothing consumes them); kept so that events queued by an earlier
    # version are still read.
    "blob:mounted",
    "blob:deleted",
    "manifest:pushed",
    "manifest:deleted",
    "tag:deleted",
]


class EventInvalid(ValueError):
    """A message that is not an event of this schema."""


def _field(document: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = document.get(name, default)
    if value is not None and (type(value) is not kind):
        raise EventInvalid(f"{name} must be {kind.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True, kw_only=True)
class Target:
    repository: str
    digest: str | None = None
    tag: str | None = None
    size: int | None = None
    media_type: str | None = None
    upload_uuid: str | None = None
    storage_key: str | None = None

    @classmethod
    def parse(cls, document: object) -> Target:
        if not isinstance(document, dict) or not isinstance(document.get("repository"), str):
            raise EventInvalid("target must be an object with a repository")
        optional = (f.name for f in fields(cls) if f.name != "repository")
        return cls(
            repository=document["repository"],
            **{name: _field(document, name, _NUMBERS.get(name, str)) for name in optional},
        )


_NUMBERS = {"size": int}  # the target's fields that are numbers; the others are text
_ACTIONS = frozenset(typing.get_args(Action))


@dataclass(frozen=True, kw_only=True)
class Event:
    action: Action
    target: Target
    request_id: str | None = None
    source: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    schema_version: int = SCHEMA_VERSION

    def as_message(self) -> dict[str, Any]:
        """The event as JSON values (the timestamp in ISO 8601), as sent and stored."""
        message = asdict(self)
        message["timestamp"] = self.timestamp.isoformat().replace("+00:00", "Z")
        return message

    def as_json(self) -> str:
        return json.dumps(self.as_message(), separators=(",", ":"))

    @classmethod
    def parse(cls, document: object) -> Event:
        """The event ``document`` (a message's JSON object) holds; EventInvalid when it is
        not one (keys it does not know are left out)."""
        if not isinstance(document, dict):
            raise EventInvalid("an event is a JSON object")
        if document.get("action") not in _ACTIONS:
            raise EventInvalid(f"unknown action {document.get('action')!r}")
        stamp = _field(document, "timestamp", str)
        try:
            timestamp = dt.datetime.fromisoformat(stamp) if stamp else dt.datetime.now(dt.UTC)
        except ValueError:
            raise EventInvalid(f"timestamp {stamp!r} is not ISO 8601") from None
        return cls(
            action=document["action"],
            target=Target.parse(document.get("target")),
            request_id=_field(document, "request_id", str),
            source=_field(document, "source", str, ""),
            id=_field(document, "id", str) or str(uuid.uuid4()),
            timestamp=timestamp,
            schema_version=_field(document, "schema_version", int, SCHEMA_VERSION),
        )

    @classmethod
    def parse_json(cls, text: str | bytes) -> Event:
        try:
            document = json.loads(text)
        except ValueError:
            raise EventInvalid("an event is a JSON object") from None
        return cls.parse(document)


def broker_options(broker_url: str, queue: str) -> dict[str, Any]:
    """Celery settings for ``broker_url`` and ``queue``; ``filesystem://<folder>`` needs no
    server."""
    options: dict[str, Any] = {"broker_url": broker_url, "task_default_queue": queue}
    if broker_url.startswith("filesystem://"):
        from pathlib import Path

        folder = Path(broker_url.removeprefix("filesystem://") or "var/broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options["broker_url"] = "filesystem://"
        options["broker_transport"] = "shared.filesystem_broker:Transport"
        options["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The worker takes one message at a time (acks_late, prefetch 1) and this transport
            # waits a polling interval whenever it cannot hand out another: at 50 ms a worker
            # took 20 tasks a second at most (300 moves queued by a burst of pushes took 15 s);
            # at 10 ms an idle janitor uses 0.95% of a core instead of 0.55%.
            "polling_interval": 0.01,
        }
    return options


# Events that only wake the janitor for what the database holds (it reads the work from
# there): they have no outbox row, since the janitor's beat looks for that work anyway (every
# REGISTRY_NOTIFICATIONS_POLL_SECONDS), and of a batch one per repository is sent, the others
# going with it, as a ``NOTIFY_TASK`` for the repository. A wake-up lost (its process died
# before sending it, the broker was down) only delays the work to that look.
_WAKE_UPS = frozenset({"notifications:recorded"})

# A row is left to the process that wrote it for this long before any relay takes it; a relay
# that took rows and did not delete them leaves them as long before they are taken again.
RELAY_DELAY = dt.timedelta(seconds=10)
# How often each process looks for rows left behind, and how many it takes at once.
POLL_SECONDS = 2.0
BATCH = 100


def record(session: Session, event: Event) -> None:
    """Write ``event`` in ``session``'s transaction; it is sent once the transaction commits
    (and never if it rolls back). A wake-up (``_WAKE_UPS``) has no row: it is only sent."""
    if event.action not in _WAKE_UPS:
        session.add(
            OutboxEvent(
                id=event.id,
                payload=event.as_json(),
                created_at=utcnow(),
                relay_after=utcnow() + RELAY_DELAY,
            )
        )
    session.info.setdefault(_PENDING, []).append(event)


_PENDING = "events.pending"


@sqlalchemy_event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    for event in session.info.pop(_PENDING, ()):
        _relay.send_soon(event)


@sqlalchemy_event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


class _Relay:
    """One thread per process: sends the events this process committed as soon as they are
    committed, and every :data:`POLL_SECONDS` the rows any process left behind; deletes the
    rows of what the broker accepted."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._next_poll = 0.0

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
                self._thread.start()

    def send_soon(self, event: Event) -> None:
        self.start()
        # When full: its row stays, and a poll relays it (a wake-up, which has none, is left
        # to the janitor's own look for due notifications).
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(event)

    def stop(self, timeout: float = 10) -> None:
        """Send what is waiting, then stop (at shutdown). What is not sent by then stays in
        the table for another relay."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)

    def _run(self) -> None:
        while True:
            wait = max(0.0, self._next_poll - time.monotonic())
            first: Event | None = None
            try:
                first = self._queue.get(timeout=wait)
                stopping = first is None
            except queue.Empty:  # a poll is due
                stopping = False
            events: list[Event] = []
            if first is not None:
                events.append(first)
                while len(events) < BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    events.append(more)
            # Those queued with no row (rows an earlier version wrote for wake-ups are deleted).
            wake_ups = {e.id for e in events if e.action in _WAKE_UPS}
            if time.monotonic() >= self._next_poll:
                self._next_poll = time.monotonic() + POLL_SECONDS
                try:
                    events.extend(_take_left_behind())
                except Exception:  # the rows stay for the next poll; what was queued goes on
                    log.warning("event relay could not take the rows left behind", exc_info=True)
            try:
                rows = [i for i in _publish_batch(events) if i not in wake_ups]
                if rows:
                    db.retrying(_delete, rows)
            except Exception:  # the rows stay; the next poll takes them
                log.warning("event relay failed", exc_info=True)
            if stopping:
                return


def _publish_batch(events: list[Event]) -> list[str]:
    """Publish ``events`` in order; the ids of those the broker took, or that a wake-up sent
    for the same repository in this batch stands for (every row of the batch was committed
    before it was sent)."""
    standing_for: dict[str, list[str]] = {}
    first_of: dict[tuple[str, str], str] = {}
    to_send: list[Event] = []
    for event in events:
        if event.action in _WAKE_UPS:
            key = (event.action, event.target.repository)
            if key in first_of:
                standing_for[first_of[key]].append(event.id)
                continue
            first_of[key] = event.id
            standing_for[event.id] = []
        to_send.append(event)
    sent: list[str] = []
    for event in to_send:
        if publish(event):
            sent.append(event.id)
            sent.extend(standing_for.get(event.id, ()))
    return sent


def _take_left_behind() -> list[Event]:
    """Rows due for relaying (their process did not send them), taken for
    :data:`RELAY_DELAY`."""
    now = utcnow()
    with db.reading() as connection:
        due = list(
            connection.scalars(
                select(OutboxEvent.id)
                .where(OutboxEvent.relay_after <= now)
                .order_by(OutboxEvent.created_at)
                .limit(BATCH)
            )
        )
    if not due:
        return []
    # Whole seconds: MySQL's DATETIME keeps no fraction, and the rows are found again by it.
    until = (now + RELAY_DELAY).replace(microsecond=0)

    def take() -> list[str]:
        with db.transaction() as session:
            session.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id.in_(due), OutboxEvent.relay_after <= now)
                .values(relay_after=until)
            )
            return list(
                session.scalars(
                    select(OutboxEvent.payload).where(
                        OutboxEvent.id.in_(due), OutboxEvent.relay_after == until
                    )
                )
            )

    return [Event.parse_json(payload) for payload in db.retrying(take)]


def _delete(ids: list[str]) -> None:
    with db.transaction() as session:
        session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids)))


_relay = _Relay()


def start_relay() -> None:
    """Start this process's relay (at startup: rows left behind are relayed even before this
    process records an event)."""
    _relay.start()


def stop_relay() -> None:
    _relay.stop()
    _publisher.close()


def _connection() -> Connection:
    """A new connection of kombu, the messaging library under Celery, to the broker, made as
    Celery makes it, with timeouts: a broker that does not answer fails in seconds."""
    from kombu.connection import Connection

    settings = get_settings()
    options = broker_options(settings.broker_url, settings.broker_queue)
    transport_options = dict(options.get("broker_transport_options", {}))
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # kombu's Redis transport waits without end by default (its connect_timeout is not
        # passed to the socket).
        transport_options.update(socket_connect_timeout=2, socket_timeout=2)
    return Connection(  # type: ignore[no-untyped-call]
        options["broker_url"],
        transport=options.get("broker_transport"),
        transport_options=transport_options,
        connect_timeout=2,
    )


def broker_connection_check() -> None:
    """Raise unless the broker accepts a connection now (readiness)."""
    with _connection() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


class _Publisher:
    """Sends events as Celery task messages (protocol 2, the janitor's worker consumes them)
    with kombu alone: a process that only sends never loads Celery (about 6 MiB of resident
    memory, 200 modules). One connection and its producer, kept, used by the relay thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._publish: Callable[..., Any] | None = None  # the producer's, retried by kombu
        self._queues: dict[str, Any] = {}  # kombu's Queue of each name, declared at its first

    def _queue(self, name: str) -> Any:
        from kombu.entity import Exchange, Queue

        if name not in self._queues:
            self._queues[name] = Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
        return self._queues[name]

    def send(self, event: Event) -> None:
        from kombu.messaging import Producer

        settings = get_settings()
        task_id = str(uuid.uuid4())
        args: list[Any]
        if event.action in _WAKE_UPS:
            task, name, args = NOTIFY_TASK, settings.notifications_queue, [event.target.repository]
        else:
            task, name, args = EVENT_TASK, settings.broker_queue, [event.as_message()]
        # The headers and body Celery's own send_task writes (celery.app.amqp.as_task_v2).
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args)[:1024],
            "kwargsrepr": "{}",
            "origin": f"{os.getpid()}@{socket.gethostname()}",
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        with self._lock:
            try:
                if self._connection is None or self._publish is None:
                    self._connection = connection = _connection()
                    producer = Producer(connection)  # type: ignore[no-untyped-call]
                    self._publish = connection.ensure(  # type: ignore[no-untyped-call]
                        producer,
                        producer.publish,
                        max_retries=2,
                        interval_start=0.2,
                        interval_step=0.5,
                    )
                self._publish(
                    (args, {}, embed),
                    routing_key=name,
                    serializer="json",
                    headers=headers,
                    correlation_id=task_id,
                    declare=[self._queue(name)],
                )
            except Exception:
                self._close()
                raise

    def _close(self) -> None:
        connection, self._connection, self._publish = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        with self._lock:
            self._close()


_publisher = _Publisher()


def publish(event: Event) -> bool:
    """Send ``event`` to the janitor now; whether the broker took it."""
    try:
        _publisher.send(event)
    except Exception as exc:
        kept = (
            "left to the janitor's look for due notifications"
            if event.action in _WAKE_UPS
            else "kept for the relay"
        )
        log.warning(
            "event not published yet (%s): action=%s id=%s: %s",
            kept,
            event.action,
            event.id,
            exc,
        )
        return False
    return True
