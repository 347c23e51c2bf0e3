"""The local filesystem driver: one file per object under a root folder.

The operating system's errors leave as the storage interface's: a missing file as
``ObjectNotFound``, any other (a full disk, an I/O error, a permission) as ``StorageError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import errno
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import anyio

from shared.storage import ObjectInfo, ObjectNotFound, StorageError

READ_CHUNK = 1024 * 1024
LIST_PAGE = 1000  # objects a listing reads at a time, in a worker thread
# Reads from the page cache run on the event loop: after this many chunks in a row (8 MiB,
# a few milliseconds) other requests get a turn, whatever the reader does with the bytes.
YIELD_EVERY = 8
# Whether preadv(RWF_NOWAIT) works here (Linux 4.14 and later, on most local filesystems).
_nowait = hasattr(os, "RWF_NOWAIT")
_probe = bytearray(1)  # scratch: what the probes read is never looked at


def in_page_cache(fd: int, first: int, last: int) -> bool:
    """Whether the page cache holds the bytes ``first`` and ``last`` of the file, so that a read
    of the range between them will not wait for the disk (the kernel caches a file written or
    read in order as a whole, and reads ahead). Asked with RWF_NOWAIT, which fails at once
    rather than wait."""
    global _nowait
    if not _nowait:
        return False
    try:
        return all(os.preadv(fd, [_probe], offset, os.RWF_NOWAIT) for offset in (first, last))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        _nowait = False  # not on this filesystem: always read in a thread
        return False


@contextlib.contextmanager
def _mapped(what: str, key: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"{what}: no object {key!r}") from exc
    except OSError as exc:
        raise StorageError(f"{what} {key!r}: {exc.strerror or exc}") from exc


def page_cache_visible() -> bool:
    """Whether this machine can tell what the page cache holds (else every read is made in a
    worker thread)."""
    return _nowait


# Small chunks (a client's upload, as the server reads it off the socket) are written from the
# event loop: a write to the page cache takes microseconds, less than a thread hop. Larger
# ones (a mirror's fetch, read from its upstream in chunks of 1 MiB) are written by a worker
# thread while the event loop reads the next: writing a MiB can take milliseconds when the
# page cache grows into memory the machine has not touched yet (2.5 ms a MiB measured in a
# virtual machine), which made the write the pace of a whole pull through.
THREAD_WRITE = 512 * 1024
_writer = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="storage-append")


def _write(fd: int, chunk: bytes, position: int, key: str) -> None:
    view = memoryview(chunk)
    with _mapped("append", key):
        while view:
            written = os.pwrite(fd, view, position)
            view = view[written:]
            position += written


class FilesystemDriver:
    local = True

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} is outside the storage root")
        return path

    async def redirect_url(self, key: str, expires: int = 600) -> str | None:
        return None  # served by the registry (the gateway sends the file itself)

    def path(self, key: str) -> Path:
        """Where the object of ``key`` is (or would be)."""
        return self._path(key)

    def open_file(self, key: str) -> BinaryIO:
        with _mapped("open", key):
            return open(self._path(key), "rb", buffering=0)

    async def append(self, key: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        with _mapped("append", key):
            if offset == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            position = offset
            writing: concurrent.futures.Future[None] | None = None  # a chunk's, in a thread
            try:
                async for chunk in chunks:
                    if writing is not None:
                        await asyncio.wrap_future(writing)
                        writing = None
                    if len(chunk) < THREAD_WRITE:
                        _write(fd, chunk, position, key)
                    else:
                        writing = _writer.submit(_write, fd, chunk, position, key)
                    position += len(chunk)
                if writing is not None:
                    await asyncio.wrap_future(writing)
            except BaseException:
                if writing is not None:
                    concurrent.futures.wait([writing])  # the fd stays open until it is done
                os.ftruncate(fd, offset)
                raise
            with _mapped("append", key):
                os.ftruncate(fd, position)
            return position
        finally:
            os.close(fd)

    async def truncate(self, key: str, size: int) -> None:
        with _mapped("truncate", key):
            os.truncate(self._path(key), size)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        # Bytes in the page cache (a blob pushed or pulled lately) are read right here; only
        # reads that would wait for the disk go to a worker thread. A thread hop per chunk
        # cost a third of pull throughput.
        with _mapped("read", key):
            fd = os.open(self._path(key), os.O_RDONLY)
        try:
            with _mapped("read", key):
                size = os.fstat(fd).st_size
            last = size - 1 if end is None else min(end, size - 1)
            position = start
            inline = 0
            while position <= last:
                want = min(READ_CHUNK, last - position + 1)
                with _mapped("read", key):
                    if in_page_cache(fd, position, position + want - 1):
                        chunk = os.pread(fd, want, position)
                        inline += 1
                        if inline % YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # let other requests run now and then
                    else:
                        chunk = await anyio.to_thread.run_sync(os.pread, fd, want, position)
                if not chunk:
                    break  # the file is shorter than it was
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        top = self._path(prefix) if prefix.strip("/") else self.root
        walk = self._walk(top, start_after)
        while page := await anyio.to_thread.run_sync(lambda: list(islice(walk, LIST_PAGE))):
            for info in page:
                yield info

    def _walk(self, folder: Path, start_after: str) -> Iterator[ObjectInfo]:
        """The files under ``folder``, their keys in string order (a folder's entries sorted
        with a ``/`` after each folder's name: its keys all start so), after ``start_after``:
        subtrees that end before it are not read."""
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        named = sorted(
            (
                str(Path(entry.path).relative_to(self.root)) + ("/" if entry.is_dir() else ""),
                entry,
            )
            for entry in entries
        )
        for key, entry in named:
            if key.endswith("/"):
                if key < start_after and not start_after.startswith(key):
                    continue  # every key under it sorts before start_after
                yield from self._walk(Path(entry.path), start_after)
            elif key > start_after:
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).replace(tzinfo=None)
                yield ObjectInfo(key, stat.st_size, modified)

    async def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"size {key!r}: {exc.strerror or exc}") from exc

    async def move(self, source: str, destination: str) -> None:
        dst = self._path(destination)
        src = self._path(source)
        with _mapped("move", source):
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        with contextlib.suppress(OSError):
            src.parent.rmdir()  # the upload folder, now empty

    async def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"delete {key!r}: {exc.strerror or exc}") from exc
        # Remove the object's folder when it is left empty (upload folders, blob folders).
        with contextlib.suppress(OSError):
            path.parent.rmdir()
