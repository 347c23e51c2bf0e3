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
from typing import Protocol
from urllib.parse import urlsplit

from shared.settings import Settings, get_settings


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified: dt.datetime  # UTC, naive like the database's timestamps


class StorageError(Exception):
    """The storage backend failed; the request may be retried."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """There is no such object (a ``FileNotFoundError`` too, as the filesystem driver raises)."""


class StorageDriver(Protocol):
    async def append(self, key: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """Write ``chunks`` into ``key`` from ``offset`` on (creating it when ``offset`` is 0).

        Returns the object's new size. If the chunks fail midway, whatever was written past
        ``offset`` is undone, so the object is as it was before the call.
        """
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

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder, ending with ``/``)."""
        ...

    async def redirect_url(self, key: str, expires: int = 600) -> str | None:
        """A time-limited URL a client may GET the object from directly, when the driver can
        give one and is configured to; else None."""
        ...

    def local_path(self, key: str) -> str | None:
        """A filesystem path to the object, when the driver has one (lets a server send it
        with ``sendfile``)."""
        ...


async def read_blob(
    storage: StorageDriver, storage_key: str, digest: str, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of blob ``digest``, which the database says are at ``storage_key``. The
    janitor may move them to the blob's own key at any moment, before or during the read:
    what is not found at the upload's key is read from there, from where the read stopped
    (the bytes are the same: the key is named by their digest)."""
    from shared.reference import parse_digest
    from shared.storage.keys import blob_key

    final_key = blob_key(parse_digest(digest))
    key = storage_key
    if key != final_key and await storage.size(key) is None:
        key = final_key
    position = start
    while True:
        try:
            async for chunk in storage.read(key, position, end):
                position += len(chunk)
                yield chunk
            return
        except FileNotFoundError:
            if key == final_key:
                raise
            key = final_key  # moved meanwhile


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
