"""What mirrors keep (``shared.mirrors``): its expiry, a namespace's purge, and what each
namespace holds.

A mirrored tag's ``updated_at`` is when it was last checked against the upstream, which a pull
after the mirror's ``tag_check_seconds`` does (and a pull served while the upstream fails);
a tag not checked for the mirror's ``expire_seconds`` has not been pulled for that long, give
or take one check interval. Expiry deletes such tags, then every manifest of the repository
older than the cutoff that no remaining tag reaches (directly, as a child of a tagged index, or
as a referrer of a kept manifest), through the same deletion as a client's DELETE: what they
referenced gets garbage-collection reviews, and the blobs go at the next collection after the
grace period, with its usual safety against concurrent pushes and pulls.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, select

from janitor.report import Progress, Report
from shared import db, mirrors, read_cache
from shared.models import Blob, Manifest, ManifestReference, Repository, RepositoryBlob, Tag, utcnow
from shared.repositories import delete_manifest
from shared.reviews import review_manifests


def _repositories(namespace: str) -> list[tuple[int, str]]:
    with db.reading() as connection:
        rows = connection.execute(
            select(Repository.id, Repository.name)
            .where(Repository.name.startswith(f"{namespace}/", autoescape=True))
            .order_by(Repository.name)
        ).all()
    return [(row.id, row.name) for row in rows]


def _expire_repository(repository_id: int, name: str, cutoff: dt.datetime) -> int:
    """Delete the repository's tags checked before ``cutoff`` and the manifests older than it
    that nothing kept reaches; how many manifests went."""
    with db.transaction() as session:
        # Locked: a pull that checks a tag meanwhile waits, and then finds it gone or kept.
        tags = session.execute(
            select(Tag.name, Tag.manifest_id, Tag.updated_at)
            .where(Tag.repository_id == repository_id)
            .with_for_update()
        ).all()
        stale = [tag for tag in tags if tag.updated_at < cutoff]
        if stale:
            session.execute(
                delete(Tag).where(
                    Tag.repository_id == repository_id, Tag.name.in_([t.name for t in stale])
                )
            )
            read_cache.changed(session, name)
            review_manifests(session, sorted({t.manifest_id for t in stale}), "mirror expired")
        # The repository's manifests as rows the deletion below takes (one query, locked).
        rows = session.scalars(
            select(Manifest).where(Manifest.repository_id == repository_id).with_for_update()
        ).all()
        children: dict[int, list[str]] = {}
        for parent, child in session.execute(
            select(ManifestReference.manifest_id, ManifestReference.digest)
            .join(Manifest, Manifest.id == ManifestReference.manifest_id)
            .where(Manifest.repository_id == repository_id, ManifestReference.is_manifest)
        ):
            children.setdefault(parent, []).append(child)
        # What a remaining tag names (a manifest tagged by a stale tag and a kept one stays),
        # then what that reaches: an index's children, the referrers of a kept manifest.
        tagged = {t.manifest_id for t in tags if t.updated_at >= cutoff}
        kept = {row.digest for row in rows if row.id in tagged}
        ids = {row.digest: row.id for row in rows}
        while True:
            reached = {
                child for digest in kept for child in children.get(ids.get(digest, -1), [])
            } | {row.digest for row in rows if row.subject_digest in kept}
            if reached <= kept:
                break
            kept |= reached
        expired = [row for row in rows if row.digest not in kept and row.created_at < cutoff]
        for manifest in expired:
            delete_manifest(session, manifest, "mirror expired", repository=name)
        return len(expired)


async def expire(
    now: dt.datetime | None = None,
    *,
    namespace: str | None = None,
    older_than: dt.timedelta | None = None,
    progress: Progress = None,
) -> Report:
    """Expire what each mirror (or ``namespace``'s alone) keeps and has not been pulled for
    its ``expire_seconds`` (or ``older_than``: ``timedelta(0)`` purges everything)."""
    report = Report("expire_mirrors")
    now = now or utcnow()
    for mirror in mirrors.configured().by_namespace.values():
        if namespace is not None and mirror.namespace != namespace:
            continue
        age = older_than
        if age is None:
            if not mirror.expire_seconds:
                continue  # kept for ever
            age = dt.timedelta(seconds=mirror.expire_seconds)
        for repository_id, name in await db.read(_repositories, mirror.namespace):
            report.tick(progress)
            report.deleted += await db.write(_expire_repository, repository_id, name, now - age)
    return report


@dataclass(frozen=True, slots=True)
class Held:
    namespace: str
    url: str
    repositories: int
    tags: int
    manifests: int
    blob_bytes: int  # of the blobs its repositories hold
    oldest_check: dt.datetime | None  # the tag checked longest ago
    newest_check: dt.datetime | None


def _held(namespace: str, url: str) -> Held:
    with db.reading() as connection:
        in_namespace = Repository.name.startswith(f"{namespace}/", autoescape=True)
        repositories = (
            connection.scalar(select(func.count()).select_from(Repository).where(in_namespace)) or 0
        )
        tags, oldest, newest = connection.execute(
            select(func.count(), func.min(Tag.updated_at), func.max(Tag.updated_at))
            .join(Repository, Repository.id == Tag.repository_id)
            .where(in_namespace)
        ).one()
        manifests = connection.scalar(
            select(func.count())
            .select_from(Manifest)
            .join(Repository, Repository.id == Manifest.repository_id)
            .where(in_namespace)
        )
        blob_bytes = connection.scalar(
            select(func.coalesce(func.sum(Blob.size), 0))
            .select_from(RepositoryBlob)
            .join(Blob, Blob.digest == RepositoryBlob.blob_digest)
            .join(Repository, Repository.id == RepositoryBlob.repository_id)
            .where(in_namespace)
        )
    return Held(
        namespace, url, repositories, tags, manifests or 0, int(blob_bytes or 0), oldest, newest
    )


def namespaces() -> set[str]:
    return set(mirrors.configured().by_namespace)


async def held() -> list[Held]:
    """What each mirror keeps now."""
    return [
        await db.read(_held, mirror.namespace, mirror.url)
        for mirror in mirrors.configured().by_namespace.values()
    ]
