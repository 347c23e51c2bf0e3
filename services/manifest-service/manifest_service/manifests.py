"""Manifests of a repository (OCI Distribution Spec, "Pulling manifests", "Pushing manifests",
"Deleting manifests")."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from manifest_service import media_types
from shared import db, notifications, policies, read_cache
from shared.errors import ErrorCode, RegistryError
from shared.models import Base, Manifest, ManifestReference, Repository, Tag, utcnow
from shared.reference import TAG_RE, is_digest, parse_digest, validate_tag
from shared.repositories import (
    delete_manifest,
    ensure_repository_id,
    find_repository_id,
    linked_digests,
    lock_repository,
    usage,
)
from shared.reviews import review_manifests

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None


def _unknown(repository: str, reference: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference!r} unknown to repository {repository!r}"
    )


def _find(session: Session, repository_id: int, reference: str) -> Manifest | None:
    if is_digest(reference):
        return session.scalars(
            select(Manifest).where(
                Manifest.repository_id == repository_id, Manifest.digest == reference
            )
        ).first()
    return session.scalars(
        select(Manifest)
        .join(Tag, Tag.manifest_id == Manifest.id)
        .where(Tag.repository_id == repository_id, Tag.name == reference)
    ).first()


def check_reference(reference: str) -> None:
    if is_digest(reference):
        parse_digest(reference)
    else:
        validate_tag(reference)


async def get(repository: str, reference: str) -> StoredManifest:
    """The manifest ``reference`` names (from this process's memory when it is known to be
    current: ``shared.read_cache``)."""
    return await read_cache.cached(
        repository,
        "manifest",
        (reference,),
        lambda: db.read(_get, repository, reference),
        lambda stored: len(stored.content),
    )


def _get(repository: str, reference: str) -> StoredManifest:
    if not is_digest(reference) and not TAG_RE.fullmatch(reference):
        # A name that cannot be a tag names no manifest: 404, as the conformance suite expects.
        raise _unknown(repository, reference)
    check_reference(reference)
    query = _BY_DIGEST if is_digest(reference) else _BY_TAG
    # The hottest read of a registry: one statement, no ORM objects.
    with db.reading() as connection:
        row = connection.execute(query, {"repository": repository, "reference": reference}).first()
    if row is None:
        raise _unknown(repository, reference)
    return StoredManifest(row.digest, row.media_type, row.content)


_COLUMNS = (Manifest.digest, Manifest.media_type, Manifest.content)
_BY_TAG = (
    select(*_COLUMNS)
    .join(Tag, Tag.manifest_id == Manifest.id)
    .join(Repository, Repository.id == Tag.repository_id)
    .where(Repository.name == bindparam("repository"), Tag.name == bindparam("reference"))
)
_BY_DIGEST = (
    select(*_COLUMNS)
    .join(Repository, Repository.id == Manifest.repository_id)
    .where(Repository.name == bindparam("repository"), Manifest.digest == bindparam("reference"))
)


async def put(
    repository: str, reference: str, body: bytes, content_type: str | None
) -> PushedManifest:
    """Store a manifest under a tag or its digest. Every blob it references (and, for an
    index, every manifest) must already be in the repository; its subject need not be."""
    try:
        return await db.write(_put, repository, reference, body, content_type)
    except policies.PolicyDenied as refusal:
        await _announce(refusal)
        raise


def _put(
    repository: str,
    reference: str,
    body: bytes,
    content_type: str | None,
    check_references: bool = True,
) -> PushedManifest:
    """With ``check_references`` false (a manifest pulled through from a mirror's upstream),
    the blobs and manifests it references need not be here yet: they are fetched when
    asked for."""
    check_reference(reference)
    parsed = media_types.parse(body, content_type)
    if is_digest(reference):
        wanted = parse_digest(reference)
        digest = f"{wanted.algorithm}:{hashlib.new(wanted.algorithm, body).hexdigest()}"
        if digest != reference:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID, f"manifest has digest {digest}, not {reference}"
            )
        tag = None
    else:
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        tag = reference

    # A repository under a quota takes its pushes one at a time (its row held), each reading
    # what the last one committed; a mirror's pull-through is no push.
    quota = policies.configured().quota(repository) if check_references else None
    # The push path in Core statements (no ORM unit of work): about six round trips.
    with db.transaction(read_committed=quota is not None) as session:
        connection = session.connection()
        repository_id = ensure_repository_id(connection, repository)
        if quota is not None:
            lock_repository(connection, repository_id)
            before = usage(connection, repository_id)
        if check_references:
            _check_references(connection, repository_id, repository, parsed)
        key = {"repository_id": repository_id, "digest": digest}
        tag_target: int | None = None
        if tag is None:
            manifest_id = connection.execute(_MANIFEST_ID, key).scalar()
        else:
            # Both plain reads in one round trip.
            manifest_id, tag_target = connection.execute(
                _MANIFEST_AND_TAG, {**key, "name": tag}
            ).one()
        if manifest_id is not None:
            # Held against a concurrent delete (a client's, or garbage collection's) until
            # this transaction ends; gone meanwhile, it is stored again. (Read plainly
            # first: a locking read of a missing row would take a gap lock on MySQL, and an
            # INSERT tried first would use up an id of the INT column at every push of a
            # manifest stored already.)
            manifest_id = connection.execute(_MANIFEST_HELD, key).scalar()
        if manifest_id is None:
            manifest_id = _insert(connection, repository_id, digest, body, parsed)
            if tag is None and check_references:
                # Untagged from the start: garbage collection of untagged manifests looks at
                # it after the grace period (an index or a living subject may refer to it by
                # then; a tag pushed meanwhile keeps it too).
                review_manifests(session, [manifest_id], "pushed untagged")
        if tag is not None:
            _set_tag(
                session,
                connection,
                repository,
                repository_id,
                tag,
                manifest_id,
                tag_target,
                enforce=check_references,  # a mirror's pull-through follows its upstream
            )
        if quota is not None:
            after = usage(connection, repository_id)
            policies.refuse_over_quota(repository, quota, before, after, tag)
        if check_references:  # a manifest pulled through was pushed by nobody
            notifications.record(
                session,
                "push",
                repository,
                digest=digest,
                media_type=parsed.media_type,
                size=len(body),
                tag=tag,
            )

    # No janitor event of its own: a push leaves the janitor nothing to do (the blobs it
    # references are already in place), unless an endpoint is notified of it.
    return PushedManifest(digest, parsed.subject.digest if parsed.subject else None)


_MANIFEST_ID = select(Manifest.id).where(
    Manifest.repository_id == bindparam("repository_id"), Manifest.digest == bindparam("digest")
)
_MANIFEST_HELD = _MANIFEST_ID.with_for_update(read=True)
_INSERT_MANIFEST = insert(Base.metadata.tables["manifests"])
_INSERT_REFERENCES = insert(Base.metadata.tables["manifest_references"])
_INSERT_TAG = insert(Base.metadata.tables["tags"])
_MOVE_TAG = (
    update(Base.metadata.tables["tags"])
    .where(Tag.repository_id == bindparam("key_repository"), Tag.name == bindparam("key_name"))
    .values(manifest_id=bindparam("manifest_id"), updated_at=bindparam("updated_at"))
)
_TAG_TARGET = select(Tag.manifest_id).where(
    Tag.repository_id == bindparam("repository_id"), Tag.name == bindparam("name")
)
_TAG_HELD = _TAG_TARGET.with_for_update()
_MANIFEST_AND_TAG = select(
    _MANIFEST_ID.scalar_subquery().label("manifest_id"),
    _TAG_TARGET.scalar_subquery().label("tag_target"),
)


def _check_references(
    connection: Connection,
    repository_id: int,
    repository: str,
    parsed: media_types.ParsedManifest,
) -> None:
    blob_digests = sorted({d.digest for d in parsed.blobs})
    missing = set(blob_digests) - linked_digests(connection, repository_id, blob_digests)
    child_digests = sorted({d.digest for d in parsed.manifests})
    if child_digests:
        present = set(
            connection.execute(
                select(Manifest.digest)
                .where(Manifest.repository_id == repository_id, Manifest.digest.in_(child_digests))
                .with_for_update(read=True)
            ).scalars()
        )
        missing |= set(child_digests) - present
    if missing:
        raise RegistryError(
            ErrorCode.MANIFEST_BLOB_UNKNOWN,
            f"repository {repository!r} does not hold {', '.join(sorted(missing)[:20])}",
        )


def _insert(
    connection: Connection,
    repository_id: int,
    digest: str,
    body: bytes,
    parsed: media_types.ParsedManifest,
) -> int:
    references = {d.digest: False for d in parsed.blobs}
    references.update({d.digest: True for d in parsed.manifests})
    row = {
        "repository_id": repository_id,
        "digest": digest,
        "media_type": parsed.media_type,
        "artifact_type": parsed.artifact_type,
        "subject_digest": parsed.subject.digest if parsed.subject else None,
        "annotations": json.dumps(parsed.annotations) if parsed.annotations else None,
        "size": len(body),
        "content": body,
        "created_at": utcnow(),
    }
    # Not inserted: the same manifest was pushed at the same moment by another client, and
    # stored whole (a locking read sees its row; a plain one reads this transaction's older
    # snapshot).
    inserted = db.insert_new(connection, _INSERT_MANIFEST, row)
    if inserted is None:
        return int(
            connection.execute(
                _MANIFEST_HELD, {"repository_id": repository_id, "digest": digest}
            ).scalar_one()
        )
    assert inserted.inserted_primary_key is not None
    manifest_id = int(inserted.inserted_primary_key[0])
    if references:
        connection.execute(
            _INSERT_REFERENCES,
            [
                {"manifest_id": manifest_id, "digest": d, "is_manifest": m}
                for d, m in references.items()
            ],
        )
    return manifest_id


def _set_tag(
    session: Session,
    connection: Connection,
    repository: str,
    repository_id: int,
    name: str,
    manifest_id: int,
    current: int | None,
    *,
    enforce: bool = True,
) -> None:
    """Point tag ``name`` at ``manifest_id``; ``current`` is where a plain read of the tag, in
    this transaction, found it pointing. With ``enforce`` (the policies), an immutable tag
    that points elsewhere is not moved (``DENIED``, the transaction undone)."""
    key = {"repository_id": repository_id, "name": name}
    # Read plainly first: on MySQL a locking read of a tag that does not exist locks the gap
    # where it would go, and two pushes of new tags into one gap then deadlock on their
    # INSERTs (0.5% of the PUTs of new tags over 4 connections did). A tag that exists is
    # then held (an exclusive lock on its row) until this transaction ends.
    if current is not None:
        current = connection.execute(_TAG_HELD, key).scalar()
    if current is None:
        row = {**key, "manifest_id": manifest_id, "updated_at": utcnow()}
        if db.insert_new(connection, _INSERT_TAG, row) is not None:
            read_cache.changed(session, repository)
            return
        # Inserted meanwhile by a concurrent push (or deleted between the two reads and
        # inserted again): the row exists now.
        current = connection.execute(_TAG_HELD, key).scalar_one()
    if current != manifest_id:
        if enforce:
            policies.refuse_immutable(repository, name, "move")
        read_cache.changed(session, repository)
        # The manifest the tag leaves may now be untagged.
        review_manifests(session, [current], "tag moved")
    connection.execute(
        _MOVE_TAG,
        {
            "key_repository": repository_id,
            "key_name": name,
            "manifest_id": manifest_id,
            "updated_at": utcnow(),
        },
    )


async def delete_reference(repository: str, reference: str) -> None:
    try:
        await db.write(_delete_reference, repository, reference)
    except policies.PolicyDenied as refusal:
        await _announce(refusal)
        raise


async def _announce(refusal: policies.PolicyDenied) -> None:
    """Record ``refusal``'s event; the client gets its 403 whether or not that worked."""
    try:
        await db.write(_denied, refusal)
    except Exception:
        log.warning("the deny event of %s was not recorded", refusal.repository, exc_info=True)


def _denied(refusal: policies.PolicyDenied) -> None:
    with db.transaction() as session:
        policies.denied(session, refusal)


def _delete_reference(repository: str, reference: str) -> None:
    """Delete by digest: the manifest and every tag pointing at it. Delete by tag: the tag."""
    check_reference(reference)
    with db.transaction() as session:
        repo = find_repository_id(session, repository)
        if repo is None:
            raise _unknown(repository, reference)
        if is_digest(reference):
            manifest = _find(session, repo, reference)
            if manifest is None:
                raise _unknown(repository, reference)
            # Held, and read as committed (a locking read): a tag a push just pointed here
            # is seen, and none can be added before the delete, so an immutable tag never
            # goes with its manifest.
            session.refresh(manifest, with_for_update=True)
            held = select(Tag.name).where(Tag.manifest_id == manifest.id).with_for_update()
            for name in session.scalars(held):
                policies.refuse_immutable(repository, name, "delete")
            if policies.configured().immutable_tags:
                # Nor a manifest an index refers to, when an immutable tag names the index:
                # the tag would keep its digest and lose a platform.
                indexes = (
                    select(Tag.name)
                    .join(ManifestReference, ManifestReference.manifest_id == Tag.manifest_id)
                    .where(
                        Tag.repository_id == repo,
                        ManifestReference.digest == reference,
                        ManifestReference.is_manifest,
                    )
                    .with_for_update()
                )
                for name in session.scalars(indexes):
                    policies.refuse_immutable(repository, name, "delete a manifest of")
            notifications.record(
                session, "delete", repository, digest=reference, media_type=manifest.media_type
            )
            delete_manifest(session, manifest, "manifest deleted", repository=repository)
        else:
            # A locking read: the manifest the tag points at when it goes, even when a push
            # moves it meanwhile (a plain read would name the one it left, and the one it then
            # pointed at would lose its tag with no review).
            tag = session.get(Tag, (repo, reference), with_for_update=True, populate_existing=True)
            if tag is None:
                raise _unknown(repository, reference)
            policies.refuse_immutable(repository, reference, "delete")
            session.delete(tag)
            read_cache.changed(session, repository)
            review_manifests(session, [tag.manifest_id], "tag deleted")
            notifications.record(session, "delete", repository, tag=reference)
