"""Blobs of a repository (OCI Distribution Spec, "Pulling blobs" and "Deleting blobs")."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select

from shared import db, notifications
from shared.errors import ErrorCode, RegistryError
from shared.models import BLOB_PRESENT, Blob, Repository, RepositoryBlob
from shared.reference import Digest
from shared.repositories import find_repository_id
from shared.reviews import review_blobs


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int
    storage_key: str


def _unknown(repository: str, digest: Digest) -> RegistryError:
    return RegistryError(
        ErrorCode.BLOB_UNKNOWN, f"blob {digest} unknown to repository {repository!r}"
    )


# The blob if the repository holds it (and it is not being deleted): every blob HEAD and GET
# asks this, so it is one statement on a plain connection, no ORM session.
_LINKED = (
    select(Blob.digest, Blob.size, Blob.storage_key)
    .join(RepositoryBlob, RepositoryBlob.blob_digest == Blob.digest)
    .join(Repository, Repository.id == RepositoryBlob.repository_id)
    .where(
        Repository.name == bindparam("repository"),
        Blob.digest == bindparam("digest"),
        Blob.state == BLOB_PRESENT,
    )
)


async def stat(repository: str, digest: Digest) -> BlobInfo:
    """The blob ``digest`` as ``repository`` holds it, or BLOB_UNKNOWN."""
    return await db.read(_stat, repository, digest)


def _stat(repository: str, digest: Digest) -> BlobInfo:
    with db.reading() as connection:
        row = connection.execute(_LINKED, {"repository": repository, "digest": str(digest)}).first()
    if row is None:
        raise _unknown(repository, digest)
    return BlobInfo(row.digest, row.size, row.storage_key)


async def unlink(repository: str, digest: Digest) -> None:
    await db.write(_unlink, repository, digest)


def _unlink(repository: str, digest: Digest) -> None:
    """Delete a blob from a repository: the link goes; the bytes stay until garbage
    collection finds no repository and no manifest using them."""
    with db.transaction() as session:
        repo = find_repository_id(session, repository)
        if repo is None:
            raise _unknown(repository, digest)
        result = session.execute(
            delete(RepositoryBlob).where(
                RepositoryBlob.repository_id == repo, RepositoryBlob.blob_digest == str(digest)
            )
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise _unknown(repository, digest)
        review_blobs(session, [str(digest)], "unlinked")
        notifications.record(
            session,
            "delete",
            repository,
            digest=str(digest),
            media_type=notifications.BLOB_MEDIA_TYPE,
            kind="blobs",
        )
