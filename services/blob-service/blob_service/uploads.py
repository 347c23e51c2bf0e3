"""Blob uploads (OCI Distribution Spec, "Pushing blobs"): sessions, chunks, completion, mounts.

An upload's bytes go to a temporary object (``uploads/<uuid>/data``) while its digest is
computed from the stream. Completing it verifies the digest and only then records the blob
(where its bytes are: still the upload's object) and links it to the repository, in one short
transaction: nothing is visible before it is verified. The ``blob:upload:committed`` event then
has the janitor move the object to its content-addressed key; reads follow the database
meanwhile. When two clients push the same blob at once, the first to commit wins and the
janitor discards the other's object.

**One writer at a time, on any replica.** A request that writes to an upload (a PATCH, the
closing PUT) first takes the upload's *writer lease* in the database: a short transaction sets
``uploads.writer`` to the request's token, if nobody else holds an unexpired lease and the
upload ends where the chunk starts. The request then streams its bytes with no transaction
open, renews the lease every third of its length, and (a PATCH) records the new size in a
second short transaction that succeeds only while the row still names it as the writer, which
also frees the upload; the closing PUT's transaction makes the upload a blob instead, and ends
it. A request that finds the lease taken is answered 416 with the upload's current ``Range``,
as for a chunk that does not start where the upload ends: of two chunks sent at once, one is
accepted and the stored bytes are exactly the acknowledged ones. A replica killed while writing
holds the upload until its lease expires. A writer that cannot renew its lease stops writing
well before the lease expires (its own clock says when), so that nobody else can be writing by
then.

The running hash of an upload is kept in this process (keyed by upload uuid and offset), only
as a cache: completing an upload whose chunks all came through this process does not read the
blob back; when the state is missing (chunks through another replica, a restart), the blob is
re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cachetools import LRUCache
from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from shared import db, events, notifications
from shared.errors import ErrorCode, RegistryError, UploadRangeMismatch
from shared.events import Event, Target
from shared.models import (
    BLOB_DELETING,
    BLOB_PRESENT,
    Blob,
    Repository,
    RepositoryBlob,
    Upload,
    utcnow,
)
from shared.observability import UPLOAD_BYTES_READ_BACK, request_id_var
from shared.reference import Digest
from shared.repositories import ensure_repository_id, link_blob
from shared.reviews import review_blobs
from shared.settings import get_settings
from shared.storage import StorageDriver, StorageError, keys

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


# Running sha256 hashers of uploads in progress in this process, by upload: (bytes seen,
# hasher). Only a cache: a request that finds none hashes the stored bytes again.
_hashers: LRUCache[str, tuple[int, hashlib._Hash]] = LRUCache(maxsize=4096)


def _hasher_at(upload_uuid: str, offset: int) -> hashlib._Hash | None:
    """The hasher that has seen exactly the first ``offset`` bytes of the upload, or None;
    taken out of the cache (a request puts it back once it has written more)."""
    item = _hashers.pop(upload_uuid, None)
    if offset == 0:
        return hashlib.sha256()
    if item is None or item[0] != offset:
        return None
    return item[1]


def _upload_unknown(upload_uuid: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_uuid[:100]!r} unknown")


_UPLOAD = select(
    Upload.repository, Upload.size, Upload.storage_key, Upload.writer_expires_at
).where(Upload.uuid == bindparam("uuid"))
_UPLOAD_LOCKED = _UPLOAD.with_for_update()


def _upload_row(
    connection: Connection | Session, repository: str, upload_uuid: str, *, lock: bool = False
) -> Row[str, int, str, dt.datetime | None]:
    """The upload's row (locked until the transaction ends with ``lock``), or
    BLOB_UPLOAD_UNKNOWN when there is none in ``repository``."""
    row = connection.execute(_UPLOAD_LOCKED if lock else _UPLOAD, {"uuid": upload_uuid}).first()
    if row is None or row.repository != repository:
        raise _upload_unknown(upload_uuid)
    return row


def _range_mismatch(state: UploadState, detail: str) -> UploadRangeMismatch:
    return UploadRangeMismatch(detail, headers=upload_headers(state))


class _UploadBusy(UploadRangeMismatch):
    """Another request holds the upload's writer lease."""

    def __init__(self, state: UploadState) -> None:
        super().__init__("another request is writing to this upload", headers=upload_headers(state))


# How long a request waits for an upload another request holds before it is answered 416:
# long enough for a request cut short a moment ago to finish undoing its chunk (a client's
# retry after a broken connection), short enough that a retry racing a live upload is told
# at once.
BUSY_WAIT_SECONDS = 2.0


# --- the writer lease ----------------------------------------------------------------------


@dataclass(slots=True)
class _Lease:
    """This request's hold on an upload, renewed in the database while it writes."""

    upload: UploadState
    token: str
    seconds: float
    # Past this moment (this process's monotonic clock) the lease may have run out in the
    # database unless a renewal said otherwise: no byte is written after it.
    write_until: float
    gone: bool = False  # the row no longer names this request (cancelled, or taken over)
    held: bool = True  # cleared once a statement has freed the upload

    @property
    def upload_uuid(self) -> str:
        return self.upload.uuid

    def check(self) -> None:
        if self.gone:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN,
                "the upload was cancelled, or taken over, while this chunk was written",
            )
        if time.monotonic() > self.write_until:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                "the upload's writer lease could not be renewed; send the chunk again",
                headers={"Retry-After": "1"},
            )


def _lease_seconds() -> float:
    return float(get_settings().upload_lease_seconds)


def _new_lease(upload: UploadState, token: str, taken_at: float) -> _Lease:
    seconds = _lease_seconds()
    # Stop writing a third of the lease before it can expire: room for clock skew between
    # replicas and for the statement that renews it.
    return _Lease(upload, token, seconds, taken_at + seconds * 2 / 3)


def _claim(repository: str, upload_uuid: str, offset: int | None, token: str) -> UploadState:
    """Take the upload's writer lease for ``token``: 404 when there is no such upload, 416
    when another request holds the lease or the upload does not end at ``offset``."""
    now = utcnow()
    with db.transaction() as session:
        row = _upload_row(session, repository, upload_uuid, lock=True)
        state = UploadState(upload_uuid, repository, row.size, row.storage_key)
        if row.writer_expires_at is not None and row.writer_expires_at > now:
            raise _UploadBusy(state)
        if offset is not None and offset != state.size:
            raise _range_mismatch(
                state, f"chunk starts at {offset} but the upload has {state.size} bytes"
            )
        session.execute(
            update(Upload)
            .where(Upload.uuid == upload_uuid)
            .values(writer=token, writer_expires_at=now + dt.timedelta(seconds=_lease_seconds()))
        )
    return state


def _renew(lease: _Lease) -> bool:
    now = utcnow()
    with db.transaction() as session:
        result = session.execute(
            update(Upload)
            .where(Upload.uuid == lease.upload_uuid, Upload.writer == lease.token)
            .values(writer_expires_at=now + dt.timedelta(seconds=lease.seconds), updated_at=now)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _free(lease: _Lease) -> None:
    with db.transaction() as session:
        session.execute(
            update(Upload)
            .where(Upload.uuid == lease.upload_uuid, Upload.writer == lease.token)
            .values(writer=None, writer_expires_at=None)
        )


async def _keep_renewed(lease: _Lease) -> None:
    while not lease.gone:
        await asyncio.sleep(lease.seconds / 3)
        started = time.monotonic()
        try:
            renewed = await db.write(_renew, lease)
        except Exception:  # the database is unreachable: writing stops at write_until
            log.warning("could not renew the lease of upload %s", lease.upload_uuid, exc_info=True)
            continue
        if renewed:
            lease.write_until = started + lease.seconds * 2 / 3
        else:
            lease.gone = True


def _holds(lease: _Lease) -> bool:
    """Whether the database still names this request as the upload's writer."""
    with db.reading() as connection:
        found = connection.execute(
            select(Upload.uuid).where(
                Upload.uuid == lease.upload_uuid, Upload.writer == lease.token
            )
        ).first()
    return found is not None


def _hand_over_stray_writes(upload: UploadState) -> None:
    """The upload ended while this request wrote to it: what the request wrote after the
    janitor deleted the upload's data is deleted too."""
    with db.transaction() as session:
        if session.get(Upload, upload.uuid) is None:
            events.record(session, _cancelled(upload, request_id_var.get()))


async def _confirm_held(lease: _Lease) -> None:
    """404 when the upload went away under this request (a DELETE of it), which is why its
    bytes may be missing from storage: the answer is then that, not a storage failure."""
    if lease.held and not lease.gone and not await db.read(_holds, lease):
        lease.gone = True
    if lease.gone:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_UNKNOWN,
            "the upload was cancelled, or taken over, while this request worked on it",
        )


@asynccontextmanager
async def _holding(lease: _Lease) -> AsyncIterator[_Lease]:
    """Keep ``lease`` renewed while the block writes; free the upload when the block did not.
    When the upload was cancelled meanwhile, what this request wrote after the janitor had
    deleted the upload's data is handed to the janitor too."""
    renewer = asyncio.create_task(_keep_renewed(lease))
    try:
        try:
            yield lease
        except StorageError:
            await _confirm_held(lease)
            raise
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        try:
            if lease.gone:
                await db.write(_hand_over_stray_writes, lease.upload)
            elif lease.held:
                await db.write(_free, lease)
        except Exception:  # a lease expires by itself; reconcile finds stray objects
            log.warning("could not free upload %s", lease.upload_uuid, exc_info=True)


@asynccontextmanager
async def _writing(
    repository: str, upload_uuid: str, offset: int | None
) -> AsyncIterator[tuple[UploadState, _Lease]]:
    token = str(uuid.uuid4())
    give_up = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        taken_at = time.monotonic()
        try:
            state = await db.write(_claim, repository, upload_uuid, offset, token)
            break
        except _UploadBusy:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.05)
    async with _holding(_new_lease(state, token, taken_at)) as lease:
        yield state, lease


# Chunks at least this large are hashed in a worker thread while the next one is read and
# this one written (hashlib lets go of the GIL): a mirror's fetch, in chunks of 1 MiB, spent
# 0.6 ms a MiB hashing on the event loop. A client's upload comes in smaller chunks, hashed
# here: a thread hop would cost more than their hashing.
THREAD_HASH = 512 * 1024


async def _fenced(
    chunks: AsyncIterable[bytes], lease: _Lease, hasher: hashlib._Hash | None
) -> AsyncIterator[bytes]:
    """The chunks, each written only while the lease is sure to be held, and hashed in
    order."""
    hashing: asyncio.Future[None] | None = None  # the previous chunk's, when in a thread
    async for chunk in chunks:
        if chunk:
            lease.check()
            if hasher is not None:
                if hashing is not None:
                    await hashing
                    hashing = None
                if len(chunk) < THREAD_HASH:
                    hasher.update(chunk)
                else:
                    hashing = asyncio.get_running_loop().run_in_executor(None, hasher.update, chunk)
            yield chunk
    if hashing is not None:
        await hashing


# --- sessions ------------------------------------------------------------------------------


async def start(repository: str, writer: str | None = None) -> UploadState:
    """A new upload session; with ``writer``, already leased to that request."""
    return await db.write(_start, repository, writer)


def _start(repository: str, writer: str | None) -> UploadState:
    upload_uuid = str(uuid.uuid4())
    key = keys.upload_key(upload_uuid)
    expires = utcnow() + dt.timedelta(seconds=_lease_seconds()) if writer else None
    with db.transaction() as session:
        session.add(
            Upload(
                uuid=upload_uuid,
                repository=repository,
                storage_key=key,
                size=0,
                writer=writer,
                writer_expires_at=expires,
            )
        )
    return UploadState(upload_uuid, repository, 0, key)


async def find(repository: str, upload_uuid: str) -> UploadState:
    """The upload session ``upload_uuid`` of ``repository``, or BLOB_UPLOAD_UNKNOWN."""
    return await db.read(_find, repository, upload_uuid)


def _find(repository: str, upload_uuid: str) -> UploadState:
    with db.reading() as connection:
        row = _upload_row(connection, repository, upload_uuid)
    return UploadState(upload_uuid, repository, row.size, row.storage_key)


def _record_size(state: UploadState, lease: _Lease, new_size: int, *, free: bool) -> UploadState:
    """Record the bytes written under ``lease``; with ``free``, the upload is free again."""
    values: dict[str, object] = {"size": new_size, "updated_at": utcnow()}
    if free:
        values.update(writer=None, writer_expires_at=None)
    with db.transaction() as session:
        result = session.execute(
            update(Upload)
            .where(Upload.uuid == state.uuid, Upload.writer == lease.token)
            .values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            lease.gone = True
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN,
                "the upload was cancelled, or taken over, while this chunk was written",
            )
    if free:
        lease.held = False
    return UploadState(state.uuid, state.repository, new_size, state.storage_key)


async def _write(
    storage: StorageDriver,
    state: UploadState,
    lease: _Lease,
    chunks: AsyncIterable[bytes],
    content_range: tuple[int, int] | None,
    *,
    free: bool,
    record: bool = True,
) -> UploadState:
    """Write one chunk at the end of the upload and record it (not with ``record``: an upload
    that ends in this request). With ``content_range`` the chunk must be exactly as long as
    the range says (else 416, nothing kept)."""
    hasher = _hasher_at(state.uuid, state.size)
    new_size = await storage.append(state.storage_key, state.size, _fenced(chunks, lease, hasher))
    if (
        content_range is not None
        and new_size - state.size != content_range[1] - content_range[0] + 1
    ):
        lease.check()
        await storage.truncate(state.storage_key, state.size)  # undo the chunk
        raise _range_mismatch(
            state,
            f"Content-Range {content_range[0]}-{content_range[1]} does not match the "
            f"{new_size - state.size} bytes sent",
        )
    if new_size == state.size and not free:
        if hasher is not None:  # nothing written (a closing PUT without a body): kept as it was
            _hashers[state.uuid] = (new_size, hasher)
        return state
    if not record:
        if hasher is not None:
            _hashers[state.uuid] = (new_size, hasher)
        return UploadState(state.uuid, state.repository, new_size, state.storage_key)
    # When recording fails, the bytes past the recorded size stay: they are not part of the
    # upload, and the next chunk overwrites them (the record may have been made after all,
    # when only its answer was lost: undoing would then lose acknowledged bytes).
    state = await db.write(_record_size, state, lease, new_size, free=free)
    if hasher is not None:
        _hashers[state.uuid] = (new_size, hasher)
    return state


async def append(
    storage: StorageDriver,
    repository: str,
    upload_uuid: str,
    chunks: AsyncIterable[bytes],
    content_range: tuple[int, int] | None,
) -> UploadState:
    """Append one chunk (a PATCH). With ``content_range`` the chunk must start where the
    upload ends (else 416) and be exactly as long as the range says (else 416, nothing kept)."""
    offset = content_range[0] if content_range is not None else None
    async with _writing(repository, upload_uuid, offset) as (state, lease):
        return await _write(storage, state, lease, chunks, content_range, free=True)


async def _digest_of(storage: StorageDriver, state: UploadState, algorithm: str) -> str:
    hasher = _hasher_at(state.uuid, state.size) if algorithm == "sha256" else None
    if hasher is None:
        # The running hash is not in this process: read the upload back.
        hasher = hashlib.new(algorithm)
        if state.size:
            async for chunk in storage.read(state.storage_key, 0, state.size - 1):
                hasher.update(chunk)
                UPLOAD_BYTES_READ_BACK.inc(len(chunk))
    return f"{algorithm}:{hasher.hexdigest()}"


async def complete(
    storage: StorageDriver,
    repository: str,
    upload_uuid: str,
    digest: Digest,
    final_chunk: AsyncIterable[bytes],
    request_id: str | None = None,
) -> CommittedBlob:
    """Finish an upload (the closing PUT): append the final chunk, verify the digest, make the
    blob visible in the repository. A digest that does not match ends the upload."""
    async with _writing(repository, upload_uuid, None) as (state, lease):
        return await _complete(storage, state, lease, digest, final_chunk, request_id)


async def _complete(
    storage: StorageDriver,
    state: UploadState,
    lease: _Lease,
    digest: Digest,
    final_chunk: AsyncIterable[bytes],
    request_id: str | None,
    announce: bool = True,
) -> CommittedBlob:
    """The final chunk's size is not recorded: the transaction that makes the upload a blob
    ends it. When the request fails before that, the upload is as it was before the chunk
    (whose bytes the next chunk, or the closing PUT sent again, overwrites)."""
    state = await _write(storage, state, lease, final_chunk, None, free=False, record=False)
    stored = await storage.size(state.storage_key)
    if stored is None or stored < state.size:
        await _confirm_held(lease)
        await _end(state, lease, request_id)
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID,
            f"the upload's stored bytes are incomplete ({stored} of {state.size}); start again",
        )
    if stored > state.size:  # bytes of a chunk whose record failed: not part of the blob
        lease.check()
        await storage.truncate(state.storage_key, state.size)
    actual = await _digest_of(storage, state, digest.algorithm)
    if actual != str(digest):
        await _end(state, lease, request_id)
        if lease.held:
            # Its row was gone already: the upload was cancelled while this request read it
            # back from storage (its data deleted under the read), 404, not a wrong digest.
            lease.gone = True
            await _confirm_held(lease)
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"digest {digest} given, but the content has digest {actual}",
        )
    await db.write(_record_blob, state, lease, digest, request_id, announce)
    _hashers.pop(state.uuid, None)
    return CommittedBlob(str(digest), state.size)


_INSERT_BLOB = insert(Blob)


def _record_blob(
    state: UploadState, lease: _Lease, digest: Digest, request_id: str | None, announce: bool
) -> None:
    with db.transaction() as session:
        # The upload ends here, if this request still holds it (a DELETE of the upload may
        # have come first).
        ended = session.execute(
            delete(Upload).where(Upload.uuid == state.uuid, Upload.writer == lease.token)
        )
        if ended.rowcount != 1:  # type: ignore[attr-defined]
            lease.gone = True
            raise _upload_unknown(state.uuid)
        # Insert first: on MySQL a locking read of a missing row takes a gap lock, and two
        # uploads doing that before inserting deadlock each other.
        blob = None
        row = {"digest": str(digest), "size": state.size, "storage_key": state.storage_key}
        if db.insert_new(session.connection(), _INSERT_BLOB, row) is None:
            # Known already. Locked, so that garbage collection (which locks the same row)
            # cannot delete it between this check and the link below.
            blob = session.get(Blob, str(digest), with_for_update=True, populate_existing=True)
        if blob is not None and blob.state == BLOB_DELETING:
            # Garbage collection is removing this content: these bytes bring it back.
            blob.state = BLOB_PRESENT
            blob.storage_key = state.storage_key
            blob.size = state.size
        connection = session.connection()
        link_blob(connection, ensure_repository_id(connection, state.repository), str(digest))
        # Pushed blobs that no manifest will use are collected once the grace period is over.
        review_blobs(session, [str(digest)], "uploaded")
        if announce:
            notifications.record(
                session,
                "push",
                state.repository,
                digest=str(digest),
                media_type=notifications.BLOB_MEDIA_TYPE,
                size=state.size,
                kind="blobs",
            )
        # The janitor moves the upload's object to the blob's own key.
        events.record(
            session,
            Event(
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
            ),
        )
    lease.held = False


def _cancelled(state: UploadState, request_id: str | None) -> Event:
    _hashers.pop(state.uuid, None)
    return Event(
        action="blob:upload:cancelled",
        target=Target(
            repository=state.repository, upload_uuid=state.uuid, storage_key=state.storage_key
        ),
        request_id=request_id,
        source="blob-service",
    )


async def _end(state: UploadState, lease: _Lease, request_id: str | None) -> None:
    """End the upload this request holds (a digest mismatch, a client gone mid-body of a
    single-request upload): the row goes now, and the janitor deletes the data."""

    def drop_row() -> bool:
        with db.transaction() as session:
            result = session.execute(
                delete(Upload).where(Upload.uuid == state.uuid, Upload.writer == lease.token)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            events.record(session, _cancelled(state, request_id))
            return True

    if await db.write(drop_row):
        lease.held = False


async def cancel(repository: str, upload_uuid: str, request_id: str | None = None) -> None:
    """End an upload (DELETE), whoever writes to it: its row goes now (a writer then fails to
    record its chunk), and the ``blob:upload:cancelled`` event has the janitor delete the
    data. Only the request that removed the row sends the event."""

    def drop_row() -> UploadState:
        with db.transaction() as session:
            row = _upload_row(session, repository, upload_uuid, lock=True)
            session.execute(delete(Upload).where(Upload.uuid == upload_uuid))
            state = UploadState(upload_uuid, repository, row.size, row.storage_key)
            events.record(session, _cancelled(state, request_id))
            return state

    await db.write(drop_row)


async def monolithic(
    storage: StorageDriver,
    repository: str,
    digest: Digest,
    body: AsyncIterable[bytes],
    request_id: str | None = None,
    *,
    announce: bool = True,
    started: Callable[[UploadState], None] | None = None,
) -> CommittedBlob:
    """A whole blob in one request (POST with ``?digest=``). The session exists only for this
    request: if the request fails (the client goes away mid-body, say), it ends with it.
    ``announce``: whether the notification endpoints hear of it as a push (not when a mirror
    stores what it pulled through). ``started`` is told the session before ``body`` is
    read."""
    token = str(uuid.uuid4())
    taken_at = time.monotonic()
    state = await start(repository, token)
    if started is not None:
        started(state)
    async with _holding(_new_lease(state, token, taken_at)) as lease:
        try:
            return await _complete(storage, state, lease, digest, body, request_id, announce)
        except BaseException:
            if lease.held and not lease.gone:
                with contextlib.suppress(Exception):
                    await _end(state, lease, request_id)
            raise


# --- mounts --------------------------------------------------------------------------------


async def mount(repository: str, digest: Digest, source: str | None) -> CommittedBlob | None:
    """Link an existing blob into ``repository`` (cross-repository mount). With no ``source``
    the blob is mounted from whichever repository holds it. None when it cannot be mounted."""
    return await db.write(_mount, repository, digest, source)


def _mount(repository: str, digest: Digest, source: str | None) -> CommittedBlob | None:
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
        connection = session.connection()
        link_blob(connection, ensure_repository_id(connection, repository), blob.digest)
        # A mounted blob is about to be used by a manifest: push its review past the grace period.
        review_blobs(session, [blob.digest], "mounted")
        notifications.record(
            session,
            "mount",
            repository,
            digest=blob.digest,
            media_type=notifications.BLOB_MEDIA_TYPE,
            size=blob.size,
            from_repository=source,
            kind="blobs",
        )
        return CommittedBlob(blob.digest, blob.size)


def upload_headers(state: UploadState) -> dict[str, str]:
    """``Location``, ``Range`` and ``Docker-Upload-UUID`` of an upload in progress."""
    last = state.size - 1 if state.size > 0 else 0
    return {
        "Location": f"/v2/{state.repository}/blobs/uploads/{state.uuid}",
        "Range": f"0-{last}",
        "Docker-Upload-UUID": state.uuid,
    }
