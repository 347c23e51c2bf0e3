"""The Aliyun OSS driver (``oss://<bucket>/<prefix>?endpoint=https://oss-cn-hangzhou.aliyuncs.com``),
on the official ``oss2`` SDK.

How appends are stored: one object per append, composed on move
----------------------------------------------------------------

OSS has two ways to write an object in pieces, and neither fits an upload that grows over
PATCH requests served by any replica, whose size the database records:

- AppendObject (position-checked appends) cannot undo: OSS cannot truncate, and a failed or
  refused chunk must leave the object at the size the database recorded. An appendable object
  also cannot be copied (CopyObject and UploadPartCopy refuse it), so the janitor's move to the
  blob's key would have to stream every byte back through the janitor, and it is limited to
  5 GB.
- A multipart upload cannot be read before it is completed (the digest is verified by reading
  the upload back when its running hash is in another replica), and its parts must be at least
  100 KB but for the last, while a client may send chunks of any size.

So every ``append`` call writes its bytes as new, whole objects with PutObject, streamed from
the request (chunked transfer encoding; nothing is buffered): the bytes from offset 0 are the
object at the key itself, and bytes appended at offset ``n`` are a *segment* object
``<key>.seg-<n, 20 digits>``. The object is the chain ``<key>``, then the segment starting where
it ends, and so on. A PutObject is all or nothing, so:

- a failed append leaves nothing: an interrupted PutObject stores nothing, and the segments the
  call did write are deleted before it raises (at offset 0 the key is reset to empty, as the
  filesystem driver leaves an empty file);
- undoing an append (``append(key, offset, <nothing>)``, which the blob service does when a
  chunk's ``Content-Range`` was wrong or its size could not be recorded) deletes the segments
  from ``offset`` on: the segments of one call start at the offset it was given, which is the
  size the database recorded;
- if even that cleanup fails (OSS unreachable), the bytes left past the recorded size are
  harmless: every append first deletes whatever lies at or past its ``offset`` (and cuts a
  piece that straddles it, with a server-side ranged copy), and readers of a blob ask for its
  recorded size. The database's size stays right.

One append call also starts a new segment every ``segment_size`` bytes (1 GiB), which keeps
each PutObject well under OSS's 5 GB limit. ``move`` composes the chain into one object at the
destination, server-side: CopyObject for a single piece up to 1 GB, otherwise a multipart
upload whose parts are UploadPartCopy ranges of the pieces (pieces under 1 MiB are read and
sent as UploadPart, grouped, since a copied part must be at least 100 KB). Blobs, which are
only ever written by ``move``, are therefore always single objects, and reading one is one
ranged GET; a read asks for the segment listing only when it reaches the end of the first
object. ``list`` shows each chain as one object; ``delete`` removes the chain and anything
under ``<key>/``.

Errors: every SDK call runs in a thread; timeouts are explicit (connect and read), and calls are
retried with exponential backoff and jitter on 5xx answers, 429, ``RequestTimeout``, dropped
connections and timeouts; an interrupted download resumes where it stopped (``If-Match`` on the
ETag, so the bytes cannot change underneath). A streamed PutObject cannot be replayed, so it is
not retried: the append fails and the client sends the chunk again. What still fails raises
:class:`~shared.storage.StorageError` (``ObjectNotFound`` for a missing object), which the
services answer with 503 ``UNAVAILABLE``.

Incomplete multipart uploads are aborted when a move fails; if even the abort fails they are
left, so a bucket lifecycle rule that aborts incomplete multipart uploads after a few days is
recommended.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import os
import random
import re
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qs, urlsplit

import oss2
import oss2.credentials
import oss2.exceptions
import oss2.models
import requests
import urllib3.exceptions

from shared.numbers import parse_decimal
from shared.settings import Settings
from shared.storage import ObjectInfo, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


SEGMENT_MARK = ".seg-"
_SEGMENT = re.compile(r"^(?P<base>.+)\.seg-(?P<start>[0-9]{20})$")
READ_CHUNK = 1024 * 1024
MAX_DELETE = 1000  # DeleteMultipleObjects takes at most 1000 keys
STANDARD_RANGE = {"x-oss-range-behavior": "standard"}
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


def segment_key(key: str, start: int) -> str:
    """The object holding the bytes of ``key`` appended at offset ``start`` (> 0)."""
    return f"{key}{SEGMENT_MARK}{start:020d}"


def logical_key(physical: str) -> str:
    """The key of the object a stored object belongs to (itself, or a segment's key)."""
    match = _SEGMENT.match(physical)
    return match["base"] if match else physical


# --- errors -------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    """Worth retrying: the request may succeed if sent again."""
    if isinstance(exc, oss2.exceptions.RequestError | oss2.exceptions.InconsistentError):
        return True  # connection failures and timeouts; a checksum that did not match
    if isinstance(exc, oss2.exceptions.ServerError):
        return bool(exc.status >= 500 or exc.status == 429 or exc.code == "RequestTimeout")
    return isinstance(
        exc,
        requests.RequestException | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError,
    )


def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(
        exc,
        oss2.exceptions.OssError
        | requests.RequestException
        | urllib3.exceptions.HTTPError
        | OSError,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, oss2.exceptions.ServerError):
        return f"{exc.status} {exc.code}: {exc.message} (request id {exc.request_id})"
    if isinstance(exc, oss2.exceptions.RequestError):
        return f"request failed: {exc.exception}"
    if isinstance(exc, oss2.exceptions.OssError):
        return str(exc.body)
    return f"{type(exc).__name__}: {exc}"


def _mapped(what: str, key: str, exc: BaseException) -> StorageError:
    message = f"OSS {what} {key!r}: {_describe(exc)}"
    if isinstance(exc, oss2.exceptions.NoSuchKey):
        return ObjectNotFound(message)
    return StorageError(message)


# --- credentials --------------------------------------------------------------------------


class FileCredentials(oss2.credentials.CredentialsProvider):  # type: ignore[misc]
    """Credentials from a mounted secret file, JSON: ``{"access_key_id": ..., "access_key_secret":
    ..., "security_token": ...}`` (the token only for STS credentials; Aliyun's ``AccessKeyId``,
    ``AccessKeySecret``, ``SecurityToken`` spelling is read too). The file is read again when
    it changes, so rotated secrets are picked up without a restart."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._credentials: oss2.credentials.Credentials | None = None
        self.get_credentials()  # a missing or malformed file fails at startup

    def get_credentials(self) -> oss2.credentials.Credentials:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp or self._credentials is None:
                data = json.loads(self.path.read_text())

                def field_(*names: str) -> str:
                    return next((str(data[n]).strip() for n in names if data.get(n)), "")

                key_id = field_("access_key_id", "AccessKeyId")
                secret = field_("access_key_secret", "AccessKeySecret")
                if not key_id or not secret:
                    raise ValueError(f"{self.path} has no access_key_id and access_key_secret")
                token = field_("security_token", "SecurityToken")
                self._credentials = oss2.credentials.Credentials(key_id, secret, token)
                self._stamp = stamp
            return self._credentials


def _auth(settings: Settings) -> Any:
    key_id = settings.oss_access_key_id
    secret = settings.oss_access_key_secret.get_secret_value()
    if key_id and secret:
        return oss2.Auth(key_id, secret)
    if settings.oss_credentials_file:
        return oss2.ProviderAuth(FileCredentials(settings.oss_credentials_file))
    raise ValueError(
        "OSS storage needs credentials: REGISTRY_OSS_ACCESS_KEY_ID and "
        "REGISTRY_OSS_ACCESS_KEY_SECRET, or REGISTRY_OSS_CREDENTIALS_FILE"
    )


# --- how an object is stored --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Piece:
    key: str  # the stored object's full key
    start: int  # where its bytes are in the object
    size: int
    modified: float


@dataclass
class _Layout:
    """The stored objects of one key: the object at the key, its segments, and objects under
    ``<key>/`` (which ``delete`` removes too)."""

    base: _Piece | None = None
    segments: dict[int, _Piece] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)

    def chain(self) -> list[_Piece]:
        if self.base is None:
            return []
        pieces = [self.base]
        end = self.base.size
        while (piece := self.segments.get(end)) is not None and piece.size > 0:
            pieces.append(piece)
            end += piece.size
        return pieces

    @property
    def size(self) -> int | None:
        return None if self.base is None else sum(p.size for p in self.chain())

    def modified(self) -> float:
        return max(
            [p.modified for p in self.segments.values()]
            + ([self.base.modified] if self.base else [])
        )


@dataclass(frozen=True, slots=True)
class _Range:
    key: str
    first: int
    length: int
    whole: bool = False  # the range is the entire object


@dataclass(frozen=True, slots=True)
class _Part:
    copy: bool  # an UploadPartCopy of ranges[0], or an UploadPart of all ranges' bytes
    ranges: tuple[_Range, ...]

    @property
    def size(self) -> int:
        return sum(r.length for r in self.ranges)


class _Collapser:
    """Turns a key-ordered listing of stored objects into the objects ``list`` shows: a key
    with its segments is one object. A segment sorts after its key, possibly after other keys
    that start with it; a key is complete once the listing passes its segments' prefix."""

    def __init__(self) -> None:
        self._pending: dict[str, _Layout] = {}

    def add(self, key: str, size: int, modified: float) -> Iterator[tuple[str, _Layout]]:
        match = _SEGMENT.match(key)
        for base in list(self._pending):
            mark = base + SEGMENT_MARK
            if key > mark and not key.startswith(mark):
                yield base, self._pending.pop(base)
        if match:
            base, start = match["base"], int(match["start"])
            layout = self._pending.setdefault(base, _Layout())
            layout.segments[start] = _Piece(key, start, size, modified)
        else:
            layout = self._pending.setdefault(key, _Layout())
            layout.base = _Piece(key, 0, size, modified)

    def finish(self) -> Iterator[tuple[str, _Layout]]:
        yield from self._pending.items()
        self._pending.clear()


# --- streaming a request body from async chunks -------------------------------------------


class _Feed:
    """Hands the chunks of an async iterable to a worker thread, one at a time (the thread waits
    on the event loop for each): the body of a PutObject is never held whole."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chunks: AsyncIterable[bytes]) -> None:
        self._loop = loop
        self._iterator = aiter(chunks)
        self._back: bytes | None = None
        self._waiting: concurrent.futures.Future[bytes | None] | None = None
        self._aborted = threading.Event()
        self.error: BaseException | None = None  # what the chunks raised, if anything

    async def _next(self) -> bytes | None:
        while True:
            try:
                chunk = await anext(self._iterator)
            except StopAsyncIteration:
                return None
            if chunk:
                return bytes(chunk)

    def next(self) -> bytes | None:
        """The next non-empty chunk, or None at the end. Runs in the worker thread."""
        if self._back is not None:
            chunk, self._back = self._back, None
            return chunk
        if self._aborted.is_set():
            raise StorageError("the append was cancelled")
        self._waiting = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
        try:
            return self._waiting.result()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._waiting = None

    def push_back(self, chunk: bytes) -> None:
        self._back = chunk

    def abort(self) -> None:
        self._aborted.set()
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()


# --- the driver ---------------------------------------------------------------------------


class OssDriver:
    local = False

    def __init__(
        self,
        bucket: Any,
        prefix: str = "",
        *,
        retries: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        segment_size: int = 1 << 30,
        copy_limit: int = 1 << 30,
        copy_part_size: int = 256 << 20,
        upload_part_size: int = 8 << 20,
        min_part_size: int = 100 * 1024,
        small_piece: int = 1 << 20,
        page_size: int = 1000,
        redirect: bool = False,
        threads: int = 32,
        stream_threads: int = 256,
    ) -> None:
        if small_piece < 2 * min_part_size or copy_part_size < 2 * min_part_size:
            raise ValueError("small_piece and copy_part_size must be at least 2 * min_part_size")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.segment_size = segment_size
        self.copy_limit = copy_limit
        self.copy_part_size = copy_part_size
        self.upload_part_size = max(upload_part_size, min_part_size)
        self.min_part_size = min_part_size
        self.small_piece = small_piece
        self.page_size = page_size
        self.redirect = redirect
        self._threads = threads
        self._stream_threads = stream_threads
        self._pid = -1
        self._executors()

    @classmethod
    def from_url(cls, url: str, settings: Settings, **options: Any) -> OssDriver:
        """``oss://<bucket>/<prefix>?endpoint=<url>`` with optional ``connect_timeout``,
        ``read_timeout`` (seconds) and ``retries``; credentials from ``settings``."""
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint")
        if not parts.netloc or not endpoint:
            raise ValueError(f"expected oss://<bucket>/<prefix>?endpoint=<url>, got {url!r}")
        timeout = (float(query.get("connect_timeout", 10)), float(query.get("read_timeout", 60)))
        # oss2 logs every delete and every error answer at INFO; this driver logs its retries
        # and raises what fails.
        logging.getLogger("oss2").setLevel(logging.WARNING)
        bucket = oss2.Bucket(
            _auth(settings),
            endpoint,
            parts.netloc,
            connect_timeout=timeout,  # requests takes (connect, read)
            session=oss2.Session(pool_size=64),
            app_name="oci-registry",
        )
        options.setdefault("retries", int(query.get("retries", 4)))
        options.setdefault("redirect", settings.oss_redirect)
        return cls(bucket, parts.path, **options)

    def _executors(self) -> None:
        # Short calls and long streamed PutObjects run on their own threads, not on the event
        # loop's default pool (which the services use for database work).
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, "oss")
        self._stream_pool = concurrent.futures.ThreadPoolExecutor(
            self._stream_threads, "oss-stream"
        )
        self._pid = os.getpid()

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) :]

    # --- calling the SDK --------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T], *, stream: bool = False) -> T:
        if os.getpid() != self._pid:  # forked (a Celery worker child): threads did not follow
            self._executors()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._stream_pool if stream else self._pool, fn)

    def _delay(self, attempt: int) -> float:
        return float(
            min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        )

    async def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """``fn`` (an idempotent SDK call) in a thread, retried with backoff while it fails in
        a way worth retrying; then errors become :class:`StorageError`."""
        attempt = 0
        while True:
            try:
                return await self._run(fn)
            except Exception as exc:
                if not _is_storage_failure(exc):
                    raise
                if not _transient(exc) or attempt >= self.retries:
                    raise _mapped(what, key, exc) from exc
                attempt += 1
                log.warning(
                    "oss %s key=%s failed (%s), retry %d/%d",
                    what,
                    key,
                    _describe(exc),
                    attempt,
                    self.retries,
                )
            await asyncio.sleep(self._delay(attempt))

    async def _layout(self, key: str) -> _Layout:
        """One listing of ``key``'s prefix: the object, its segments and what is under it."""
        full = self._full(key)
        folder = full.rstrip("/") + "/"
        layout = _Layout()
        async for item in self._listed(key, full):
            match = _SEGMENT.match(item.key)
            if item.key == full:
                layout.base = _Piece(item.key, 0, item.size, item.last_modified)
            elif match and match["base"] == full:
                start = int(match["start"])
                layout.segments[start] = _Piece(item.key, start, item.size, item.last_modified)
            elif item.key.startswith(folder):
                layout.children.append(item.key)
        return layout

    async def _listed(self, key: str, full: str, start_after: str = "") -> AsyncIterator[Any]:
        """Every object whose name starts with ``full`` (and sorts after ``start_after``), page
        after page."""
        token = ""
        while True:
            page = await self._call(
                "ListObjectsV2",
                key,
                partial(
                    self.bucket.list_objects_v2,
                    prefix=full,
                    continuation_token=token,
                    start_after="" if token else start_after,
                    max_keys=self.page_size,
                ),
            )
            for item in page.object_list:
                yield item
            if not page.is_truncated:
                return
            token = page.next_continuation_token

    async def _delete_keys(self, what: str, keys: list[str]) -> None:
        for index in range(0, len(keys), MAX_DELETE):
            batch = keys[index : index + MAX_DELETE]
            if len(batch) == 1:
                await self._call(what, batch[0], partial(self.bucket.delete_object, batch[0]))
            else:
                await self._call(what, batch[0], partial(self.bucket.batch_delete_objects, batch))

    async def _put_bytes(self, full: str, data: bytes) -> None:
        await self._call(
            "PutObject", full, partial(self.bucket.put_object, full, data, headers=OCTET_STREAM)
        )

    # --- the interface ----------------------------------------------------------------------

    async def size(self, key: str) -> int | None:
        return (await self._layout(key)).size

    async def append(self, key: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        full = self._full(key)
        layout = await self._layout(key)
        chain = layout.chain()
        end = sum(p.size for p in chain)
        if offset > end or (offset > 0 and layout.base is None):
            raise StorageError(
                f"cannot append to {key!r} at {offset}: the object has "
                f"{'no bytes' if layout.base is None else f'{end} bytes'}"
            )
        # Whatever lies at or past the offset (a failed append's leftovers, the chunk being
        # undone) goes first, and a piece across it is cut: the object is its first ``offset``
        # bytes before anything is written.
        on_chain = {p.key for p in chain}
        stale = [
            p.key for p in layout.segments.values() if p.start >= offset or p.key not in on_chain
        ]
        if stale:
            await self._delete_keys("DeleteObject", stale)
        for piece in chain:
            if piece.start < offset < piece.start + piece.size:
                await self._compose(
                    [_Range(piece.key, 0, offset - piece.start)], piece.key, "truncate"
                )
        written: list[str] = []
        try:
            count = await self._write(full, offset, chunks, written)
        except BaseException as exc:
            try:
                await self._undo(full, offset, written)
            except Exception as undo_error:  # the next append cuts what is left
                log.warning("oss append undo failed key=%s: %s", key, undo_error)
            if _is_storage_failure(exc):
                raise _mapped("PutObject", key, exc) from exc
            raise
        return offset + count

    async def truncate(self, key: str, size: int) -> None:
        if await self.size(key) is None:
            raise ObjectNotFound(f"truncate: no object {key!r}")
        await self.append(key, size, _nothing())

    async def _write(
        self, full: str, offset: int, chunks: AsyncIterable[bytes], written: list[str]
    ) -> int:
        feed = _Feed(asyncio.get_running_loop(), chunks)
        work = asyncio.ensure_future(
            self._run(partial(self._put_segments, full, offset, feed, written), stream=True)
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            feed.abort()  # the thread's body generator fails: the PutObject is abandoned
            raise
        except BaseException:
            if feed.error is not None:
                raise feed.error from None  # the client's body failed (say, a disconnect)
            raise

    def _put_segments(self, full: str, offset: int, feed: _Feed, written: list[str]) -> int:
        """In a worker thread: PutObject after PutObject, each streaming up to
        ``segment_size`` bytes from the feed."""
        position = offset
        while True:
            first = feed.next()
            if first is None:
                if position == 0:  # an empty object, as the filesystem creates an empty file
                    written.append(full)
                    self.bucket.put_object(full, b"", headers=OCTET_STREAM)
                return position - offset
            target = full if position == 0 else segment_key(full, position)
            written.append(target)
            sent = 0

            def body(first: bytes = first) -> Iterator[bytes]:
                nonlocal sent
                chunk: bytes | None = first
                while chunk is not None:
                    room = self.segment_size - sent
                    if len(chunk) > room:
                        feed.push_back(chunk[room:])
                        chunk = chunk[:room]
                    sent += len(chunk)
                    yield chunk
                    if sent >= self.segment_size:
                        return
                    chunk = feed.next()

            self.bucket.put_object(target, body(), headers=OCTET_STREAM)
            position += sent

    async def _undo(self, full: str, offset: int, written: list[str]) -> None:
        segments = [k for k in written if k != full]
        if segments:
            await self._delete_keys("DeleteObject", segments)
        if offset == 0 and full in written:
            await self._put_bytes(full, b"")

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        full = self._full(key)
        if end is not None and end < start:
            return
        position = start
        # The first object, optimistically: a blob is a single object, read with one GET.
        first_size: int | None = None
        opened = await self._open(key, full, position, end)
        if opened is not None:
            result, first_size, etag = opened
            last = first_size - 1 if end is None else min(end, first_size - 1)
            async for chunk in self._stream(key, full, position, last, result, etag):
                position += len(chunk)
                yield chunk
            if end is not None and end < first_size:
                return
        # The bytes go on past the first object (or start past it): its segments.
        layout = await self._layout(key)
        if layout.base is None and first_size is None:
            raise ObjectNotFound(f"no object {key!r}")
        for piece in layout.chain():
            piece_end = piece.start + piece.size - 1
            if piece_end < position or piece.size == 0:
                continue
            if end is not None and piece.start > end:
                break
            last = piece.size - 1 if end is None else min(end, piece_end) - piece.start
            async for chunk in self._stream(key, piece.key, position - piece.start, last):
                position += len(chunk)
                yield chunk

    async def _open(
        self, key: str, full: str, first: int, last: int | None, etag: str | None = None
    ) -> tuple[Any, int, str] | None:
        """A ranged GET: (the response, the object's size, its ETag), or None when the object
        ends before ``first``."""
        headers = dict(STANDARD_RANGE)
        if etag is not None:
            headers["If-Match"] = f'"{etag}"'
        try:
            result = await self._call(
                "GetObject",
                key,
                partial(self.bucket.get_object, full, byte_range=(first, last), headers=headers),
            )
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, oss2.exceptions.ServerError) and cause.status == 416:
                return None
            raise
        content_range = result.headers.get("Content-Range")
        size = (
            parse_decimal(content_range.rsplit("/", 1)[1])
            if content_range
            else result.content_length
        )
        return result, size, result.etag

    async def _stream(
        self,
        key: str,
        full: str,
        first: int,
        last: int,
        result: Any = None,
        etag: str | None = None,
    ) -> AsyncIterator[bytes]:
        """Bytes ``first``..``last`` of one stored object; a broken download resumes where it
        stopped, from the same version of the object."""
        position = first
        failures = 0
        try:
            while position <= last:
                if result is None:
                    opened = await self._open(key, full, position, last, etag)
                    if opened is None:
                        raise StorageError(f"OSS object {key!r} ended before byte {position}")
                    result, _, etag = opened
                try:
                    chunk = await self._run(
                        partial(result.resp.read, min(READ_CHUNK, last - position + 1))
                    )
                    if not chunk:
                        raise ConnectionError("the download ended early")
                except Exception as exc:
                    if not _is_storage_failure(exc):
                        raise
                    with contextlib.suppress(Exception):
                        result.close()
                    result = None
                    failures += 1
                    if not _transient(exc) or failures > self.retries:
                        raise _mapped("GetObject", key, exc) from exc
                    log.warning(
                        "oss GetObject key=%s broke at %d (%s), resuming",
                        key,
                        position,
                        _describe(exc),
                    )
                    await asyncio.sleep(self._delay(failures))
                    continue
                position += len(chunk)
                yield chunk
            if result is not None:
                # Read the end of the body, which hands the connection back to the pool
                # (closing the response would close the connection).
                with contextlib.suppress(Exception):
                    await self._run(partial(result.resp.read, 1))
                result = None
        finally:
            if result is not None:
                with contextlib.suppress(Exception):
                    result.close()

    async def move(self, source: str, destination: str) -> None:
        layout = await self._layout(source)
        chain = layout.chain()
        if not chain:
            raise ObjectNotFound(f"OSS move: no object {source!r}")
        target = await self._layout(destination)
        if target.segments:  # never for a blob's key, which only moves write
            await self._delete_keys("DeleteObject", [p.key for p in target.segments.values()])
        ranges = [
            _Range(p.key, 0, p.size, whole=True) for p in chain if p.size > 0 or len(chain) == 1
        ]
        await self._compose(ranges, self._full(destination), "move")
        await self._delete_layout(source, layout)

    async def delete(self, key: str) -> None:
        if not key.strip("/"):
            raise ValueError("refusing to delete the whole storage")
        await self._delete_layout(key, await self._layout(key))

    async def _delete_layout(self, key: str, layout: _Layout) -> None:
        # Segments and what is under the key first, the key's own object last: until it is
        # gone, the object is listed, so an interrupted delete is finished by the next one.
        others = [p.key for p in layout.segments.values()] + layout.children
        if others:
            await self._delete_keys("DeleteMultipleObjects", others)
        if layout.base is not None:
            await self._call(
                "DeleteObject", key, partial(self.bucket.delete_object, layout.base.key)
            )

    async def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        full = self._full(prefix)
        after = self._full(start_after) if start_after else ""
        collapser = _Collapser()
        # The segments of the key listing stopped at sort after it: collapsed into that key
        # again, which is left out, as every key up to it.
        async for item in self._listed(prefix, full, after):
            for key, layout in collapser.add(item.key, item.size, item.last_modified):
                if key > after:
                    yield self._info(key, layout)
        for key, layout in collapser.finish():
            if key > after:
                yield self._info(key, layout)

    def _info(self, full: str, layout: _Layout) -> ObjectInfo:
        # Segments left without their key's object (an interrupted delete) are listed as that
        # key, so that reconcile finds and deletes them.
        size = layout.size
        if size is None:
            size = sum(p.size for p in layout.segments.values())
        modified = dt.datetime.fromtimestamp(layout.modified(), dt.UTC).replace(tzinfo=None)
        return ObjectInfo(self._relative(full), size, modified)

    def open_file(self, key: str) -> BinaryIO:
        raise StorageError("OSS objects are not files on this machine")

    async def redirect_url(self, key: str, expires: int = 600) -> str | None:
        """A signed URL that GETs the object straight from OSS for ``expires`` seconds, when
        redirects are on (``REGISTRY_OSS_REDIRECT``) and the object is stored whole (a blob
        after the janitor moved it); else None, and the bytes are served through the
        registry."""
        if not self.redirect:
            return None
        chain = (await self._layout(key)).chain()
        if len(chain) != 1:
            return None
        url: str = self.bucket.sign_url("GET", chain[0].key, expires, slash_safe=True)
        return url

    # --- composing objects server-side ----------------------------------------------------

    def _plan(self, ranges: Sequence[_Range]) -> Sequence[_Part]:
        """Multipart parts for ``ranges``: large ones copied server-side (split into parts of
        at most ``copy_part_size``), runs of small ones read and uploaded together. Every part
        but the last is at least ``min_part_size``: a run of small ranges before a large one is
        topped up with the large one's first bytes."""
        parts: builtins.list[_Part] = []
        group: builtins.list[_Range] = []
        grouped = 0

        def flush() -> None:
            nonlocal grouped
            parts.append(_Part(False, tuple(group)))
            group.clear()
            grouped = 0

        for r in ranges:
            if r.length == 0:
                continue
            if r.length < self.small_piece:
                group.append(r)
                grouped += r.length
                if grouped >= self.upload_part_size:
                    flush()
                continue
            head = 0
            if group:
                if grouped < self.min_part_size:
                    head = self.min_part_size - grouped
                    group.append(_Range(r.key, r.first, head))
                    grouped += head
                flush()
            remaining = r.length - head
            count = -(-remaining // self.copy_part_size)
            size, extra = divmod(remaining, count)
            position = r.first + head
            for index in range(count):
                length = size + (1 if index < extra else 0)
                parts.append(_Part(True, (_Range(r.key, position, length),)))
                position += length
        if group:
            flush()
        return parts

    async def _compose(self, ranges: Sequence[_Range], target: str, what: str) -> None:
        """Write the concatenation of ``ranges`` as the object ``target`` (replacing it
        atomically), server-side as far as OSS allows."""
        total = sum(r.length for r in ranges)
        if total == 0:
            await self._put_bytes(target, b"")
            return
        if len(ranges) == 1 and ranges[0].whole and total <= self.copy_limit:
            source = ranges[0].key
            await self._call(
                "CopyObject",
                source,
                partial(self.bucket.copy_object, self.bucket.bucket_name, source, target),
            )
            return
        parts = self._plan(ranges)
        init = await self._call(
            "InitiateMultipartUpload",
            target,
            partial(self.bucket.init_multipart_upload, target, headers=OCTET_STREAM),
        )
        upload_id: str = init.upload_id
        try:
            infos = []
            for number, part in enumerate(parts, start=1):
                if part.copy:
                    r = part.ranges[0]
                    result = await self._call(
                        "UploadPartCopy",
                        r.key,
                        partial(
                            self.bucket.upload_part_copy,
                            self.bucket.bucket_name,
                            r.key,
                            (r.first, r.first + r.length - 1),
                            target,
                            upload_id,
                            number,
                        ),
                    )
                else:
                    result = await self._call(
                        "UploadPart",
                        target,
                        partial(self._upload_ranges, target, upload_id, number, part.ranges),
                    )
                infos.append(
                    oss2.models.PartInfo(number, result.etag, size=part.size, part_crc=result.crc)
                )
            await self._complete(target, upload_id, infos, total)
        except BaseException:
            try:
                await self._run(partial(self.bucket.abort_multipart_upload, target, upload_id))
            except Exception as exc:
                log.warning(
                    "oss %s: abort of upload %s failed: %s", what, upload_id, _describe(exc)
                )
            raise

    def _upload_ranges(
        self, target: str, upload_id: str, number: int, ranges: tuple[_Range, ...]
    ) -> Any:
        """In a worker thread: one UploadPart whose body streams from ranged GETs."""

        def body() -> Iterator[bytes]:
            for r in ranges:
                result = self.bucket.get_object(
                    r.key, byte_range=(r.first, r.first + r.length - 1), headers=STANDARD_RANGE
                )
                try:
                    remaining = r.length
                    while remaining > 0:
                        chunk = result.resp.read(min(READ_CHUNK, remaining))
                        if not chunk:
                            raise ConnectionError(f"the download of {r.key} ended early")
                        remaining -= len(chunk)
                        yield chunk
                finally:
                    result.close()

        return self.bucket.upload_part(target, upload_id, number, body())

    async def _complete(
        self, target: str, upload_id: str, parts: Sequence[Any], total: int
    ) -> None:
        attempt = 0
        while True:
            try:
                await self._run(
                    partial(self.bucket.complete_multipart_upload, target, upload_id, parts)
                )
                return
            except Exception as exc:
                if not _is_storage_failure(exc):
                    raise
                if attempt > 0 and isinstance(exc, oss2.exceptions.NoSuchUpload):
                    # An earlier attempt completed it, and only its answer was lost.
                    size = (await self._layout(self._relative(target))).size
                    if size == total:
                        return
                if (
                    not _transient(exc)
                    or isinstance(exc, oss2.exceptions.InconsistentError)
                    or attempt >= self.retries
                ):
                    raise _mapped("CompleteMultipartUpload", target, exc) from exc
                attempt += 1
                log.warning(
                    "oss CompleteMultipartUpload key=%s failed (%s), retry %d",
                    target,
                    _describe(exc),
                    attempt,
                )
            await asyncio.sleep(self._delay(attempt))
