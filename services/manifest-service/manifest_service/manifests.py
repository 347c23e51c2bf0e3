"""Manifests of a repository (OCI Distribution Spec, "Pulling manifests", "Pushing manifests",
"Deleting manifests")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from manifest_service import media_types
from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.events import Event, Target
from shared.models import Manifest, ManifestReference, Repository, Tag, utcnow
from shared.reference import TAG_RE, is_digest, parse_digest, validate_tag
from shared.repositories import ensure_repository, find_repository, linked_digests
from shared.reviews import review_blobs, review_manifests


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    subject: str | None
    event: Event


def _unknown(repository: str, reference: str) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference!r} unknown to repository {repository!r}"
    )


def _find(session: Session, repository: Repository, reference: str) -> Manifest | None:
    if is_digest(reference):
        return session.scalars(
            select(Manifest).where(
                Manifest.repository_id == repository.id, Manifest.digest == reference
            )
        ).first()
    return session.scalars(
        select(Manifest)
        .join(Tag, Tag.manifest_id == Manifest.id)
        .where(Tag.repository_id == repository.id, Tag.name == reference)
    ).first()


def check_reference(reference: str) -> None:
    if is_digest(reference):
        parse_digest(reference)
    else:
        validate_tag(reference)


def get(repository: str, reference: str) -> StoredManifest:
    if not is_digest(reference) and not TAG_RE.fullmatch(reference):
        # A name that cannot be a tag names no manifest: 404, as the conformance suite expects.
        raise _unknown(repository, reference)
    check_reference(reference)
    query = _BY_DIGEST if is_digest(reference) else _BY_TAG
    # The hottest read of a registry: one statement, no ORM objects.
    with db.read_connection() as connection:
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


def put(
    repository: str, reference: str, body: bytes, content_type: str | None, request_id: str | None
) -> PushedManifest:
    """Store a manifest under a tag or its digest. Every blob it references (and, for an
    index, every manifest) must already be in the repository; its subject need not be."""
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

    def store() -> None:
        with db.transaction() as session:
            repo = ensure_repository(session, repository)
            _check_references(session, repo, parsed)
            manifest = session.scalars(
                select(Manifest).where(Manifest.repository_id == repo.id, Manifest.digest == digest)
            ).first()
            if manifest is None:
                manifest = _insert(session, repo, digest, body, parsed)
            if tag is not None:
                _set_tag(session, repo, tag, manifest)

    db.retrying(store)
    event = Event(
        action="manifest:pushed",
        target=Target(
            repository=repository,
            digest=digest,
            tag=tag,
            size=len(body),
            media_type=parsed.media_type,
        ),
        request_id=request_id,
        source="manifest-service",
    )
    return PushedManifest(digest, parsed.subject.digest if parsed.subject else None, event)


def _check_references(
    session: Session, repo: Repository, parsed: media_types.ParsedManifest
) -> None:
    blob_digests = sorted({d.digest for d in parsed.blobs})
    missing = set(blob_digests) - linked_digests(session, repo.id, blob_digests)
    child_digests = sorted({d.digest for d in parsed.manifests})
    if child_digests:
        present = set(
            session.scalars(
                select(Manifest.digest)
                .where(Manifest.repository_id == repo.id, Manifest.digest.in_(child_digests))
                .with_for_update(read=True)
            )
        )
        missing |= set(child_digests) - present
    if missing:
        raise RegistryError(
            ErrorCode.MANIFEST_BLOB_UNKNOWN,
            f"repository {repo.name!r} does not hold {', '.join(sorted(missing)[:20])}",
        )


def _insert(
    session: Session, repo: Repository, digest: str, body: bytes, parsed: media_types.ParsedManifest
) -> Manifest:
    manifest = Manifest(
        repository_id=repo.id,
        digest=digest,
        media_type=parsed.media_type,
        artifact_type=parsed.artifact_type,
        subject_digest=parsed.subject.digest if parsed.subject else None,
        annotations=json.dumps(parsed.annotations) if parsed.annotations else None,
        size=len(body),
        content=body,
    )
    try:
        with session.begin_nested():
            session.add(manifest)
            session.flush()
            references = {d.digest: False for d in parsed.blobs}
            references.update({d.digest: True for d in parsed.manifests})
            session.add_all(
                ManifestReference(manifest_id=manifest.id, digest=d, is_manifest=m)
                for d, m in references.items()
            )
    except IntegrityError:
        # The same manifest pushed at the same moment by another client (a locking read sees
        # its row; a plain one reads this transaction's older snapshot).
        return session.scalars(
            select(Manifest)
            .where(Manifest.repository_id == repo.id, Manifest.digest == digest)
            .with_for_update(read=True)
        ).one()
    return manifest


def _set_tag(session: Session, repo: Repository, name: str, manifest: Manifest) -> None:
    tag = session.get(Tag, (repo.id, name), with_for_update=True)
    if tag is not None:
        _move_tag(session, tag, manifest)
        return
    try:
        with session.begin_nested():
            session.add(Tag(repository_id=repo.id, name=name, manifest_id=manifest.id))
    except IntegrityError:
        tag = session.get(Tag, (repo.id, name), with_for_update=True, populate_existing=True)
        assert tag is not None
        _move_tag(session, tag, manifest)


def _move_tag(session: Session, tag: Tag, manifest: Manifest) -> None:
    if tag.manifest_id != manifest.id:
        # The manifest the tag leaves may now be untagged.
        review_manifests(session, [tag.manifest_id], "tag moved")
        tag.manifest_id = manifest.id
    tag.updated_at = utcnow()


def delete_reference(repository: str, reference: str, request_id: str | None) -> Event:
    return db.retrying(lambda: _delete_reference_once(repository, reference, request_id))


def _delete_reference_once(repository: str, reference: str, request_id: str | None) -> Event:
    """Delete by digest: the manifest and every tag pointing at it. Delete by tag: the tag."""
    check_reference(reference)
    with db.transaction() as session:
        repo = find_repository(session, repository)
        if repo is None:
            raise _unknown(repository, reference)
        if is_digest(reference):
            manifest = _find(session, repo, reference)
            if manifest is None:
                raise _unknown(repository, reference)
            references = session.execute(
                select(ManifestReference.digest, ManifestReference.is_manifest).where(
                    ManifestReference.manifest_id == manifest.id
                )
            ).all()
            session.execute(delete(Tag).where(Tag.manifest_id == manifest.id))
            session.execute(
                delete(ManifestReference).where(ManifestReference.manifest_id == manifest.id)
            )
            session.delete(manifest)
            # What the manifest referenced may now be unreferenced.
            review_blobs(
                session, [d for d, is_manifest in references if not is_manifest], "manifest deleted"
            )
            children = [d for d, is_manifest in references if is_manifest]
            if children:
                review_manifests(
                    session,
                    session.scalars(
                        select(Manifest.id).where(
                            Manifest.repository_id == repo.id, Manifest.digest.in_(children)
                        )
                    ),
                    "index deleted",
                )
            action, target = "manifest:deleted", Target(repository=repository, digest=reference)
        else:
            tag = session.get(Tag, (repo.id, reference))
            if tag is None:
                raise _unknown(repository, reference)
            digest = session.scalars(
                select(Manifest.digest).where(Manifest.id == tag.manifest_id)
            ).one()
            session.delete(tag)
            review_manifests(session, [tag.manifest_id], "tag deleted")
            action, target = (
                "tag:deleted",
                Target(repository=repository, tag=reference, digest=digest),
            )
    return Event(action=action, target=target, request_id=request_id, source="manifest-service")  # type: ignore[arg-type]
