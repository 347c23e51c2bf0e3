"""Apply the database migrations: ``python -m shared.migrate`` (the prestart step)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text
from sqlalchemy.exc import OperationalError

from shared.db import make_engine
from shared.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = database_url
    return config


class DatabaseSetupError(Exception):
    """The database cannot be used and waiting will not change that (a wrong password, a
    database that does not exist and may not be created): said in one line, at once."""


# MySQL/MariaDB errors that no amount of waiting heals: access denied (1044, 1045, 1698),
# unknown database (1049, once creating it was tried).
_FINAL_MYSQL_ERRORS = {1044, 1045, 1049, 1698}
_UNKNOWN_DATABASE = 1049


def _mysql_error(exc: BaseException) -> tuple[int, str] | None:
    args: tuple[object, ...] = getattr(getattr(exc, "orig", None), "args", ())
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None


def create_mysql_database(database_url: str) -> None:
    """Create the URL's database (utf8mb4, byte-wise collation, as the schema expects) when the
    account may; else raise ``DatabaseSetupError`` saying what to do."""
    url = make_url(database_url)
    engine = make_engine(url.set(database="").render_as_string(hide_password=False))
    name = (url.database or "").replace("`", "``")
    try:
        with engine.connect() as connection:
            connection.execute(
                text(
                    f"CREATE DATABASE IF NOT EXISTS `{name}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
            )
    except OperationalError as exc:
        error = _mysql_error(exc)
        why = error[1] if error else str(exc.orig)
        raise DatabaseSetupError(
            f"database {url.database!r} does not exist on {url.host} and could not be created "
            f"({why}); create it (CREATE DATABASE `{url.database}` CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_bin) or grant the account CREATE"
        ) from None
    finally:
        engine.dispose()


def wait_for_database(database_url: str, timeout: float = 60) -> None:
    """Wait until the database answers (a server that is still starting). On MySQL, a
    database that does not exist is created; an error that waiting cannot heal is raised at
    once as ``DatabaseSetupError``."""
    deadline = time.monotonic() + timeout
    created = False
    while True:
        engine = make_engine(database_url)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            error = _mysql_error(exc)
            if error is not None and error[0] == _UNKNOWN_DATABASE and not created:
                create_mysql_database(database_url)
                created = True
                continue
            url = make_url(database_url)
            if error is not None and error[0] in _FINAL_MYSQL_ERRORS:
                raise DatabaseSetupError(
                    f"cannot use database {url.database!r} on {url.host} as "
                    f"{url.username!r}: {error[1]}"
                ) from None
            if url.get_backend_name() == "sqlite" or time.monotonic() > deadline:
                raise DatabaseSetupError(
                    f"database {url.render_as_string(hide_password=True)} does not answer: "
                    f"{exc.orig}"
                ) from None
            time.sleep(1)
        finally:
            engine.dispose()


def upgrade(database_url: str | None = None) -> None:
    url = database_url or get_settings().database_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    wait_for_database(url)
    command.upgrade(alembic_config(url), "head")


def main() -> int:
    try:
        upgrade()
    except DatabaseSetupError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
