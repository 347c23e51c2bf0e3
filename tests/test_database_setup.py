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


RSA_PASSWORD_CHECK = """
import sys
from sqlalchemy import text
from shared import db
import redis  # which imports the top of the cryptography package
engine = db.make_engine(sys.argv[1])
with engine.connect() as connection:
    assert connection.execute(text("SELECT 1")).scalar() == 1
assert "pymysql" in sys.modules, "not loaded"
assert "cryptography.hazmat.primitives" not in sys.modules, "loaded eagerly"
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pymysql import _auth
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
public = key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
salt = b"01234567890123456789"
sealed = _auth.sha2_rsa_encrypt(b"secret", salt, public)
oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
assert key.decrypt(sealed, oaep) == _auth._xor_password(b"secret\\0", salt)
print("ok")
"""


def test_pymysql_loads_cryptography_only_for_an_rsa_password_exchange(database_name: str) -> None:
    """PyMySQL is imported without the cryptography package (7.5 MiB in each process); MySQL
    8's RSA password exchange still encrypts the password, importing it then."""
    upgrade(f"{MARIADB}/{database_name}")
    done = subprocess.run(
        [sys.executable, "-c", RSA_PASSWORD_CHECK, f"{MARIADB}/{database_name}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "ok", done.stderr
