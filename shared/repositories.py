"""Repositories, the blobs linked to them and the manifests they hold: what the services and
the janitor change the same way."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.orm import Session

from shared import read_cache
from shared.db import insert_new
from shared.models import (
    BLOB_PRESENT,
    Base,
    Blob,
    Manifest,
    ManifestReference,
    Repository,
    RepositoryBlob,
    Tag,
    utcnow,
)
from shared.policies import Policies, Usage
from shared.reviews import review_blobs, review_manifests

if TYPE_CHECKING:
    from shared.policies_file import Quota

_REPOSITORY_ID = select(Repository.id).where(Repository.name == bindparam("name"))
_INSERT_REPOSITORY = insert(Base.metadata.tables["repositories"])


# Repository ids by name. A repository's row, once committed, is never deleted or renamed, so
# its id never changes: each process keeps those it has read (a manifest PUT is one round trip
# shorter). Only ids read from the database are kept, never one this process inserted, whose
# transaction may still roll back: ``ensure_repository_id`` inserts, and no transaction reads
# a repository after inserting it. (A database restored from a backup may give an id to
# another name: the services are restarted after a restore, see the README.) A plain dict,
# emptied when full: its single operations are safe from several threads.
_ids: dict[str, int] = {}
_IDS_KEPT = 10_000


def forget_repository_ids() -> None:
    """Forget the ids kept (the database changed)."""
    _ids.clear()


def find_repository_id(connection: Connection | Session, name: str) -> int | None:
    """The id of the repository called ``name``, or None: one Core statement, none when this
    process has read it before."""
    known = _ids.get(name)
    if known is not None:
        return known
    found: int | None = connection.execute(_REPOSITORY_ID, {"name": name}).scalar()
    if found is not None:
        if len(_ids) >= _IDS_KEPT:
            _ids.clear()
        _ids[name] = found
    return found


def ensure_repository_id(connection: Connection, name: str) -> int:
    """The id of the repository called ``name``, created if it does not exist (safe under
    races)."""
    found = find_repository_id(connection, name)
    if found is not None:
        return found
    inserted = insert_new(connection, _INSERT_REPOSITORY, {"name": name, "created_at": utcnow()})
    if inserted is not None:
        assert inserted.inserted_primary_key is not None
        return int(inserted.inserted_primary_key[0])
    # Created meanwhile by a concurrent request. A locking read sees it: a plain one would
    # read this transaction's snapshot (MySQL's REPEATABLE READ), from before.
    locking = _REPOSITORY_ID.with_for_update(read=True)
    return int(connection.execute(locking, {"name": name}).scalar_one())


def link_blob(connection: Connection, repository_id: int, digest: str) -> None:
    """Link blob ``digest`` into the repository: one INSERT, which changes nothing when the
    link exists (made earlier, or meanwhile by a concurrent request: the outcome is the
    same). On MySQL the INSERT that finds the link holds it (a shared lock) until the
    transaction ends, as a locking read would."""
    insert_new(connection, _INSERT_LINK, {"repository_id": repository_id, "blob_digest": digest})


_INSERT_LINK = insert(Base.metadata.tables["repository_blobs"])


def linked_digests(
    session: Session | Connection, repository_id: int, digests: list[str]
) -> set[str]:
    """Which of ``digests`` the repository holds. The rows read stay share-locked until the
    transaction ends, so garbage collection (which deletes links under an exclusive lock)
    cannot remove them before a manifest that uses them is committed."""
    if not digests:
        return set()
    params = {"repository_id": repository_id, "digests": digests}
    return set(session.execute(_LINKED, params).scalars())


_LINKED = (
    select(RepositoryBlob.blob_digest)
    .join(Blob, Blob.digest == RepositoryBlob.blob_digest)
    .where(
        RepositoryBlob.repository_id == bindparam("repository_id"),
        RepositoryBlob.blob_digest.in_(bindparam("digests", expanding=True)),
        Blob.state == BLOB_PRESENT,
    )
    .with_for_update(read=True)
)


def delete_manifest(
    session: Session,
    manifest: Manifest,
    reason: str,
    delay: dt.timedelta | None = None,
    repository: str | None = None,
) -> None:
    """Delete ``manifest`` (a client's DELETE by digest, or garbage collection) with its tags
    and references. What it referenced may now be unreferenced, and so may its referrers
    (manifests whose subject it is): each gets a garbage-collection review, due after
    ``delay`` (the grace period by default). ``repository`` is its repository's name, when
    the caller knows it."""
    references = session.execute(
        select(ManifestReference.digest, ManifestReference.is_manifest).where(
            ManifestReference.manifest_id == manifest.id
        )
    ).all()
    children = [digest for digest, is_manifest in references if is_manifest]
    in_repository = Manifest.repository_id == manifest.repository_id
    # Its referrers by a locking read (a range of the (repository, subject) index): one pushed
    # and committed since this transaction began is seen, and one being pushed waits for this
    # deletion and is then a referrer of a missing subject, as if pushed after it. (A plain
    # read would miss the first, and it would outlive its subject with no review.)
    related_ids = list(
        session.scalars(
            select(Manifest.id)
            .where(in_repository, Manifest.subject_digest == manifest.digest)
            .with_for_update(read=True)
        )
    )
    if children:  # they were here before it, and cannot become its children now
        related_ids += session.scalars(
            select(Manifest.id).where(in_repository, Manifest.digest.in_(children))
        )
    session.execute(delete(Tag).where(Tag.manifest_id == manifest.id))
    if repository is None and read_cache.redis_url() is not None:
        # (Garbage collection's caller knows the id only; read only when a token is kept.)
        repository = session.get_one(Repository, manifest.repository_id).name
    if repository is not None:
        read_cache.changed(session, repository)
    session.execute(delete(ManifestReference).where(ManifestReference.manifest_id == manifest.id))
    session.delete(manifest)
    review_blobs(
        session, [digest for digest, is_manifest in references if not is_manifest], reason, delay
    )
    review_manifests(session, [i for i in related_ids if i != manifest.id], reason, delay)


# --- what a repository holds (quotas, the web interface) ------------------------------------


def referenced_bytes(of_repository: ColumnElement[bool]) -> Select[int]:
    """The bytes of the distinct blobs the manifests ``of_repository`` selects reference (a
    condition on ``Manifest.repository_id``; correlate it for a subquery per repository)."""
    referenced = (
        select(ManifestReference.digest)
        .join(Manifest, Manifest.id == ManifestReference.manifest_id)
        .where(of_repository, ManifestReference.is_manifest.is_(False))
    )
    return select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.digest.in_(referenced))


def usage(connection: Connection, repository_id: int) -> Usage:
    """What repository ``repository_id`` holds, counted as its quota counts it."""
    storage = connection.execute(
        referenced_bytes(Manifest.repository_id == repository_id)
    ).scalar_one()
    tags = connection.execute(
        select(func.count()).where(Tag.repository_id == repository_id)
    ).scalar_one()
    return Usage(int(storage), int(tags))


def lock_repository(connection: Connection, repository_id: int) -> None:
    """Hold repository ``repository_id``'s row until the transaction ends: quota checks of
    one repository run one at a time, on every replica."""
    connection.execute(
        select(Repository.id).where(Repository.id == repository_id).with_for_update()
    )


def under_quota(connection: Connection, found: Policies) -> list[tuple[str, Quota, Usage]]:
    """Each repository under one of ``found``'s quotas, with its quota and what it holds."""
    held: list[tuple[str, Quota, Usage]] = []
    if not found.quotas:
        return held
    for repository_id, name in connection.execute(
        select(Repository.id, Repository.name).order_by(Repository.name)
    ):
        quota = found.quota(name)
        if quota is not None:
            held.append((name, quota, usage(connection, repository_id)))
    return held
