"""Manifests of mirrored namespaces (``shared.mirrors``), pulled through from their upstream.

By digest: served from this registry when it holds it, else fetched from the upstream once,
verified against the digest, stored, served. By tag: served from this registry when the tag
was checked against the upstream less than the mirror's ``tag_check_seconds`` ago (the tag's
``updated_at`` is when it was last checked: any replica's check counts); else the upstream is
asked with a HEAD (which Docker Hub does not count against its rate limit), and the manifest
fetched only when the tag now names another one (or none is stored). Concurrent requests for
one reference, on any replica, make one request of the upstream (``leases.take_or_wait``).
When the upstream fails (unreachable, 429, 5xx) the stored copy is served, and said so in
``Cache-Status``; with no stored copy the answer is 503 ``UNAVAILABLE``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update

from manifest_service import manifests
from manifest_service.manifests import StoredManifest
from shared import db, leases
from shared.errors import ErrorCode, RegistryError
from shared.mirrors import Mirror
from shared.models import Base, Manifest, Repository, Tag, utcnow
from shared.observability import MIRROR_REQUESTS, MIRROR_UPSTREAM_ERRORS
from shared.reference import is_digest, parse_digest
from shared.repositories import find_repository_id
from shared.settings import get_settings
from shared.upstream import (
    UpstreamNotFound,
    UpstreamRefused,
    UpstreamUnavailable,
    unavailable,
    upstream,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    manifest: StoredManifest
    cache_status: str  # the Cache-Status header (RFC 9211)


_HIT = "registry; hit"
_MISS = "registry; fwd=miss; stored"
_STALE = 'registry; hit; detail="upstream unavailable"'
_COLLAPSED = "registry; fwd=miss; collapsed"  # fetched by a concurrent request
# How often a request waiting for another's fetch looks for the manifest.
WAIT_SECONDS = 0.05


def _tagged(repository: str, tag: str) -> tuple[StoredManifest, dt.datetime] | None:
    with db.reading() as connection:
        row = connection.execute(_TAGGED, {"repository": repository, "tag": tag}).first()
    if row is None:
        return None
    return StoredManifest(row.digest, row.media_type, row.content), row.updated_at


_TAGGED = (
    select(Manifest.digest, Manifest.media_type, Manifest.content, Tag.updated_at)
    .join(Tag, Tag.manifest_id == Manifest.id)
    .join(Repository, Repository.id == Tag.repository_id)
    .where(Repository.name == bindparam("repository"), Tag.name == bindparam("tag"))
)


def _checked(repository: str, tag: str) -> None:
    """Record that the tag was found current at the upstream now."""
    with db.transaction() as session:
        repository_id = find_repository_id(session, repository)
        session.execute(
            update(Base.metadata.tables["tags"])
            .where(Tag.repository_id == repository_id, Tag.name == tag)
            .values(updated_at=utcnow())
        )


def _verified(content: bytes, digest: str) -> None:
    wanted = parse_digest(digest)
    actual = f"{wanted.algorithm}:{hashlib.new(wanted.algorithm, content).hexdigest()}"
    if actual != digest:
        raise UpstreamRefused(f"the upstream sent a manifest of digest {actual} for {digest}")


async def _fetch(mirror: Mirror, repository: str, reference: str) -> StoredManifest:
    """The manifest from the upstream, verified, then stored (under the tag when
    ``reference`` is one)."""
    name = mirror.upstream_name(repository)
    fetched = await upstream(mirror).manifest(name, reference)
    if is_digest(reference):
        _verified(fetched.content, reference)
        digest = reference
    else:
        digest = f"sha256:{hashlib.sha256(fetched.content).hexdigest()}"
        if fetched.digest is not None and fetched.digest != digest:
            _verified(fetched.content, fetched.digest)
            digest = fetched.digest
    try:
        await db.write(
            manifests._put,
            repository,
            reference,
            fetched.content,
            fetched.media_type,
            check_references=False,
        )
    except RegistryError as exc:
        detail = f"the upstream's manifest is not one this registry stores: {exc.detail}"
        raise UpstreamRefused(detail) from None
    return await manifests.get(repository, digest)


async def get(mirror: Mirror, repository: str, reference: str) -> Served:
    repository = mirror.stored_name(repository)
    try:
        return await _get(mirror, repository, reference)
    except UpstreamNotFound:
        MIRROR_REQUESTS.labels("manifest", "miss").inc()
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"manifest {reference!r} unknown to {mirror.upstream_name(repository)!r} at "
            f"{mirror.url}",
        ) from None
    except (UpstreamUnavailable, UpstreamRefused) as exc:
        raise unavailable(mirror, "manifest", f"manifest {reference!r}", exc) from None


async def _stored(repository: str, digest: str) -> StoredManifest | None:
    try:
        return await manifests.get(repository, digest)
    except RegistryError as exc:
        if exc.code is not ErrorCode.MANIFEST_UNKNOWN:
            raise
        return None


async def _get(mirror: Mirror, repository: str, reference: str) -> Served:
    # Concurrent requests for one reference, on any replica, ask the upstream once: the one
    # that takes the lease asks, the others wait for what it stores.
    lease = leases.name_for("mirror-manifest", repository, reference)
    owner = uuid.uuid4().hex
    ttl = dt.timedelta(seconds=get_settings().upload_lease_seconds)
    if is_digest(reference):
        parse_digest(reference)
        found, waited = await leases.take_or_wait(
            lease, owner, ttl, lambda: _stored(repository, reference), WAIT_SECONDS
        )
        if found is not None:
            MIRROR_REQUESTS.labels("manifest", "miss" if waited else "hit").inc()
            return Served(found, _COLLAPSED if waited else _HIT)
        try:
            stored = await _fetch(mirror, repository, reference)
        finally:
            leases.release_soon(lease, owner)
        MIRROR_REQUESTS.labels("manifest", "miss").inc()
        return Served(stored, _MISS)

    manifests.check_reference(reference)
    arrived = utcnow()
    local: tuple[StoredManifest, dt.datetime] | None = None

    async def current() -> StoredManifest | None:
        """The stored manifest when the tag was checked upstream within the interval, or by
        another request since this one arrived."""
        nonlocal local
        local = await db.read(_tagged, repository, reference)
        if local is None:
            return None
        stored, checked_at = local
        age = (utcnow() - checked_at).total_seconds()
        return stored if age < mirror.tag_check_seconds or checked_at >= arrived else None

    found, waited = await leases.take_or_wait(lease, owner, ttl, current, WAIT_SECONDS)
    if found is not None:
        MIRROR_REQUESTS.labels("manifest", "miss" if waited else "hit").inc()
        return Served(found, _COLLAPSED if waited else _HIT)
    try:
        return await _check(mirror, repository, reference, local)
    finally:
        leases.release_soon(lease, owner)


async def _check(
    mirror: Mirror,
    repository: str,
    reference: str,
    local: tuple[StoredManifest, dt.datetime] | None,
) -> Served:
    """The tag asked of the upstream (a HEAD when a copy is stored: the manifest is fetched
    only when the tag names another one now), or the stored copy when the upstream fails."""
    try:
        if local is None:
            stored = await _fetch(mirror, repository, reference)
        else:
            head = await upstream(mirror).manifest(
                mirror.upstream_name(repository), reference, method="HEAD"
            )
            if head.digest == local[0].digest:
                await db.write(_checked, repository, reference)
                MIRROR_REQUESTS.labels("manifest", "hit").inc()
                return Served(local[0], _HIT)
            stored = await _fetch(mirror, repository, reference)
    except (UpstreamUnavailable, UpstreamRefused) as exc:
        if local is None:
            raise
        MIRROR_REQUESTS.labels("manifest", "stale").inc()
        MIRROR_UPSTREAM_ERRORS.labels(mirror.namespace).inc()
        # Counted as checked: it does not expire while it is pulled, and the failing upstream
        # is asked again after the interval, not at every pull.
        with contextlib.suppress(Exception):
            await db.write(_checked, repository, reference)
        log.warning(
            "mirror %s: %s:%s served as cached: %s", mirror.namespace, repository, reference, exc
        )
        return Served(local[0], _STALE)
    MIRROR_REQUESTS.labels("manifest", "miss").inc()
    return Served(stored, _MISS)
