"""The janitor works on a blob's objects under a claim on its row, holding no database lock
(``janitor.claims``): one task at a time moves or deletes a blob's objects, a task that died
holds its claim only until it expires, and clients never wait for a claim."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading

import pytest
from sqlalchemy import update

from janitor.claims import BlobBusy
from janitor.gc import finish_deletion
from janitor.promotion import promote
from shared import db
from shared.models import BLOB_DELETING, Blob, utcnow
from shared.reference import parse_digest
from shared.storage import StorageDriver, get_storage, keys
from tests.registry import RegistryUnderTest, eventually


def storage_key(registry: RegistryUnderTest, digest: str) -> str:
    rows = registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
    return str(rows[0][0]) if rows else ""


def final_key(digest: str) -> str:
    return keys.blob_key(parse_digest(digest))


def set_blob(digest: str, **values: object) -> None:
    with db.transaction() as session:
        session.execute(update(Blob).where(Blob.digest == digest).values(**values))


def test_a_claim_held_by_another_task_postpones_a_promote_until_it_expires(
    registry: RegistryUnderTest, repo: str
) -> None:
    with registry.configured():
        digest = registry.push_blob(repo, os.urandom(3000))
        eventually(lambda: storage_key(registry, digest) == final_key(digest), what="moved")
        # Back at an upload key, as if not moved yet, and claimed by a task that died.
        upload_key = "uploads/11111111-2222-3333-4444-555555555555/data"
        storage = get_storage()
        asyncio.run(storage.move(final_key(digest), upload_key))
        until = utcnow() + dt.timedelta(minutes=5)
        set_blob(digest, storage_key=upload_key, claimed_by="dead-task", claimed_until=until)
        with pytest.raises(BlobBusy):
            asyncio.run(promote(storage, digest))
        assert storage_key(registry, digest) == upload_key
        assert asyncio.run(storage.size(upload_key)) == 3000
        # Once the claim has expired the next try moves the blob.
        set_blob(digest, claimed_until=utcnow() - dt.timedelta(seconds=1))
        assert asyncio.run(promote(storage, digest)) == "moved"
        assert storage_key(registry, digest) == final_key(digest)
        claims = registry.query("SELECT claimed_by FROM blobs WHERE digest = :d", d=digest)
        assert claims == [(None,)]


class PausedDeletes:
    """The registry's storage, whose deletes wait until the test lets them go on."""

    def __init__(self, storage: StorageDriver) -> None:
        self.storage = storage
        self.waiting = threading.Event()
        self.go_on = threading.Event()

    async def delete(self, key: str) -> None:
        self.waiting.set()
        await asyncio.to_thread(self.go_on.wait, 60)
        await self.storage.delete(key)


def test_an_upload_during_a_deletion_is_not_kept_waiting_and_keeps_its_bytes(
    registry: RegistryUnderTest, repo: str
) -> None:
    """Garbage collection deletes a blob's objects while a client pushes the same content
    again: the push is answered at once, reviving the row with the bytes of its own upload;
    the deletion removes only the old objects, and the blob is moved once it is over."""
    data = os.urandom(4000)
    with registry.configured():
        digest = registry.push_blob(repo, data)
        eventually(lambda: storage_key(registry, digest) == final_key(digest), what="moved")
        set_blob(digest, state=BLOB_DELETING)
        paused = PausedDeletes(get_storage())
        freed: list[int | None] = []
        deletion = threading.Thread(
            target=lambda: freed.append(asyncio.run(finish_deletion(paused, digest)))  # type: ignore[arg-type]
        )
        deletion.start()
        try:
            assert paused.waiting.wait(30), "the deletion did not start"
            # The deletion holds the claim and no database lock: the push goes through.
            assert registry.push_blob(f"{repo}-again", data) == digest
            revived = storage_key(registry, digest)
            assert revived.startswith("uploads/")
            # Its promote waits for the claim.
            assert registry.query("SELECT state FROM blobs WHERE digest = :d", d=digest) == [
                ("present",)
            ]
        finally:
            paused.go_on.set()
            deletion.join(60)
        assert freed == [len(data)]  # the old object's bytes
        eventually(
            lambda: storage_key(registry, digest) == final_key(digest),
            timeout=90,
            what="the revived blob moved once the deletion was over",
        )
        assert registry.http.get(f"/v2/{repo}-again/blobs/{digest}").content == data
        eventually(registry.storage_matches_database, what="storage matching the database")
