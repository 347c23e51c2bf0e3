"""When tags were last pulled (``tags.pulled_at``), for retention's ``unless_pulled_within``.

Recorded cheaply: only for repositories a retention rule with ``unless_pulled_within`` covers,
and at most once per tag per :data:`INTERVAL` by each process (an UPDATE that also changes
nothing when another replica recorded the pull lately). A pull is a GET of a manifest by tag.
"""

from __future__ import annotations

import datetime as dt
import logging

from cachetools import TTLCache
from sqlalchemy import bindparam, or_, select, update

from shared import db, policies
from shared.models import Repository, Tag, utcnow

log = logging.getLogger(__name__)

INTERVAL = dt.timedelta(hours=1)
_recorded: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=100_000, ttl=INTERVAL.total_seconds())

_RECORD = (
    update(Tag)
    .where(
        Tag.repository_id
        == select(Repository.id)
        .where(Repository.name == bindparam("repository"))
        .scalar_subquery(),
        Tag.name == bindparam("tag"),
        or_(Tag.pulled_at.is_(None), Tag.pulled_at < bindparam("due")),
    )
    .values(pulled_at=bindparam("now"))
)


def wanted(repository: str) -> bool:
    rule = policies.configured().retention_of(repository)
    return rule is not None and rule.unless_pulled_within is not None


async def pulled(repository: str, tag: str) -> None:
    """Record that ``tag`` of ``repository`` was pulled (when retention wants to know and
    this process has not recorded it within the interval)."""
    key = (repository, tag)
    if key in _recorded:
        return
    try:
        if not wanted(repository):
            return
        _recorded[key] = True
        await db.write(_record, repository, tag, utcnow())
    except Exception:  # a pull never fails for its record; the next interval tries again
        _recorded.pop(key, None)
        log.warning("could not record a pull of %s:%s", repository, tag, exc_info=True)


def _record(repository: str, tag: str, now: dt.datetime) -> None:
    with db.transaction() as session:
        session.connection().execute(
            _RECORD, {"repository": repository, "tag": tag, "now": now, "due": now - INTERVAL}
        )
