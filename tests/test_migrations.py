"""The Alembic migrations build exactly the schema the models describe, on SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command

from shared.migrate import alembic_config, upgrade
from tests.registry import mariadb_database


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'check.db'}"
        return
    with mariadb_database("registry_migrations") as url:
        yield url


def test_migrations_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    # Raises if autogenerate would find any difference between the models and the database.
    command.check(alembic_config(database_url))


def test_migrations_are_idempotent_and_reversible(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    config = alembic_config(database_url)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
