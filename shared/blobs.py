"""Reading a blob's bytes: the one function every path that sends a blob uses (the blob
service, and the gateway when it reads the storage itself).

A blob is read from the key its row names. The janitor may move an upload's object to the
blob's own key at any moment, before or during the read: what is not found at the upload's
key, or ends there before the bytes the database records (an object in pieces whose later
pieces the move deleted), is read from there, from where the read stopped (the bytes are the
same, the key is named by their digest).

Failures are answered the one way a client can act on: before the first byte, the read fails
with :class:`~shared.storage.StorageError` (answered 503 ``UNAVAILABLE`` with
``Retry-After``); after it, with :class:`TransferAborted`, which ends the connection, so that
the client sees a broken transfer and never a complete-looking one. Bytes fewer than the
database records are such a failure too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import BinaryIO

from shared.reference import parse_digest
from shared.storage import ObjectNotFound, StorageDriver, StorageError
from shared.storage.keys import blob_key


class TransferAborted(Exception):
    """A blob's bytes failed after the answer started: the connection is closed."""


async def open_blob(
    storage: StorageDriver, storage_key: str, digest: str, start: int, end: int
) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (inclusive) of blob ``digest``, stored at ``storage_key``
    or moved to its own key. The first chunk is read before this returns."""
    chunks = _read(storage, storage_key, digest, start, end)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise StorageError(f"blob {digest} has no bytes at {start}") from None
    except BaseException:
        await chunks.aclose()
        raise
    return _after_first(first, chunks, digest)


def open_blob_file(storage: StorageDriver, storage_key: str, digest: str, end: int) -> BinaryIO:
    """The file of blob ``digest`` (stored at ``storage_key`` or moved to its own key), open
    for reading and holding at least ``end + 1`` bytes, for a local driver (``storage.local``).
    An open file stays readable whatever the janitor does with its key afterwards."""
    try:
        file = storage.open_file(storage_key)
    except ObjectNotFound:
        moved = _moved_to(storage_key, digest)
        if moved is None:
            raise
        file = storage.open_file(moved)
    try:
        size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        file.close()
        raise StorageError(f"blob {digest}: {exc}") from exc
    if size <= end:
        file.close()
        raise _shorter(digest, size, end)
    return file


def _moved_to(key: str, digest: str) -> str | None:
    """Where the janitor moves the object at ``key`` (the blob's own key), or None when it
    is there already: where a read that found nothing at ``key`` looks next."""
    final_key = blob_key(parse_digest(digest))
    return None if key == final_key else final_key


def _shorter(digest: str, size: int, end: int) -> StorageError:
    return StorageError(f"blob {digest} ends at {size} bytes, {end + 1} recorded")


async def _after_first(
    first: bytes, rest: AsyncIterator[bytes], digest: str
) -> AsyncIterator[bytes]:
    yield first
    try:
        async for chunk in rest:
            yield chunk
    except StorageError as exc:
        raise TransferAborted(f"blob {digest}: {exc}") from exc


async def _read(
    storage: StorageDriver, storage_key: str, digest: str, start: int, end: int
) -> AsyncGenerator[bytes]:
    key = storage_key
    position = start
    while position <= end:
        try:
            async for chunk in storage.read(key, position, end):
                position += len(chunk)
                yield chunk
        except ObjectNotFound:
            moved = _moved_to(key, digest)
            if moved is None:
                raise
            key = moved
            continue
        if position <= end:
            # Ended early: an object in pieces (OSS segments) loses them to the janitor's move
            # while it is read. The rest is at the blob's own key.
            moved = _moved_to(key, digest)
            if moved is None:
                raise _shorter(digest, position, end)
            key = moved
