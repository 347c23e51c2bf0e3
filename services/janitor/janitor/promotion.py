"""Moving a completed upload's object to the blob's content-addressed key (``promote``), and
deleting the objects of uploads that ended without a blob (``discard``).

Both are idempotent and safe to run twice or at once, and neither holds a database lock while
it works on storage. A promote claims the blob's row (``janitor.claims``), moves the object,
and records the new key; a crash between the move and the record leaves the row naming the
upload key while the bytes are at the blob key: readers look there too, and the next run (or
reconcile) only records it.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from janitor import claims
from shared import db
from shared.models import BLOB_PRESENT, Blob, Upload
from shared.reference import parse_digest
from shared.storage import StorageDriver, keys

log = logging.getLogger(__name__)


async def promote(storage: StorageDriver, digest: str, upload_key: str | None = None) -> str:
    """Move blob ``digest`` to its own key. ``upload_key`` is the object of the upload that
    announced it: if another upload's object became the blob, this one is discarded."""
    final_key = keys.blob_key(parse_digest(digest))
    outcome = await _move(storage, digest, final_key)
    if upload_key is not None and upload_key != final_key:
        await discard(storage, upload_key)
    return outcome


async def _move(storage: StorageDriver, digest: str, final_key: str) -> str:
    async with claims.claimed(digest) as claim:
        if claim is None or claim.state != BLOB_PRESENT:
            return "gone"
        source = claim.storage_key
        if source == final_key:
            return "already"
        claim.check()
        if await storage.size(source) is not None:
            claim.check()
            await storage.move(source, final_key)
        elif await storage.size(final_key) is None:
            log.error("blob %s has no object at %s nor at %s", digest, source, final_key)
            return "missing"
        # (Else moved by an earlier run that died before its record: only the row is left.)

        def record(_: Session, blob: Blob) -> None:
            if blob.storage_key == source:  # an upload of the same content may have revived it
                blob.storage_key = final_key

        claim.record = record
        return "moved"


def _unused(upload_uuid: str, key: str) -> bool:
    with db.reading() as connection:
        if connection.scalars(select(Upload.uuid).where(Upload.uuid == upload_uuid)).first():
            return False  # still in progress
        in_use = connection.scalars(
            select(Blob.digest).where(Blob.storage_key == key).limit(1)
        ).first()
        return in_use is None  # else the bytes of a blob not moved yet


async def discard(storage: StorageDriver, key: str) -> bool:
    """Delete the object of an upload that no session and no blob uses any more. Once an
    upload's object is unused it stays so (only the request ending its upload session makes
    a blob of it, in the transaction that ends the session), so no lock is held while it
    goes."""
    upload_uuid = keys.upload_uuid_of_key(key)
    if upload_uuid is None:
        raise ValueError(f"{key!r} is not an upload's object")
    if not await db.read(_unused, upload_uuid, key):
        return False
    await storage.delete(key)
    return True
