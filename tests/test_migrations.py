"""The Alembic migrations build exactly the schema the models describe, on SQLite and MariaDB."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymysql
import pytest
from alembic import command

from shared.migrate import alembic_config, upgrade


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'check.db'}"
        return
    name = f"registry_migrations_{uuid.uuid4().hex[:8]}"
    connection = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE `{name}`")
        connection.close()


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
