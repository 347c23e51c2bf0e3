"""Tags of a repository (OCI Distribution Spec, "Listing Tags")."""

from __future__ import annotations

from sqlalchemy import bindparam, select

from shared import db
from shared.errors import ErrorCode, RegistryError
from shared.models import Repository, Tag

_REPOSITORY = select(Repository.id).where(Repository.name == bindparam("name"))
_FIRST_PAGE = (
    select(Tag.name)
    .where(Tag.repository_id == bindparam("repository_id"))
    .order_by(Tag.name)
    .limit(bindparam("limit"))
)
_NEXT_PAGE = _FIRST_PAGE.where(Tag.name > bindparam("last"))


def list_tags(repository: str, n: int, last: str | None) -> tuple[list[str], bool]:
    """Up to ``n`` tags after ``last`` in lexical order, and whether more follow."""
    with db.read_connection() as connection:
        repository_id = connection.execute(_REPOSITORY, {"name": repository}).scalar()
        if repository_id is None:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"repository {repository!r} not known to registry"
            )
        params: dict[str, object] = {"repository_id": repository_id, "limit": n + 1}
        query = _FIRST_PAGE
        if last:
            query, params = _NEXT_PAGE, {**params, "last": last}
        names = list(connection.execute(query, params).scalars())
    return names[:n], len(names) > n
