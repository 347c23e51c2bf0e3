"""Tags of a repository (OCI Distribution Spec, "Listing Tags")."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.models import Repository, Tag
from shared.repositories import find_repository_id

_FIRST_PAGE = (
    select(Tag.name)
    .join(Repository, Repository.id == Tag.repository_id)
    .where(Repository.name == bindparam("name"))
    .order_by(Tag.name)
    .limit(bindparam("limit"))
)
_NEXT_PAGE = _FIRST_PAGE.where(Tag.name > bindparam("last"))


async def list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    """Up to ``n`` tags after ``last`` in lexical order, and whether more follow."""
    return await db.read(_list_tags, repository, n, last)


def _list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    params: dict[str, object] = {"name": repository, "limit": n + 1}
    query = _FIRST_PAGE
    if last:
        query, params = _NEXT_PAGE, {**params, "last": last}
    with db.reading() as connection:
        result = connection.execute(query, params)
        # The names straight from the DBAPI cursor: a Row per tag would cost more than the
        # query itself on a long list (bench/README.md, "Special paths").
        names: list[str] = [row[0] for row in result.cursor.fetchall()]
        result.close()
        if not names and find_repository_id(connection, repository) is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"repository {repository!r} not known to registry"
            )
    return names[:n], len(names) > n
