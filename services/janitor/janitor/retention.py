"""Retention (the policies file's ``retention`` rules, ``shared.policies_file.Retention``): the
tags and untagged manifests the rules say go, removed by the janitor on its schedule or by
``registry-admin retention``; what they referenced then feeds the online garbage collection.

Each repository is done in a transaction of its own, its tags removed 500 per statement. A
tag goes only as it was read (the same manifest, the same push time, compared on the rows
held): one pushed again meanwhile stays. An untagged manifest goes only when nothing refers to
it as the garbage collection judges it (a tag, an index, a living subject; those rows held), so
an index's platforms and the referrers of a manifest that stays stay. A dry run does exactly
the same work and rolls it back, so it predicts the real run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session, aliased

from janitor.gc import referenced
from janitor.report import Progress, Report
from shared import db, notifications, policies, read_cache
from shared.models import Manifest, ManifestReference, Repository, Tag, utcnow
from shared.repositories import delete_manifest
from shared.reviews import review_manifests

log = logging.getLogger(__name__)


BATCH = 500  # tags removed per statement


class _DryRun(Exception):
    """Raised at the end of a dry run's transaction: what it did is rolled back."""


async def apply(
    *, dry_run: bool = False, now: dt.datetime | None = None, progress: Progress = None
) -> Report:
    report = Report("retention", dry_run=dry_run)
    found = policies.configured()
    if not found.retention:
        return report
    repositories = await asyncio.to_thread(_repositories)
    for repository_id, name in repositories:
        rule = found.retention_of(name)
        if rule is None:
            continue
        await asyncio.to_thread(
            db.retrying, _one, found, rule, repository_id, name, now or utcnow(), report, progress
        )
    return report


def _repositories() -> list[tuple[int, str]]:
    with db.reading() as connection:
        rows = connection.execute(select(Repository.id, Repository.name).order_by(Repository.name))
        return [(row.id, row.name) for row in rows]


def _one(
    found: policies.Policies,
    rule: policies.Retention,
    repository_id: int,
    name: str,
    now: dt.datetime,
    report: Report,
    progress: Progress,
) -> None:
    gone: list[str] = []
    try:
        with db.transaction() as session:
            gone += _tags(session, found, rule, repository_id, name, now, report, progress)
            if rule.untagged_older_than is not None:
                cutoff = now - rule.untagged_older_than
                gone += _untagged(session, repository_id, name, cutoff, report, progress)
            if report.dry_run:
                raise _DryRun
    except _DryRun:
        pass
    report.deleted += len(gone)
    if report.dry_run:
        report.would_delete += gone
    elif gone:
        log.info("retention removed %d from %s: %s", len(gone), name, ", ".join(gone[:20]))


def _tags(
    session: Session,
    found: policies.Policies,
    rule: policies.Retention,
    repository_id: int,
    name: str,
    now: dt.datetime,
    report: Report,
    progress: Progress,
) -> list[str]:
    if rule.keep_last is None and rule.older_than is None:
        return []
    rows = session.execute(
        select(Tag.name, Tag.manifest_id, Tag.updated_at, Tag.pulled_at)
        .where(Tag.repository_id == repository_id)
        .order_by(Tag.updated_at.desc(), Tag.name)
    ).all()
    doomed: dict[str, tuple[int, dt.datetime]] = {}
    for index, row in enumerate(rows):
        report.tick(progress)
        if _goes(found, rule, name, index, row, now):
            doomed[row.name] = (row.manifest_id, row.updated_at)
    names = list(doomed)
    gone: list[str] = []
    for start in range(0, len(names), BATCH):
        held = session.execute(
            select(Tag.name, Tag.manifest_id, Tag.updated_at)
            .where(Tag.repository_id == repository_id, Tag.name.in_(names[start : start + BATCH]))
            .with_for_update()
        ).all()
        # Only a tag as it was read: one pushed or moved since (another manifest, another
        # push time, whatever the clocks of the hosts that wrote them) stays.
        unchanged = [h for h in held if doomed[h.name] == (h.manifest_id, h.updated_at)]
        if not unchanged:
            continue
        session.execute(
            delete(Tag).where(
                Tag.repository_id == repository_id, Tag.name.in_([h.name for h in unchanged])
            )
        )
        review_manifests(session, list({h.manifest_id for h in unchanged}), "retention")
        for h in unchanged:
            notifications.record(session, "delete", name, tag=h.name)
            gone.append(f"{name}:{h.name}")
    if gone:
        read_cache.changed(session, name)
    return gone


def _goes(
    found: policies.Policies,
    rule: policies.Retention,
    repository: str,
    index: int,
    row: Any,
    now: dt.datetime,
) -> bool:
    """Whether the tag ``row``, the ``index``-th most recently pushed, goes."""
    if rule.keep_last is not None and index < rule.keep_last:
        return False
    if rule.keeps(row.name) or found.immutable(repository, row.name) is not None:
        return False
    if rule.older_than is not None and row.updated_at > now - rule.older_than:
        return False
    within = rule.unless_pulled_within
    return not (within is not None and row.pulled_at is not None and row.pulled_at > now - within)


def _untagged(
    session: Session,
    repository_id: int,
    name: str,
    cutoff: dt.datetime,
    report: Report,
    progress: Progress,
) -> list[str]:
    """The manifests created before ``cutoff`` that nothing refers to, deleted in batches
    until none is left (an index's platforms and a subject's referrers, unreferenced once it
    goes, go in a later batch). Candidates are picked in SQL and only they are held; each is
    judged again, held, as the garbage collection judges it."""
    parent, subject = aliased(Manifest), aliased(Manifest)
    candidates = (
        select(Manifest.id)
        .where(
            Manifest.repository_id == repository_id,
            Manifest.created_at < cutoff,
            ~exists().where(Tag.manifest_id == Manifest.id),
            ~exists().where(
                ManifestReference.digest == Manifest.digest,
                ManifestReference.is_manifest,
                parent.id == ManifestReference.manifest_id,
                parent.repository_id == repository_id,
            ),
            ~exists().where(
                subject.repository_id == repository_id, subject.digest == Manifest.subject_digest
            ),
        )
        .order_by(Manifest.id)
        .limit(BATCH)
    )
    gone: list[str] = []
    while True:
        ids = list(session.scalars(candidates))
        if not ids:
            return gone
        deleted = 0
        held = session.scalars(select(Manifest).where(Manifest.id.in_(ids)).with_for_update())
        manifests = held.all()
        still_referenced = referenced(session, repository_id, manifests)
        for manifest in manifests:
            report.tick(progress)
            if manifest.id in still_referenced:
                continue
            gone.append(f"{name}@{manifest.digest}")
            notifications.record(
                session, "delete", name, digest=manifest.digest, media_type=manifest.media_type
            )
            delete_manifest(session, manifest, "retention", repository=name)
            deleted += 1
        session.flush()
        if not deleted:
            return gone
