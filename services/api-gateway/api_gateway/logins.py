"""Password checks that no client can monopolise.

bcrypt is slow by design, so the gateway runs only a few checks at once (in threads: the event
loop and the other core stay free). Left at that, a client guessing passwords would fill the
queue and every other user's login would wait behind its guesses. So:

- **Failures are limited** per client address and per user name, as token buckets that only
  failures drain: an address that failed ``ADDRESS_BURST`` times in quick succession may try
  once every ``1 / ADDRESS_RATE`` seconds after; a user name under attack from many addresses,
  once every ``1 / USER_RATE`` seconds from addresses that have failed before (an address that
  never failed is never refused for the user's sake, so an attacker cannot lock a user out).
  A refused attempt costs no bcrypt: 429 ``TOOMANYREQUESTS`` with ``Retry-After``.
- **Clients that have failed lately wait behind the others**: a check for an address with a
  recent failure takes a bcrypt slot only when no check of a clean address is waiting, and at
  most ``SUSPECT_QUEUE`` of them wait at once (more: 429).

The counts are per gateway replica, in memory: like the rate limits, advisory (a restart or
another replica starts afresh), bounded in size.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from shared.errors import ErrorCode, RegistryError

SLOTS = 2  # bcrypt checks at once
ADDRESS_BURST, ADDRESS_RATE = 10.0, 1 / 3  # failures, then one every 3 s
USER_BURST, USER_RATE = 30.0, 1.0
SUSPECT_QUEUE = 8  # checks of failing addresses waiting at once
MAX_TRACKED = 50_000  # addresses and names remembered; the fullest buckets are dropped first


class LoginThrottled(RegistryError):
    """Too many failed logins lately: 429 ``TOOMANYREQUESTS`` with ``Retry-After``."""

    def __init__(self, retry_after: float, detail: str) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(
            ErrorCode.TOOMANYREQUESTS, detail, headers={"Retry-After": str(self.retry_after)}
        )


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class _FailureBuckets:
    def __init__(self, burst: float, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self._buckets: dict[str, _Bucket] = {}

    def _level(self, key: str, now: float) -> float | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        level = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        if level >= self.burst:
            del self._buckets[key]  # full again: forget it
            return None
        return level

    def failed_lately(self, key: str, now: float) -> bool:
        return self._level(key, now) is not None

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        level = self._level(key, now)
        return 0.0 if level is None or level >= 1 else (1 - level) / self.rate

    def fail(self, key: str, now: float) -> None:
        level = self._level(key, now)
        self._buckets[key] = _Bucket((self.burst if level is None else level) - 1, now)
        if len(self._buckets) > MAX_TRACKED:
            for stale in sorted(self._buckets, key=lambda k: -self._buckets[k].tokens)[
                : MAX_TRACKED // 10
            ]:
                del self._buckets[stale]


class _Slots:
    """``SLOTS`` holders at once; waiting clean checks go before waiting suspect ones."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    def suspects_waiting(self) -> int:
        return len(self._waiting[1])

    @asynccontextmanager
    async def slot(self, suspect: bool) -> AsyncIterator[None]:
        if self._free > 0 and not (self._waiting[0] or self._waiting[1]):
            self._free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue = self._waiting[1 if suspect else 0]
            queue.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release()  # handed a slot just as it was cancelled
                else:
                    queue.remove(future)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for queue in self._waiting:
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)
                    return
        self._free += 1


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._addresses = _FailureBuckets(ADDRESS_BURST, ADDRESS_RATE)
        self._users = _FailureBuckets(USER_BURST, USER_RATE)
        self._slots = _Slots(SLOTS)

    async def check(self, address: str, user: str, work: Callable[[], bool]) -> bool:
        """Run the password check ``work`` (in a thread) for ``user`` from ``address``, unless
        throttled (``LoginThrottled``); a failure is counted."""
        now = self._clock()
        suspect = self._addresses.failed_lately(address, now)
        wait = self._addresses.wait(address, now)
        if wait > 0:
            raise LoginThrottled(wait, "too many failed logins from this address; wait")
        if suspect:
            wait = self._users.wait(user, now)
            if wait > 0:
                raise LoginThrottled(wait, "too many failed logins for this user; wait")
            if self._slots.suspects_waiting() >= SUSPECT_QUEUE:
                raise LoginThrottled(1, "too many failed logins waiting; wait")
        async with self._slots.slot(suspect):
            ok = await asyncio.to_thread(work)
        if not ok:
            now = self._clock()
            self._addresses.fail(address, now)
            self._users.fail(user, now)
        return ok
