"""The metadata database: how code reaches it.

Two blocks say what a piece of work does:

- ``with transaction() as session``: writes, committed when the block ends (an ORM session;
  ``session.connection()`` for Core statements).
- ``with reading() as connection``: reads only (a Core connection, no ORM session).

Two runners say how a coroutine runs a function made of such blocks; domain functions use
them, so routes never choose a thread:

- ``await read(function, *args)``: a short read.
- ``await write(function, *args)``: writes, run again when the database chose them as a
  deadlock victim.

Code already on a thread of its own (the event relay, Celery's synchronous tasks) calls
``retrying(function, *args)``, what ``write`` runs on its worker thread.

Blocks are short: one is opened, queried and closed before any bytes stream, so no connection
is held while a client uploads or downloads, and no storage work is done inside one.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from shared.settings import get_settings

T = TypeVar("T")

# Connections a process's reads hold at once: as many as the worker threads that run them
# (asyncio's default pool: the CPU count plus 4, at most 32), with as many again in reserve.
READ_POOL_SIZE = min(32, (os.cpu_count() or 1) + 4)


def make_engine(url: str, lock_timeout: int = 30, *, reads: bool = False) -> Engine:
    """An engine for ``url``; a transaction waits up to ``lock_timeout`` seconds for a lock
    another transaction holds, then fails with ``OperationalError``. With ``reads`` (MySQL),
    an engine for :func:`reading`: see there."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes share one SQLite file: WAL lets readers go on while one writes,
        # and the busy timeout makes a writer wait for the lock instead of failing.
        kwargs["connect_args"] = {"timeout": lock_timeout, "check_same_thread": False}
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={lock_timeout * 1000}")
            cursor.close()
            # Let SQLAlchemy's "begin" hook below issue BEGIN itself.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A write transaction takes the write lock at BEGIN: upgrading a read lock later can
            # fail at once with SQLITE_BUSY whatever the busy timeout, when another process wrote.
            if conn.get_execution_options().get("readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.update(pool_size=10, max_overflow=20, pool_recycle=3600)
    # No ping before each use of a pooled connection (a round trip per transaction): a
    # connection the server dropped fails its first statement instead, the pool throws its
    # connections away, and read() and retrying() run the work again on a new one.
    if reads:
        # One round trip per statement: no transaction around it (autocommit), so no
        # ROLLBACK after it. Each statement sees what was committed when it ran. The pool is
        # as large as the threads that read at once.
        kwargs.update(
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            pool_size=READ_POOL_SIZE,
            max_overflow=READ_POOL_SIZE,
        )
    else:
        # No ROLLBACK when a connection goes back to the pool (a round trip per transaction,
        # 1 in 9 of a manifest PUT's statements): every transaction here has ended by then,
        # committed or rolled back, and a Connection (or Session) closed with one still open
        # rolls it back itself before the pool sees it.
        kwargs["pool_reset_on_return"] = None
    parsed = make_url(url)
    if parsed.get_driver_name() == "pymysql":
        load_pymysql()
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # A page of tags (10,000 names at most) is read as one joined string: longer than
        # GROUP_CONCAT's default limit of 1 KiB.
        kwargs["connect_args"] = {
            "init_command": f"SET SESSION innodb_lock_wait_timeout = {int(lock_timeout)}, "
            "SESSION group_concat_max_len = 4194304"
        }
    return create_engine(url, **kwargs)


# What PyMySQL imports first for its RSA password exchange, and a lock for the time it is held
# back.
_PYMYSQL_RSA = "cryptography.hazmat.backends"
_loading = threading.Lock()


class _HeldBack(importlib.abc.MetaPathFinder):
    """Refuses the module ``name`` to the thread ``thread`` only (None: to none): the others
    import it as usual meanwhile (a library that imports it, oss2's or PyJWT's, must never find
    it missing). Put first in ``sys.meta_path`` once and left there: the import system walks
    that list as it is, and a finder removed while another thread walks it makes that thread
    skip the next one (PathFinder: "unknown encoding: idna" at a service's start)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.thread: int | None = None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == self.name and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{fullname} is held back from PyMySQL", name=fullname)
        return None


_held_back = _HeldBack(_PYMYSQL_RSA)


def load_pymysql() -> None:
    """Import PyMySQL without the ``cryptography`` package, which it imports with itself
    (7.5 MiB resident in each process) for one use only: encrypting the password with the
    server's RSA key, under MySQL's sha256_password or caching_sha2_password authentication on
    a connection without TLS. That function imports it at its first call instead."""
    with _loading:
        if "pymysql" in sys.modules:
            return
        if _held_back not in sys.meta_path:
            sys.meta_path.insert(0, _held_back)  # another thread walking it sees one twice
        _held_back.thread = threading.get_ident()
        try:
            from pymysql import _auth
        finally:
            _held_back.thread = None
        eager: Callable[[bytes, bytes, bytes], bytes] = _auth.sha2_rsa_encrypt
        if getattr(_auth, "_have_cryptography", True):
            return  # imported already, by another package

        def sha2_rsa_encrypt(password: bytes, salt: bytes, public_key: bytes) -> bytes:
            try:
                from cryptography.hazmat.backends import default_backend
                from cryptography.hazmat.primitives import hashes, serialization
                from cryptography.hazmat.primitives.asymmetric import padding
            except ImportError:
                return eager(password, salt, public_key)  # PyMySQL's own error
            _auth.default_backend, _auth.hashes = default_backend, hashes
            _auth.serialization, _auth.padding = serialization, padding
            _auth._have_cryptography = True
            _auth.sha2_rsa_encrypt = eager
            return eager(password, salt, public_key)

        _auth.sha2_rsa_encrypt = sha2_rsa_encrypt


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    return make_engine(settings.database_url, settings.database_lock_timeout_seconds)


def forget_engine() -> None:
    """Drop the engine and sessions made for the settings so far (settings changed: the next
    use makes them anew)."""
    for cached in (get_engine, _sessionmaker, _read_engine):
        cached.cache_clear()
    from shared.repositories import forget_repository_ids

    forget_repository_ids()


@lru_cache
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


# SQLite has one writer at a time, and a writer that finds the lock taken sleeps in growing
# steps (up to 100 ms) before trying again. Writers of one process queue here instead, so that
# only writers of other processes ever meet SQLite's busy handler.
_sqlite_writer = threading.Lock()


class ConnectionLostBeforeCommit(OperationalError):
    """The database dropped the connection while the transaction ran, before its commit was
    sent: the server rolled it back, so it may run again from the start."""


_AFTER = "db.after"


def after(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the transaction of ``session`` (from :func:`transaction`) has
    ended, committed or not, its connection given back and this process's SQLite writer lock
    released: network work for the outcome (before the caller answers) holds no lock."""
    session.info.setdefault(_AFTER, []).append(callback)


@contextmanager
def transaction(*, read_committed: bool = False) -> Iterator[Session]:
    """A session in a write transaction: committed when the block ends, rolled back on error.
    What :func:`after` registered runs once it has ended. ``read_committed``: on MySQL, each
    statement reads what was committed when it ran, not a snapshot from the transaction's
    first read (for a check made under a lock, which must see what the lock's last holder
    committed)."""
    session = _sessionmaker()()
    try:
        if get_engine().dialect.name == "sqlite":
            with _sqlite_writer, session, session.begin():
                yield session
            return
        with session, session.begin():
            if read_committed:
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
            try:
                yield session
                session.flush()  # every statement sent here, before the commit
            except DBAPIError as exc:
                # (A connection lost during the commit is not this: whether the commit was
                # done is unknown then, and the error is the caller's.)
                if exc.connection_invalidated:
                    raise ConnectionLostBeforeCommit(
                        exc.statement, exc.params, exc.orig or exc, connection_invalidated=True
                    ) from exc
                raise
    finally:
        for callback in session.info.pop(_AFTER, ()):
            callback()


@lru_cache
def _read_engine() -> Engine:
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        return engine.execution_options(readonly=True)
    settings = get_settings()
    return make_engine(settings.database_url, settings.database_lock_timeout_seconds, reads=True)


@contextmanager
def reading() -> Iterator[Connection]:
    """A connection for reads: one or a few statements, no ORM objects. On MySQL each
    statement sees what was committed when it ran (there is no transaction around them)."""
    with _read_engine().connect() as connection:
        yield connection


async def read(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function``, a short read (one or two statements, no write), from a coroutine.

    On SQLite it runs right here: a read is a lookup in a local file that never waits for a
    writer (WAL), and costs less than the hop to a worker thread and back. On MySQL it runs in
    a worker thread: a read there is a network round trip, which must not hold up the event
    loop. It runs again, once, when it failed on a connection the server had dropped (a
    restart, an idle timeout): the pool has thrown its connections away by then."""
    if get_engine().dialect.name == "sqlite":
        return function(*args, **kwargs)
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return await asyncio.to_thread(function, *args, **kwargs)


def insert_new(
    connection: Connection, statement: Executable, params: dict[str, Any]
) -> CursorResult[Any] | None:
    """Run an INSERT in the current transaction; None, and nothing written, when it breaks a
    constraint (the row exists already: inserted meanwhile by a concurrent transaction). Both
    SQLite and InnoDB undo the failed statement alone and the transaction goes on, so no
    savepoint (two round trips on MySQL) is needed around it."""
    try:
        return connection.execute(statement, params)
    except IntegrityError:
        return None


async def write(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function``, which writes in transactions of its own, from a coroutine: in a
    worker thread, and again when the database chose it as a deadlock victim."""
    return await asyncio.to_thread(retrying, function, *args, **kwargs)


# MySQL/MariaDB errors after which the whole transaction may simply be run again: a deadlock
# (1213) and a lock wait timeout (1205). InnoDB rolls the transaction back for both.
_RETRYABLE = {1213, 1205}


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` or an error it was raised while handling is a deadlock or lock timeout
    (rolling back to a savepoint after a deadlock fails with "savepoint does not exist"), or a
    transaction whose connection the database dropped before its commit."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionLostBeforeCommit):
            return True
        args: tuple[Any, ...] = getattr(getattr(seen, "orig", seen), "args", ())
        if args and args[0] in _RETRYABLE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


ATTEMPTS = 5


def retrying(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function`` (which opens its own transactions) on this thread, again when the
    database chose it as a deadlock victim, as concurrent pushes, deletes and garbage
    collection sometimes make it, or dropped its connection (a restart, an idle timeout)."""
    for attempt in range(ATTEMPTS):
        try:
            return function(*args, **kwargs)
        except OperationalError as exc:
            if not is_retryable(exc) or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")
