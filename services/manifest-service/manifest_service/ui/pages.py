"""What the web interface's pages show, read from the database: plain functions returning
plain data (the handlers in ``ui.routes`` render it).

Sizes are of what a repository's manifests reference: an image's config and layers (and the
manifest itself); an index's, the distinct blobs of its platforms' images; a repository's, the
distinct blobs all its manifests reference.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, and_, func, or_, select

from manifest_service.media_types import INDEXES
from shared import db
from shared.models import (
    BLOB_PRESENT,
    Blob,
    BlobReview,
    JanitorRun,
    Manifest,
    ManifestReference,
    ManifestReview,
    Repository,
    Tag,
    Upload,
)
from shared.repositories import find_repository_id, referenced_bytes, usage

PAGE = 50
# Names are read in batches this large while a page is filled with the ones a user may see,
# at most this many batches a page.
_NAME_BATCH = 500
_NAME_BATCHES = 10


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    tags: int
    size: int
    last_push: dt.datetime | None


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None  # where the next page starts, None on the last


def catalog(
    visible: Callable[[str], bool], search: str, after: str | None, n: int = PAGE
) -> Page[RepositorySummary]:
    """Repositories by name after ``after``, whose name contains ``search``, that ``visible``
    admits: up to ``n``, each with its tag count, size and last push. A page reads at most
    ``_NAME_BATCHES`` batches of names: a viewer who may see few of many repositories gets
    short pages that go on from where the reading stopped, never a scan of them all."""
    names: list[str] = []
    cursor = after
    scanned_to: str | None = None  # the last name read, when the reading stopped short
    with db.reading() as connection:
        for _ in range(_NAME_BATCHES):
            query = select(Repository.name).order_by(Repository.name).limit(_NAME_BATCH)
            if cursor:
                query = query.where(Repository.name > cursor)
            if search:
                query = query.where(Repository.name.contains(search, autoescape=True))
            batch = list(connection.execute(query).scalars())
            names.extend(name for name in batch if visible(name))
            if len(batch) < _NAME_BATCH:
                break
            cursor = batch[-1]
            if len(names) > n:
                break
        else:
            scanned_to = cursor
        more = len(names) > n
        names = names[:n]
        summaries = _summaries(connection, names)
    if more and names:
        return Page(summaries, names[-1])
    return Page(summaries, scanned_to)


def _summaries(connection: Connection, names: list[str]) -> list[RepositorySummary]:
    if not names:
        return []
    of_repository = Tag.repository_id == Repository.id
    count = select(func.count()).where(of_repository).correlate(Repository).scalar_subquery()
    last = select(func.max(Tag.updated_at)).where(of_repository).correlate(Repository)
    size = referenced_bytes(Manifest.repository_id == Repository.id).correlate(Repository)
    rows = connection.execute(
        select(Repository.name, count, last.scalar_subquery(), size.scalar_subquery())
        .where(Repository.name.in_(names))
        .order_by(Repository.name)
    )
    return [RepositorySummary(r[0], r[1] or 0, int(r[3] or 0), r[2]) for r in rows]


# --- a repository's tags ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None
    digest: str

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class TagRow:
    name: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    pushed: dt.datetime
    platforms: list[Platform]


@dataclass(frozen=True, slots=True)
class RepositoryPage:
    name: str
    tag_count: int
    size: int
    tags: Page[TagRow]


class NotFound(Exception):
    """The repository or manifest is not there (or not visible: the same answer)."""


def repository(
    name: str, sort: str, search: str, after: str | None, n: int = PAGE
) -> RepositoryPage:
    """The tags of repository ``name``, newest push first (``sort`` "time") or by name, whose
    name contains ``search``, after the cursor ``after`` (from the previous page)."""
    with db.reading() as connection:
        repository_id = find_repository_id(connection, name)
        if repository_id is None:
            raise NotFound(name)
        query = (
            select(
                Tag.name,
                Tag.updated_at,
                Manifest.id,
                Manifest.digest,
                Manifest.media_type,
                Manifest.artifact_type,
                Manifest.size,
            )
            .join(Manifest, Manifest.id == Tag.manifest_id)
            .where(Tag.repository_id == repository_id)
            .limit(n + 1)
        )
        if search:
            query = query.where(Tag.name.contains(search, autoescape=True))
        if sort == "name":
            query = query.order_by(Tag.name)
            if after:
                query = query.where(Tag.name > after)
        else:
            query = query.order_by(Tag.updated_at.desc(), Tag.name)
            position = _time_cursor(after)
            if position is not None:
                when, tag = position
                query = query.where(
                    or_(Tag.updated_at < when, and_(Tag.updated_at == when, Tag.name > tag))
                )
        rows = list(connection.execute(query))
        more = len(rows) > n
        rows = rows[:n]
        sizes, platforms = _image_facts(connection, repository_id, rows)
        tag_count, size = _repository_totals(connection, repository_id)
    tags = [
        TagRow(
            r.name,
            r.digest,
            r.media_type,
            r.artifact_type,
            sizes.get(r.id, r.size),
            r.updated_at,
            platforms.get(r.id, []),
        )
        for r in rows
    ]
    cursor = None
    if more and rows:
        last = rows[-1]
        cursor = last.name if sort == "name" else f"{last.updated_at.isoformat()}|{last.name}"
    return RepositoryPage(name, tag_count, size, Page(tags, cursor))


def _time_cursor(after: str | None) -> tuple[dt.datetime, str] | None:
    if not after or "|" not in after:
        return None
    when, _, tag = after.partition("|")
    try:
        return dt.datetime.fromisoformat(when), tag
    except ValueError:
        return None


def _repository_totals(connection: Connection, repository_id: int) -> tuple[int, int]:
    held = usage(connection, repository_id)
    return held.tags, held.storage


def _image_facts(
    connection: Connection, repository_id: int, rows: Iterable[Any]
) -> tuple[dict[int, int], dict[int, list[Platform]]]:
    """Each manifest's total size, and each index's platforms."""
    rows = list(rows)
    indexes = [r.id for r in rows if r.media_type in INDEXES]
    platforms: dict[int, list[Platform]] = {}
    children: dict[int, list[str]] = {}
    if indexes:
        for manifest_id, content in connection.execute(
            select(Manifest.id, Manifest.content).where(Manifest.id.in_(indexes))
        ):
            found = index_platforms(content)
            platforms[manifest_id] = found
            children[manifest_id] = [p.digest for p in found]
    child_ids: dict[str, int] = {}
    wanted = {d for digests in children.values() for d in digests}
    if wanted:
        known = connection.execute(
            select(Manifest.digest, Manifest.id).where(
                Manifest.repository_id == repository_id, Manifest.digest.in_(wanted)
            )
        )
        child_ids = {digest: manifest_id for digest, manifest_id in known}
    ids = {r.id for r in rows} | set(child_ids.values())
    blobs: dict[int, set[tuple[str, int]]] = {}
    if ids:
        for manifest_id, digest, size in connection.execute(
            select(ManifestReference.manifest_id, Blob.digest, Blob.size)
            .join(Blob, Blob.digest == ManifestReference.digest)
            .where(ManifestReference.manifest_id.in_(ids), ManifestReference.is_manifest.is_(False))
        ):
            blobs.setdefault(manifest_id, set()).add((digest, size))
    sizes: dict[int, int] = {}
    for r in rows:
        if r.id in children:
            distinct: set[tuple[str, int]] = set()
            for digest in children[r.id]:
                distinct |= blobs.get(child_ids.get(digest, -1), set())
            sizes[r.id] = r.size + sum(size for _, size in distinct)
        else:
            sizes[r.id] = r.size + sum(size for _, size in blobs.get(r.id, set()))
    return sizes, platforms


def index_platforms(content: bytes) -> list[Platform]:
    """The platforms an index names, in its order (entries without one are left out)."""
    try:
        document = json.loads(content)
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    found = []
    for entry in document.get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        found.append(
            Platform(
                str(platform.get("os", "")),
                str(platform.get("architecture", "")),
                platform.get("variant") if isinstance(platform.get("variant"), str) else None,
                str(entry.get("digest", "")),
            )
        )
    return found


def tag_target(name: str, tag: str) -> str | None:
    """The digest of the manifest tag ``tag`` of repository ``name`` points at, or None."""
    with db.reading() as connection:
        repository_id = find_repository_id(connection, name)
        if repository_id is None:
            return None
        found: str | None = connection.execute(
            select(Manifest.digest)
            .join(Tag, Tag.manifest_id == Manifest.id)
            .where(Tag.repository_id == repository_id, Tag.name == tag)
        ).scalar()
    return found


# --- one manifest ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: str
    artifact_type: str
    media_type: str
    size: int
    created: dt.datetime


@dataclass
class ManifestPage:
    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    pushed: dt.datetime
    document: dict[str, Any]
    tags: list[str]
    subject: str | None
    platforms: list[Platform] = field(default_factory=list)
    referrers: dict[str, list[Referrer]] = field(default_factory=dict)


def manifest(name: str, digest: str) -> ManifestPage:
    """Manifest ``digest`` of repository ``name``: its document, tags, platforms (an index)
    and referrers, grouped by artifact type."""
    with db.reading() as connection:
        repository_id = find_repository_id(connection, name)
        if repository_id is None:
            raise NotFound(name)
        row = connection.execute(
            select(
                Manifest.id,
                Manifest.media_type,
                Manifest.artifact_type,
                Manifest.subject_digest,
                Manifest.size,
                Manifest.content,
                Manifest.created_at,
            ).where(Manifest.repository_id == repository_id, Manifest.digest == digest)
        ).first()
        if row is None:
            raise NotFound(digest)
        tags = list(
            connection.execute(
                select(Tag.name).where(Tag.manifest_id == row.id).order_by(Tag.name)
            ).scalars()
        )
        referrers: dict[str, list[Referrer]] = {}
        for r in connection.execute(
            select(
                Manifest.digest,
                Manifest.artifact_type,
                Manifest.media_type,
                Manifest.size,
                Manifest.created_at,
            )
            .where(Manifest.repository_id == repository_id, Manifest.subject_digest == digest)
            .order_by(Manifest.created_at, Manifest.id)
        ):
            kind = r.artifact_type or r.media_type
            referrers.setdefault(kind, []).append(
                Referrer(r.digest, kind, r.media_type, r.size, r.created_at)
            )
    try:
        document = json.loads(row.content)
    except ValueError:
        document = {}
    return ManifestPage(
        name,
        digest,
        row.media_type,
        row.artifact_type,
        row.size,
        row.created_at,
        document if isinstance(document, dict) else {},
        tags,
        row.subject_digest,
        index_platforms(row.content) if row.media_type in INDEXES else [],
        referrers,
    )


# --- the operators' overview -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    job: str
    started: dt.datetime
    finished: dt.datetime
    examined: int
    deleted: int
    bytes_freed: int
    moved: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class Overview:
    repositories: int
    manifests: int
    tags: int
    blobs: int
    stored: int  # bytes of the blobs
    uploads: int
    uploading: int  # bytes received by uploads in progress
    oldest_upload: dt.datetime | None
    reviews: int  # blobs and manifests waiting for garbage collection to look at them
    runs: list[Run]


def overview(runs: int = 20) -> Overview:
    """The registry as a whole, and the janitors' latest sweeps."""
    with db.reading() as connection:

        def figure(column: Any, table: Any, *where: Any) -> Any:
            return select(column).select_from(table).where(*where).scalar_subquery()

        present = Blob.state == BLOB_PRESENT
        (
            repositories,
            manifests,
            tags,
            blobs,
            stored,
            uploads,
            uploading,
            oldest,
            blob_reviews,
            manifest_reviews,
        ) = connection.execute(  # one statement, one round trip
            select(
                figure(func.count(), Repository),
                figure(func.count(), Manifest),
                figure(func.count(), Tag),
                figure(func.count(), Blob, present),
                figure(func.coalesce(func.sum(Blob.size), 0), Blob, present),
                figure(func.count(), Upload),
                figure(func.coalesce(func.sum(Upload.size), 0), Upload),
                figure(func.min(Upload.started_at), Upload),
                figure(func.count(), BlobReview),
                figure(func.count(), ManifestReview),
            )
        ).one()
        latest = [
            Run(
                r.job,
                r.started_at,
                r.finished_at,
                r.examined,
                r.deleted,
                r.bytes_freed,
                r.moved,
                r.dry_run,
            )
            for r in connection.execute(
                select(JanitorRun).order_by(JanitorRun.finished_at.desc()).limit(runs)
            )
        ]
    return Overview(
        repositories,
        manifests,
        tags,
        blobs,
        int(stored),
        uploads,
        int(uploading),
        oldest,
        blob_reviews + manifest_reviews,
        latest,
    )
