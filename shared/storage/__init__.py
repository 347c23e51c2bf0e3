"""Object storage behind one small interface, chosen by the ``REGISTRY_STORAGE_URL`` setting.

``file:///var/lib/registry`` selects the local filesystem driver,
``oss://<bucket>/<prefix>?endpoint=<url>`` the Aliyun OSS driver (``shared.storage.oss``). An
unknown scheme is an error, never a silent fallback.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from shared.settings import Settings, get_settings


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime  # UTC, naive like the database's timestamps


class StorageError(Exception):
    """The storage backend failed (after the driver's own retries); the request may be sent
    again. Every driver raises this, or :class:`ObjectNotFound`, and nothing else for a
    failure of the backend: callers catch one tree whatever the driver."""


class ObjectNotFound(StorageError):
    """There is no object at the key (read, moved or truncated)."""


class StorageDriver(Protocol):
    """What a driver implements; ``tests/test_storage_drivers.py`` holds every driver to it.

    An upload's object is written with :meth:`append` (and cut back with :meth:`truncate`),
    becomes a blob by :meth:`move` to the blob's own key, and is read with :meth:`read`.
    """

    #: Whether the objects are files on this machine, which a process sharing the filesystem
    #: reads without a network hop (the gateway sends blob bytes itself then).
    local: bool

    async def append(self, key: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """Write ``chunks`` into ``key`` from ``offset`` on (creating it when ``offset`` is 0).

        Returns the object's new size. If the chunks fail midway, whatever was written past
        ``offset`` is undone, so the object is as it was before the call.
        """
        ...

    async def truncate(self, key: str, size: int) -> None:
        """Cut the object back to its first ``size`` bytes (an append undone)."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the bytes of ``key`` from ``start`` up to and including ``end``."""
        ...

    async def size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        ...

    async def move(self, source: str, destination: str) -> None:
        """Move an object; if ``destination`` exists it is replaced atomically."""
        ...

    async def delete(self, key: str) -> None:
        """Delete an object and what is under it; deleting what does not exist is no error."""
        ...

    def list(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder, ending with ``/``) and
        sorts after ``start_after``, in the order of their keys (as strings), a page at a time:
        a walk stopped at a key goes on from it."""
        ...

    def open_file(self, key: str) -> BinaryIO:
        """The object's file, open for reading: for drivers whose objects are files on this
        machine (``local``); the others raise ``StorageError``."""
        ...

    async def redirect_url(self, key: str, expires: int = 600) -> str | None:
        """A time-limited URL a client may GET the object from directly, when the driver can
        give one and is configured to; else None."""
        ...


@lru_cache
def get_storage() -> StorageDriver:
    return open_storage(get_settings().storage_url)


def open_storage(url: str, settings: Settings | None = None) -> StorageDriver:
    parts = urlsplit(url)
    if parts.scheme == "file":
        from shared.storage.filesystem import FilesystemDriver

        return FilesystemDriver(parts.netloc + parts.path)
    if parts.scheme == "oss":
        from shared.storage.oss import OssDriver

        return OssDriver.from_url(url, settings or get_settings())
    raise ValueError(f"unknown storage scheme {parts.scheme!r} in {url!r} (known: file, oss)")
