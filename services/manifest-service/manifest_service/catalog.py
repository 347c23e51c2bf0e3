"""The repositories of the registry (``/v2/_catalog``)."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from shared import db
from shared.models import Repository

_FIRST_PAGE = select(Repository.name).order_by(Repository.name).limit(bindparam("limit"))
_NEXT_PAGE = _FIRST_PAGE.where(Repository.name > bindparam("last"))


async def list_repositories(n: int, last: str | None) -> tuple[list[str], bool]:
    """Up to ``n`` repository names after ``last`` in lexical order, and whether more follow."""
    return await db.read(_list_repositories, n, last)


def _list_repositories(n: int, last: str | None) -> tuple[list[str], bool]:
    with db.reading() as connection:
        if last:
            rows = connection.execute(_NEXT_PAGE, {"limit": n + 1, "last": last})
        else:
            rows = connection.execute(_FIRST_PAGE, {"limit": n + 1})
        names = list(rows.scalars())
    return names[:n], len(names) > n
