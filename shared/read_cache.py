"""What a manifest service reads most, kept in its memory and checked against a token in Redis
on every request, so that no replica answers from data older than a change it acknowledged:
manifests by tag or digest (OCI Distribution Spec, "Pulling manifests") and pages of tag
lists ("Listing Tags").

On MySQL a read is a network round trip from a worker thread, and a page of 1,000 tags costs
the database ~0.6 ms (an index walk it cannot shorten); reading one short key from Redis costs
a fraction of either, on the event loop.

How the data stays correct across replicas:

- Each repository has a **token** in Redis (``registry:repository-token:<name>``): a random
  value, never reused, that expires after :data:`TOKEN_SECONDS`.
- A **reader** reads the token first (making one when there is none), then the data: from its
  memory when what it kept was read under that same token, from the database otherwise, and
  keeps what it read under the token it read *before* reading it. Only what exists is kept: a
  404 is read again every time.
- A **writer** whose transaction changed what a reader could have kept (a tag added, moved or
  deleted, a manifest deleted, by a client or by garbage collection) deletes the token once the
  transaction has ended, before the change is acknowledged. What was read before the change
  was kept under a token that no longer exists: every later reader gets another and misses.

A transaction that ended in an error deletes the token as well (a COMMIT whose answer was lost
may have been done). Without Redis (the embedded defaults' broker is the filesystem) nothing
is kept: every read goes to the database.

When Redis does not answer a reader, it drops what it kept and reads the database. A writer
that cannot delete a token (Redis down, or stalled past the timeout) logs and counts the
failure and answers all the same (holding writes for Redis would make a Redis outage a
registry outage): what replicas kept under that token may then be served until the token
expires, at most :data:`TOKEN_SECONDS` after it was made, which bounds how old an answer can
be in that case, a Redis restored from its own snapshot after a short restart included.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from cachetools import LRUCache
from prometheus_client import Counter
from sqlalchemy.orm import Session

from shared import db
from shared.settings import get_settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "registry:repository-token:"
TOKEN_SECONDS = 10
# After Redis failed to answer a reader (or a writer), this process reads the database (or
# writes without deleting tokens) for this long before it asks Redis again: a dead host
# would otherwise cost a timeout per request.
PAUSE_SECONDS = 5.0
TIMEOUT_SECONDS = 0.5
# What a process keeps at most, in bytes (roughly: manifests' lengths, tag names' lengths).
BUDGET_BYTES = 8 * 1024 * 1024

LOOKUPS = Counter(
    "registry_read_cache_total",
    "Reads asked of the manifest service's cache, by kind (manifest, tags) and result (hit, "
    "miss, unavailable: Redis did not answer)",
    ["kind", "result"],
)
INVALIDATION_FAILURES = Counter(
    "registry_read_cache_invalidation_failures_total",
    "Changes to a repository whose token could not be deleted in Redis",
)


def redis_url() -> str | None:
    """The Redis that holds the tokens: the broker's, when the broker is Redis."""
    url = get_settings().broker_url
    return url if url.startswith(("redis://", "rediss://")) else None


class _Reader:
    """A process's kept data, and its connection to Redis (one event loop: the service's)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
        )
        self.kept: LRUCache[tuple[Any, ...], tuple[str, Any, int]] = LRUCache(
            BUDGET_BYTES, getsizeof=lambda entry: entry[2]
        )
        self.paused_until = 0.0

    async def token(self, repository: str) -> str | None:
        """The repository's token (made now when it has none); None when Redis fails."""
        import redis

        if time.monotonic() < self.paused_until:
            return None
        key = KEY_PREFIX + repository
        try:
            found = await self.redis.get(key)
            if found is None:
                made = secrets.token_hex(16)
                if await self.redis.set(key, made, nx=True, ex=TOKEN_SECONDS):
                    return made
                found = await self.redis.get(key)  # made meanwhile by another reader
        except (redis.RedisError, OSError) as exc:
            self.paused_until = time.monotonic() + PAUSE_SECONDS
            self.kept.clear()  # a token deleted meanwhile may come back with a restored Redis
            logger.warning("read cache: Redis did not answer (%s); reading the database", exc)
            return None
        return found.decode() if isinstance(found, bytes) else found


_reader: _Reader | None = None


async def cached(
    repository: str,
    kind: str,
    key: tuple[Any, ...],
    read: Callable[[], Awaitable[T]],
    size: Callable[[T], int],
) -> T:
    """What ``read`` reads from the database about ``repository`` (``kind`` and ``key`` tell
    it from other reads), from this process's memory when it is known to be current."""
    global _reader
    if _reader is None:
        url = redis_url()
        if url is None:
            return await read()
        _reader = _Reader(url)
    token = await _reader.token(repository)
    if token is None:
        LOOKUPS.labels(kind, "unavailable").inc()
        return await read()
    full_key = (repository, kind, *key)
    kept = _reader.kept.get(full_key)
    if kept is not None and kept[0] == token:
        LOOKUPS.labels(kind, "hit").inc()
        value: T = kept[1]
        return value
    LOOKUPS.labels(kind, "miss").inc()
    fresh = await read()
    bytes_ = size(fresh) + 200
    if bytes_ <= BUDGET_BYTES // 8:
        _reader.kept[full_key] = (token, fresh, bytes_)
    return fresh


async def close() -> None:
    """Close this process's connection to Redis (the service's shutdown)."""
    global _reader
    if _reader is not None:
        await _reader.redis.aclose()
        _reader = None


# Writers.

_CHANGED = "read_cache.changed"


def changed(session: Session, repository: str) -> None:
    """``session``'s transaction changes a tag or deletes a manifest of ``repository``: its
    token is deleted when the transaction has ended (committed or not), before the caller
    answers (``db.after``)."""
    if redis_url() is None:
        return
    repositories: set[str] | None = session.info.get(_CHANGED)
    if repositories is None:
        fresh: set[str] = set()
        session.info[_CHANGED] = fresh
        db.after(session, lambda: forget(sorted(fresh)))
        repositories = fresh
    repositories.add(repository)


@lru_cache
def _writer(url: str) -> redis.Redis:
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )


_writer_paused_until = 0.0


def forget(repositories: list[str]) -> None:
    """Delete the tokens of ``repositories`` (tried twice, unless Redis failed a moment ago)."""
    import redis

    global _writer_paused_until
    url = redis_url()
    if url is None or not repositories:
        return
    keys: list[Any] = [KEY_PREFIX + name for name in repositories]
    client = _writer(url)
    error: Exception | None = None
    if time.monotonic() >= _writer_paused_until:
        for _ in range(2):
            try:
                client.delete(*keys)
                return
            except (redis.RedisError, OSError) as exc:
                error = exc
        _writer_paused_until = time.monotonic() + PAUSE_SECONDS
    INVALIDATION_FAILURES.inc()
    logger.error(
        "read cache: could not delete the tokens of %s (%s); other replicas may answer from "
        "what they read before for up to %d s",
        ", ".join(repositories),
        error or "Redis failed a moment ago",
        TOKEN_SECONDS,
    )
