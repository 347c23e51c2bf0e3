"""Blobs of mirrored namespaces (``shared.mirrors``), pulled through from their upstream.

A blob the repository does not hold is fetched from the upstream once, whatever the number of
clients asking for it on any replica: the request that takes the fetch's lease (a row of
``job_leases`` named by the repository and the digest, renewed while it fetches) fetches; the
others wait for the blob, and take the lease over if its holder stops renewing it (a replica
that died). The fetch is a monolithic upload of the registry's own: the upstream's bytes go to
storage while their digest is computed, and become a blob only when it matches. For a whole
GET they are also streamed to the client as they come, the last chunk only once the blob is
verified and stored: an upstream that sends other bytes has the client's transfer cut short,
and nothing of it is kept. A client that goes away, or reads more slowly than the upstream
sends, does not hold the fetch up: the fetch goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from blob_service import blobs, uploads
from shared import db, leases
from shared.blobs import TransferAborted
from shared.errors import ErrorCode, RegistryError
from shared.mirrors import Mirror
from shared.observability import MIRROR_BYTES_FETCHED, MIRROR_REQUESTS
from shared.reference import Digest
from shared.settings import get_settings
from shared.storage import StorageDriver
from shared.upstream import (
    UpstreamNotFound,
    UpstreamRefused,
    UpstreamUnavailable,
    unavailable,
    upstream,
)

HIT = "registry; hit"
MISS = "registry; fwd=miss; stored"
COLLAPSED = "registry; fwd=miss; collapsed"
# How often a request waiting for another's fetch looks for the blob.
WAIT_SECONDS = 0.1
# Chunks of the upstream's answer buffered for the client; a client that has not taken one
# within CLIENT_WAIT_SECONDS while they are all waiting is left behind (its transfer is cut
# short: it asks again and is served from storage), so that no client slows the fetch that
# every other one waits for.
QUEUE_CHUNKS = 8
CLIENT_WAIT_SECONDS = 2.0
T = TypeVar("T")

# Fetches whose client went away, kept referenced until they end.
_background: set[asyncio.Task[Any]] = set()


def _in_background(work: Awaitable[T]) -> asyncio.Task[T]:
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


@dataclass
class Served:
    """A blob to answer: from storage (``info``), or streamed as it is fetched (``stream``, of
    ``size`` bytes when the upstream said)."""

    cache_status: str
    info: blobs.BlobInfo | None = None
    stream: AsyncIterator[bytes] | None = None
    size: int | None = None
    upload_key: str | None = None  # where a streamed fetch writes the bytes


_END = b""  # the last chunk has been queued (chunks are never empty)
_LEFT = object()  # the client was left behind


@dataclass
class _Tee:
    """The upstream's answer, read by the upload that stores it; its chunks handed, as they
    come, to the client's response too, while the client keeps up."""

    source: Callable[[], AsyncIterator[bytes]]
    streaming: bool
    length: asyncio.Future[int | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    queue: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(QUEUE_CHUNKS))
    left: bool = False
    upload_key: str | None = None  # the upload's, once it has started

    async def _hand(self, item: object) -> None:
        if not self.streaming or self.left:
            return
        try:
            async with asyncio.timeout(CLIENT_WAIT_SECONDS):
                await self.queue.put(item)
        except TimeoutError:
            self.leave()

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.source():
            if chunk:
                MIRROR_BYTES_FETCHED.inc(len(chunk))
                await self._hand(chunk)
                yield chunk
        await self._hand(_END)

    def leave(self) -> None:
        """Go on without the client (gone, or too slow): what it would have read is dropped,
        and it is told to stop."""
        self.left = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(_LEFT)


async def _stored(repository: str, digest: Digest) -> blobs.BlobInfo | None:
    """The blob as the repository holds it, or None."""
    try:
        return await blobs.stat(repository, digest)
    except RegistryError as exc:
        if exc.code is not ErrorCode.BLOB_UNKNOWN:
            raise
        return None


async def serve(
    storage: StorageDriver,
    mirror: Mirror,
    repository: str,
    digest: Digest,
    request_id: str | None,
    *,
    stream: bool,
) -> Served:
    """The blob as the repository holds it, fetched first when it does not. With ``stream``
    (a whole GET), a fetch this request makes is streamed to it as it comes."""
    repository = mirror.stored_name(repository)
    lease = leases.name_for("fetch", repository, str(digest))
    owner = uuid.uuid4().hex
    ttl = dt.timedelta(seconds=get_settings().upload_lease_seconds)
    info, waited = await leases.take_or_wait(
        lease, owner, ttl, lambda: _stored(repository, digest), WAIT_SECONDS
    )
    if info is not None:
        MIRROR_REQUESTS.labels("blob", "miss" if waited else "hit").inc()
        return Served(COLLAPSED if waited else HIT, info)
    held = (lease, owner, ttl)
    return await _fetch(storage, mirror, repository, digest, request_id, stream, held)


async def _holding(lease: str, owner: str, ttl: dt.timedelta, fetch: Awaitable[T]) -> T:
    """``fetch``, the lease renewed meanwhile and released after: the fetch ends, and the
    requests waiting for it go on, without waiting for the release (the blob is stored by
    then, or it failed: a request waiting for it looks for the blob before the lease)."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            with contextlib.suppress(Exception):  # tried again at the next beat
                await db.write(leases.acquire, lease, ttl, owner)

    renewer = asyncio.create_task(renew())
    try:
        return await fetch
    finally:
        renewer.cancel()
        leases.release_soon(lease, owner)


async def _fetch(
    storage: StorageDriver,
    mirror: Mirror,
    repository: str,
    digest: Digest,
    request_id: str | None,
    stream: bool,
    held: tuple[str, str, dt.timedelta],
) -> Served:
    name = mirror.upstream_name(repository)

    async def source() -> AsyncIterator[bytes]:
        async with upstream(mirror).blob(name, str(digest)) as answer:
            if not tee.length.done():
                tee.length.set_result(answer.length)
            async for chunk in answer.chunks:
                yield chunk
                # Chunks come one after the other while the upstream sends faster than they
                # are stored: other tasks (the client's answer first) get a turn at each.
                await asyncio.sleep(0)

    tee = _Tee(source, stream)

    def upload_started(state: uploads.UploadState) -> None:
        tee.upload_key = state.storage_key

    fetch = uploads.monolithic(
        storage,
        repository,
        digest,
        tee.chunks(),
        request_id,
        announce=False,
        started=upload_started,
    )
    task = _in_background(_holding(*held, _guarded(fetch, mirror, name, digest)))
    if stream:
        # The answer starts once the upstream has answered (or the fetch has failed).
        started: set[asyncio.Future[Any]] = {task, tee.length}
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        if not tee.length.done() or tee.length.result() is None:
            tee.leave()  # failed, or no length said: answered from storage once stored
        else:
            MIRROR_REQUESTS.labels("blob", "miss").inc()
            return Served(
                MISS,
                stream=_streamed(tee, task),
                size=tee.length.result(),
                upload_key=tee.upload_key,
            )
    await task
    MIRROR_REQUESTS.labels("blob", "miss").inc()
    return Served(MISS, await blobs.stat(repository, digest))


async def _guarded(
    fetch: Awaitable[uploads.CommittedBlob],
    mirror: Mirror,
    name: str,
    digest: Digest,
) -> uploads.CommittedBlob:
    """The fetch, its failures as the spec's errors."""
    what = f"blob {digest} of {name!r}"
    try:
        return await fetch
    except UpstreamNotFound:
        MIRROR_REQUESTS.labels("blob", "miss").inc()
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"{what} unknown at {mirror.url}") from None
    except (UpstreamUnavailable, UpstreamRefused) as exc:
        raise unavailable(mirror, "blob", what, exc) from None
    except RegistryError as exc:
        if exc.code is not ErrorCode.DIGEST_INVALID:
            raise
        wrong = UpstreamRefused("it sent bytes of another digest")
        raise unavailable(mirror, "blob", what, wrong) from None


async def _streamed(tee: _Tee, task: asyncio.Task[uploads.CommittedBlob]) -> AsyncIterator[bytes]:
    """The chunks as they come, the last one only once the blob is verified and stored."""
    held: bytes | None = None
    try:
        while True:
            getting: asyncio.Future[object] = asyncio.ensure_future(tee.queue.get())
            waiting: set[asyncio.Future[Any]] = {getting, task}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done() and task.exception() is not None:
                getting.cancel()
                raise TransferAborted(f"the fetch failed: {task.exception()}")
            item = await getting  # a fetch that ended well has queued the rest
            if item is _LEFT:
                raise TransferAborted("the client read more slowly than the upstream sent")
            if item == _END:
                try:
                    await task
                except Exception as exc:
                    raise TransferAborted(f"the fetch failed: {exc}") from exc
                if held is not None:
                    yield held
                return
            assert isinstance(item, bytes)
            if held is not None:
                yield held
            held = item
    finally:
        if not tee.left:
            tee.leave()


async def progress(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed fetch told as lines, for a gateway that sends the bytes from the upload's
    file itself (``shared.web.FOLLOW_UPLOAD_HEADER``): after each chunk handed to storage,
    how many bytes have been (``<n>\\n``; the file holds them once it is that long); then
    ``done\\n`` once the blob is verified and stored. When the fetch fails the lines are cut
    short, as the bytes would be, and ``done`` never comes."""
    handed = 0
    async for chunk in chunks:
        handed += len(chunk)
        yield b"%d\n" % handed
    yield b"done\n"
