"""Tags of a repository (OCI Distribution Spec, "Listing Tags")."""

from __future__ import annotations

from sqlalchemy import Select, bindparam, func, select

from shared import db, read_cache
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


def _joined(page: Select[str]) -> Select[int, int | None, str | None]:
    """A page's names in one row: how many, their total length, and joined by commas (a tag
    has none). The driver decodes one value instead of a row per tag, which on MySQL cost
    more than the query itself on a long list."""
    names = page.subquery()
    return select(
        func.count(), func.sum(func.length(names.c.name)), func.aggregate_strings(names.c.name, ",")
    ).select_from(names)


_FIRST_JOINED = _joined(_FIRST_PAGE)
_NEXT_JOINED = _joined(_NEXT_PAGE)


async def list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    """Up to ``n`` tags after ``last`` in lexical order, and whether more follow (from this
    process's memory when that page is known to be current: ``shared.read_cache``)."""
    return await read_cache.cached(
        repository,
        "tags",
        (n, last),
        lambda: db.read(_list_tags, repository, n, last),
        lambda page: sum(len(name) + 8 for name in page[0]),
    )


def _list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    params: dict[str, object] = {"name": repository, "limit": n + 1}
    query, rows = _FIRST_JOINED, _FIRST_PAGE
    if last:
        query, rows, params = _NEXT_JOINED, _NEXT_PAGE, {**params, "last": last}
    with db.reading() as connection:
        count, length, joined = connection.execute(query, params).one()
        # The aggregate keeps no order: sorted here, as the database orders them (names are
        # ASCII, the column's collation binary).
        names = sorted(joined.split(",")) if joined else []
        if count and len(joined or "") != (length or 0) + count - 1:
            # Cut short at MySQL's group_concat_max_len (a server whose packet limit is lower
            # than a page): row by row instead.
            names = list(connection.execute(rows, params).scalars())
        if not names and find_repository_id(connection, repository) is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"repository {repository!r} not known to registry"
            )
    return names[:n], len(names) > n
