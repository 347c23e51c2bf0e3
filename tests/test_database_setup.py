"""First contact with the database: a MySQL database that does not exist is created when the
account may create it; an error that waiting cannot heal (a wrong password, no right to
create the database) stops the registry at once with one clear line, no traceback."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from shared.migrate import upgrade
from tests.registry import MARIADB, mariadb_server


@pytest.fixture
def database_name() -> Iterator[str]:
    name = f"registry_setup_{uuid.uuid4().hex[:8]}"
    yield name
    with mariadb_server() as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def limited_account() -> Iterator[tuple[str, str]]:
    """A MySQL account that may connect but create no database."""
    user, password = f"limited_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with mariadb_server() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cursor.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'")
    yield user, password
    with mariadb_server() as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'localhost'")


def migrate_in_a_process(url: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "shared.migrate"],
        env={"REGISTRY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def test_a_database_that_does_not_exist_is_created_with_the_schema(database_name: str) -> None:
    url = f"{MARIADB}/{database_name}?charset=utf8mb4"
    upgrade(url)
    with mariadb_server() as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT default_character_set_name, default_collation_name"
            " FROM information_schema.schemata WHERE schema_name = %s",
            (database_name,),
        )
        assert cursor.fetchone() == ("utf8mb4", "utf8mb4_bin")
        cursor.execute(f"SHOW TABLES FROM `{database_name}`")
        assert {"uploads", "blobs", "manifests", "tags"} <= {row[0] for row in cursor.fetchall()}


def test_an_account_that_may_not_create_the_database_fails_at_once_in_one_line(
    database_name: str, limited_account: tuple[str, str]
) -> None:
    user, password = limited_account
    with mariadb_server() as connection, connection.cursor() as cursor:
        # May read the database once it exists, so that the server tells it does not.
        cursor.execute(f"GRANT SELECT ON `{database_name}`.* TO '{user}'@'%'")
        cursor.execute(f"GRANT SELECT ON `{database_name}`.* TO '{user}'@'localhost'")
    url = make_url(f"{MARIADB}/{database_name}?charset=utf8mb4").set(
        username=user, password=password
    )
    done, took = migrate_in_a_process(url.render_as_string(hide_password=False))
    assert done.returncode == 2, done.stderr
    assert took < 20  # not the minute of waiting for a server that is starting
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert database_name in lines[0] and "could not be created" in lines[0]
    assert password not in done.stderr


def test_an_account_without_rights_on_the_database_fails_at_once_in_one_line(
    database_name: str, limited_account: tuple[str, str]
) -> None:
    user, password = limited_account
    url = make_url(f"{MARIADB}/{database_name}?charset=utf8mb4").set(
        username=user, password=password
    )
    done, took = migrate_in_a_process(url.render_as_string(hide_password=False))
    assert done.returncode == 2, done.stderr
    assert took < 20
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Access denied" in done.stderr and database_name in done.stderr


def test_a_wrong_password_fails_at_once_in_one_line(
    database_name: str, limited_account: tuple[str, str]
) -> None:
    user, _ = limited_account
    url = make_url(f"{MARIADB}/{database_name}?charset=utf8mb4").set(
        username=user, password="not-the-password"
    )
    done, took = migrate_in_a_process(url.render_as_string(hide_password=False))
    assert done.returncode == 2, done.stderr
    assert took < 20
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Access denied" in done.stderr and "not-the-password" not in done.stderr
