"""The repositories of the registry (``/v2/_catalog``)."""

from __future__ import annotations

from sqlalchemy import select

from shared import db
from shared.models import Repository


def list_repositories(n: int, last: str | None) -> tuple[list[str], bool]:
    with db.reading() as session:
        query = select(Repository.name).order_by(Repository.name).limit(n + 1)
        if last:
            query = query.where(Repository.name > last)
        names = list(session.scalars(query))
    return names[:n], len(names) > n
