"""The local filesystem driver: one file per object under a root folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import anyio

from shared.storage import ObjectInfo

READ_CHUNK = 1024 * 1024


class FilesystemDriver:
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

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    async def append(self, key: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        if offset == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Local writes land in the page cache and take microseconds: writing from the event
        # loop costs less than a thread hop per chunk.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            position = offset
            try:
                async for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    position += len(chunk)
            except BaseException:
                os.ftruncate(fd, offset)
                raise
            os.ftruncate(fd, position)
            return position
        finally:
            os.close(fd)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await anyio.to_thread.run_sync(f.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        top = self._path(prefix) if prefix.strip("/") else self.root

        def walk() -> list[ObjectInfo]:
            found = []
            for folder, _, files in os.walk(top):
                for name in files:
                    path = Path(folder, name)
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue  # deleted while listing
                    modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).replace(tzinfo=None)
                    found.append(
                        ObjectInfo(str(path.relative_to(self.root)), stat.st_size, modified)
                    )
            return found

        for info in await anyio.to_thread.run_sync(walk):
            yield info

    async def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def move(self, source: str, destination: str) -> None:
        dst = self._path(destination)
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = self._path(source)
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
        # Remove the object's folder when it is left empty (upload folders, blob folders).
        with contextlib.suppress(OSError):
            path.parent.rmdir()
