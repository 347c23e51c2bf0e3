"""Moving a completed upload's object to the blob's content-addressed key (``promote``), and
deleting the objects of uploads that ended without a blob (``discard``).

Both are idempotent and safe to run twice or at once: each re-reads the database, works under
the blob row's lock, and does nothing when the work is already done. A crash between the move
and the row update leaves the row naming the upload key while the bytes are at the blob key:
readers look there too, and the next run (or reconcile) only updates the row.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from shared import db
from shared.models import BLOB_PRESENT, Blob, Upload
from shared.reference import parse_digest
from shared.storage import StorageDriver, keys

log = logging.getLogger(__name__)


async def promote(storage: StorageDriver, digest: str, upload_key: str | None = None) -> str:
    """Move blob ``digest`` to its own key. ``upload_key`` is the object of the upload that
    announced it: if another upload's object became the blob, this one is discarded."""
    final_key = keys.blob_key(parse_digest(digest))
    outcome = "gone"
    with db.transaction() as session:
        blob = session.get(Blob, digest, with_for_update=True)
        if blob is not None and blob.state == BLOB_PRESENT:
            if blob.storage_key == final_key:
                outcome = "already"
            else:
                source = blob.storage_key
                if await storage.size(source) is not None:
                    await storage.move(source, final_key)
                elif await storage.size(final_key) is None:
                    log.error("blob %s has no object at %s nor at %s", digest, source, final_key)
                    return "missing"
                # Moved by an earlier run that died before this update: only the row is left.
                blob.storage_key = final_key
                outcome = "moved"
    if upload_key is not None and upload_key != final_key:
        await discard(storage, upload_key)
    return outcome


async def discard(storage: StorageDriver, key: str) -> bool:
    """Delete the object of an upload that no session and no blob uses any more."""
    upload_uuid = keys.upload_uuid_of_key(key)
    if upload_uuid is None:
        raise ValueError(f"{key!r} is not an upload's object")
    with db.transaction() as session:
        if session.get(Upload, upload_uuid) is not None:
            return False  # still in progress
        in_use = session.scalars(
            select(Blob.digest).where(Blob.storage_key == key).limit(1)
        ).first()
        if in_use is not None:
            return False  # the bytes of a blob not moved yet
        await storage.delete(key)
    return True
