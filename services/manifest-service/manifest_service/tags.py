"""Tags of a repository (OCI Distribution Spec, "Listing Tags")."""

from __future__ import annotations

from sqlalchemy import select

from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.models import Tag
from shared.repositories import find_repository


def list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    """Up to ``n`` tags after ``last`` in lexical order, and whether more follow."""
    with db.reading() as session:
        repo = find_repository(session, repository)
        if repo is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"repository {repository!r} not known to registry"
            )
        query = select(Tag.name).where(Tag.repository_id == repo.id).order_by(Tag.name).limit(n + 1)
        if last:
            query = query.where(Tag.name > last)
        names = list(session.scalars(query))
    return names[:n], len(names) > n
