"""Blob uploads (OCI Distribution Spec, "Pushing blobs"): sessions, chunks, completion, mounts.

An upload's bytes go to a temporary object (``uploads/<uuid>/data``) while its digest is
computed from the stream. Completing it verifies the digest and only then records the blob
(where its bytes are: still the upload's object) and links it to the repository, in one short
transaction: nothing is visible before it is verified. The ``blob:upload:committed`` event then
has the janitor move the object to its content-addressed key; reads follow the database
meanwhile. When two clients push the same blob at once, the first to commit wins and the
janitor discards the other's object.

The running hash of an upload is kept in this process (keyed by upload uuid and offset), so
completing an upload whose chunks all came through this process does not read the blob back.
When the state is missing (chunks through another replica, a restart), the blob is re-read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.events import Event, Target, publish_later
from shared.models import (
    BLOB_DELETING,
    BLOB_PRESENT,
    Blob,
    Repository,
    RepositoryBlob,
    Upload,
    utcnow,
)
from shared.reference import Digest
from shared.repositories import ensure_repository, link_blob
from shared.reviews import review_blobs
from shared.storage import StorageDriver, keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploadState:
    uuid: str
    repository: str
    size: int
    storage_key: str


@dataclass(frozen=True, slots=True)
class CommittedBlob:
    digest: str
    size: int
    event: Event


class _HashCache:
    """Running sha256 hashers of uploads in progress in this process, bounded in number."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self._capacity = capacity

    def take(self, upload_uuid: str, offset: int) -> hashlib._Hash | None:
        """The hasher that has seen exactly the first ``offset`` bytes, or None."""
        item = self._items.pop(upload_uuid, None)
        if offset == 0:
            return hashlib.sha256()
        if item is None or item[0] != offset:
            return None
        return item[1]

    def put(self, upload_uuid: str, offset: int, hasher: hashlib._Hash) -> None:
        self._items[upload_uuid] = (offset, hasher)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)

    def drop(self, upload_uuid: str) -> None:
        self._items.pop(upload_uuid, None)


class _UploadLocks:
    """Chunks of one upload are applied one at a time in this process: a lock per upload,
    kept only while a request holds it or waits for it (an abandoned upload leaves none)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, upload_uuid: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(upload_uuid, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[upload_uuid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[upload_uuid]
            if users == 1:
                del self._locks[upload_uuid]
            else:
                self._locks[upload_uuid] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


_hashers = _HashCache()
_locks = _UploadLocks()


async def _hashing(
    chunks: AsyncIterable[bytes], hasher: hashlib._Hash | None
) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk:
            if hasher is not None:
                hasher.update(chunk)
            yield chunk


def _upload_unknown(upload_uuid: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_uuid[:100]!r} unknown")


# --- sessions ------------------------------------------------------------------------------


def start(repository: str) -> UploadState:
    upload_uuid = str(uuid.uuid4())
    key = keys.upload_key(upload_uuid)
    with db.transaction() as session:
        session.add(Upload(uuid=upload_uuid, repository=repository, storage_key=key, size=0))
    return UploadState(upload_uuid, repository, 0, key)


def find(repository: str, upload_uuid: str) -> UploadState:
    with db.reading() as session:
        row = session.get(Upload, upload_uuid)
        if row is None or row.repository != repository:
            raise _upload_unknown(upload_uuid)
        return UploadState(row.uuid, row.repository, row.size, row.storage_key)


def _record_size(state: UploadState, new_size: int) -> UploadState:
    with db.transaction() as session:
        result = session.execute(
            update(Upload)
            .where(Upload.uuid == state.uuid, Upload.size == state.size)
            .values(size=new_size, updated_at=utcnow())
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                "the upload changed or ended while this chunk was written",
            )
    return UploadState(state.uuid, state.repository, new_size, state.storage_key)


async def append(
    storage: StorageDriver,
    state: UploadState,
    chunks: AsyncIterable[bytes],
    content_range: tuple[int, int] | None,
) -> UploadState:
    """Append one chunk (a PATCH). With ``content_range`` the chunk must start where the
    upload ends (else 416) and be exactly as long as the range says (else 416, nothing kept)."""
    async with _locks.hold(state.uuid):
        state = await asyncio.to_thread(find, state.repository, state.uuid)
        if content_range is not None and content_range[0] != state.size:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                f"chunk starts at {content_range[0]} but the upload has {state.size} bytes",
                status=416,
                headers=upload_headers(state),
            )
        hasher = _hashers.take(state.uuid, state.size)
        new_size = await storage.append(state.storage_key, state.size, _hashing(chunks, hasher))
        if (
            content_range is not None
            and new_size - state.size != content_range[1] - content_range[0] + 1
        ):
            await storage.append(state.storage_key, state.size, _empty())  # undo the chunk
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                f"Content-Range {content_range[0]}-{content_range[1]} does not match the "
                f"{new_size - state.size} bytes sent",
                status=416,
                headers=upload_headers(state),
            )
        try:
            state = await asyncio.to_thread(_record_size, state, new_size)
        except BaseException:
            await storage.append(state.storage_key, state.size, _empty())
            raise
        if hasher is not None:
            _hashers.put(state.uuid, new_size, hasher)
        return state


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _digest_of(storage: StorageDriver, state: UploadState, algorithm: str) -> str:
    hasher = _hashers.take(state.uuid, state.size) if algorithm == "sha256" else None
    if hasher is None:
        # The running hash is not in this process: read the upload back.
        hasher = hashlib.new(algorithm)
        async for chunk in storage.read(state.storage_key):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


async def complete(
    storage: StorageDriver,
    state: UploadState,
    digest: Digest,
    final_chunk: AsyncIterable[bytes] | None,
    request_id: str | None = None,
) -> CommittedBlob:
    """Finish an upload (the closing PUT): append the final chunk, verify the digest, make the
    blob visible in the repository. A digest that does not match ends the upload."""
    async with _locks.hold(state.uuid):
        state = await asyncio.to_thread(find, state.repository, state.uuid)
        if final_chunk is not None:
            hasher = _hashers.take(state.uuid, state.size)
            new_size = await storage.append(
                state.storage_key, state.size, _hashing(final_chunk, hasher)
            )
            if new_size != state.size:
                state = await asyncio.to_thread(_record_size, state, new_size)
            if hasher is not None:
                _hashers.put(state.uuid, new_size, hasher)
        actual = await _digest_of(storage, state, digest.algorithm)
        if actual != str(digest):
            event = await cancel(storage, state, request_id)
            publish_later(event)
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"digest {digest} given, but the content has digest {actual}",
            )
        return await _commit(storage, state, digest, request_id)


async def _commit(
    storage: StorageDriver, state: UploadState, digest: Digest, request_id: str | None
) -> CommittedBlob:
    await asyncio.to_thread(db.retrying, lambda: _record_blob(state, digest))
    _hashers.drop(state.uuid)
    event = Event(
        action="blob:upload:committed",
        target=Target(
            repository=state.repository,
            digest=str(digest),
            size=state.size,
            upload_uuid=state.uuid,
            storage_key=state.storage_key,
        ),
        request_id=request_id,
        source="blob-service",
    )
    return CommittedBlob(str(digest), state.size, event)


def _record_blob(state: UploadState, digest: Digest) -> None:
    with db.transaction() as session:
        # Insert first: on MySQL a locking read of a missing row takes a gap lock, and two
        # uploads doing that before inserting deadlock each other.
        blob = None
        try:
            with session.begin_nested():
                session.add(
                    Blob(digest=str(digest), size=state.size, storage_key=state.storage_key)
                )
        except IntegrityError:
            # Known already. Locked, so that garbage collection (which locks the same row)
            # cannot delete it between this check and the link below.
            blob = session.get(Blob, str(digest), with_for_update=True, populate_existing=True)
        if blob is not None and blob.state == BLOB_DELETING:
            # Garbage collection is removing this content: these bytes bring it back.
            blob.state = BLOB_PRESENT
            blob.storage_key = state.storage_key
            blob.size = state.size
        repository = ensure_repository(session, state.repository)
        link_blob(session, repository, str(digest))
        session.execute(delete(Upload).where(Upload.uuid == state.uuid))
        # Pushed blobs that no manifest will use are collected once the grace period is over.
        review_blobs(session, [str(digest)], "uploaded")


async def cancel(
    storage: StorageDriver, state: UploadState, request_id: str | None = None
) -> Event:
    """End an upload. The row goes now; the ``blob:upload:cancelled`` event has the janitor
    delete the data."""

    def drop_row() -> None:
        with db.transaction() as session:
            session.execute(delete(Upload).where(Upload.uuid == state.uuid))

    await asyncio.to_thread(drop_row)
    _hashers.drop(state.uuid)
    return Event(
        action="blob:upload:cancelled",
        target=Target(
            repository=state.repository, upload_uuid=state.uuid, storage_key=state.storage_key
        ),
        request_id=request_id,
        source="blob-service",
    )


async def monolithic(
    storage: StorageDriver,
    repository: str,
    digest: Digest,
    body: AsyncIterable[bytes],
    request_id: str | None = None,
) -> CommittedBlob:
    """A whole blob in one request (POST with ``?digest=``)."""
    state = await asyncio.to_thread(start, repository)
    return await complete(storage, state, digest, body, request_id)


# --- mounts --------------------------------------------------------------------------------


def mount(repository: str, digest: Digest, source: str | None) -> CommittedBlob | None:
    return db.retrying(lambda: _mount_once(repository, digest, source))


def _mount_once(repository: str, digest: Digest, source: str | None) -> CommittedBlob | None:
    """Link an existing blob into ``repository`` (cross-repository mount). With no ``source``
    the blob is mounted from whichever repository holds it. None when it cannot be mounted."""
    with db.transaction() as session:
        query = select(Blob).where(Blob.digest == str(digest), Blob.state == BLOB_PRESENT)
        if source is not None:
            query = query.join(RepositoryBlob).join(Repository).where(Repository.name == source)
        else:
            query = query.join(RepositoryBlob)
        # Locked against garbage collection until the link below is committed.
        blob = session.scalars(query.limit(1).with_for_update()).first()
        if blob is None:
            return None
        target = ensure_repository(session, repository)
        link_blob(session, target, blob.digest)
        # A mounted blob is about to be used by a manifest: push its review past the grace period.
        review_blobs(session, [blob.digest], "mounted")
        event = Event(
            action="blob:mounted",
            target=Target(repository=repository, digest=blob.digest, size=blob.size),
            source="blob-service",
        )
        return CommittedBlob(blob.digest, blob.size, event)


def upload_headers(state: UploadState) -> dict[str, str]:
    """``Location``, ``Range`` and ``Docker-Upload-UUID`` of an upload in progress."""
    last = state.size - 1 if state.size > 0 else 0
    return {
        "Location": f"/v2/{state.repository}/blobs/uploads/{state.uuid}",
        "Range": f"0-{last}",
        "Docker-Upload-UUID": state.uuid,
    }
