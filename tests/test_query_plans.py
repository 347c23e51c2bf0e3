"""Request costs stay flat as the registry grows: every statement the registry sends to MySQL
while it serves the hot requests (manifest PUT, GET and HEAD by tag and by digest, blob HEAD
and GET, uploads monolithic and chunked, a mount, a tag page, a catalog page, a referrers list,
deletes) and while it runs its idle housekeeping (garbage collection, reconcile, the GC dry
run) uses an index: MariaDB's own plan (EXPLAIN) for each, on a registry of 100,000 blobs
(``bench.scale``), shows no full scan and no sort of the rows of a table.

The statements are the ones really sent: MariaDB's general query log is on while the registry
starts and works (only its own connections are read), so a statement added to the code later
is checked without anyone listing it here."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
from sqlalchemy import make_url

from bench.scale import fill
from tests.conftest import running_registry
from tests.registry import RegistryUnderTest, mariadb_database, mariadb_server, sha256

BLOBS = 100_000
# A table read whole (or an index read whole) is fine while it is this small.
SMALL = 1_000
_LITERALS = re.compile(r"'(?:[^'\\]|\\.)*'|\b\d+(?:\.\d+)?\b")
_CHECKED = re.compile(
    r"^\s*(SELECT|UPDATE|DELETE|INSERT\s+INTO\s+\S+\s*(\([^)]*\))?\s*SELECT)\b", re.I
)
_UNTABLED = re.compile(r"^\s*SELECT\s+(1|@@|DATABASE\(\)|VERSION\(\)|GET_LOCK|RELEASE_LOCK)", re.I)


@contextmanager
def general_log() -> Iterator[dt.datetime]:
    """MariaDB's general query log on, into its table (emptied first and after: it is off by
    default, and only this test turns it on); yields when it began."""
    with mariadb_server() as admin, admin.cursor() as cursor:
        cursor.execute("SELECT @@global.log_output, @@global.general_log, NOW(6)")
        output, was_on, began = cursor.fetchone()
        cursor.execute("SET GLOBAL general_log = 0")
        cursor.execute("TRUNCATE TABLE mysql.general_log")
        cursor.execute("SET GLOBAL log_output = 'TABLE'")
        cursor.execute("SET GLOBAL general_log = 1")
    try:
        yield began
    finally:
        with mariadb_server() as admin, admin.cursor() as cursor:
            cursor.execute("SET GLOBAL general_log = 0")
            cursor.execute("TRUNCATE TABLE mysql.general_log")
            cursor.execute("SET GLOBAL log_output = %s", (output,))
            cursor.execute(f"SET GLOBAL general_log = {int(was_on)}")


def _statements(began: dt.datetime, database: str) -> dict[str, str]:
    """The distinct statements (literals taken out) the connections to ``database`` sent since
    ``began``, each with one real instance."""
    with mariadb_server() as admin, admin.cursor() as cursor:
        cursor.execute(
            "SELECT thread_id, command_type, CONVERT(argument USING utf8mb4) "
            "FROM mysql.general_log WHERE event_time >= %s ORDER BY event_time",
            (began,),
        )
        rows = cursor.fetchall()
    ours = {
        thread
        for thread, command, argument in rows
        if command in ("Connect", "Init DB") and re.search(rf"\b{re.escape(database)}\b", argument)
    }
    found: dict[str, str] = {}
    for thread, command, argument in rows:
        if thread not in ours or command != "Query":
            continue
        if not _CHECKED.match(argument) or _UNTABLED.match(argument):
            continue
        if "alembic_version" in argument or "information_schema" in argument.lower():
            continue
        found.setdefault(_LITERALS.sub("?", argument), argument)
    return found


def _plan(database_url: str, statement: str) -> list[dict[str, Any]]:
    url = make_url(database_url)
    connection = pymysql.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        database=url.database,
        charset="utf8mb4",
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {statement}")
            return list(cursor.fetchall())
    finally:
        connection.close()


def _problems(plan: list[dict[str, Any]]) -> list[str]:
    found = []
    for step in plan:
        table, kind, rows = step.get("table") or "", step.get("type"), int(step.get("rows") or 0)
        extra = step.get("Extra") or ""
        if table.startswith("<") or rows < SMALL:
            continue  # a derived table, or a few rows
        if kind in ("ALL", "index"):
            found.append(f"reads all of {table} ({kind}, ~{rows} rows)")
        if "filesort" in extra:
            found.append(f"sorts ~{rows} rows of {table}")
    return found


def _workload(registry: RegistryUnderTest, fixture: dict[str, str]) -> None:
    http = registry.http
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, */*"}
    repo = fixture["repository"]
    # Pushes: a new image into a fixture repository (monolithic uploads), a chunked upload.
    _, digest = registry.push_image(repo, "pushed", [os.urandom(3000)])
    location = http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    chunk = os.urandom(2000)
    patched = http.patch(
        location,
        content=chunk,
        headers={
            "Content-Range": f"0-{len(chunk) - 1}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert patched.status_code == 202
    done = http.put(patched.headers["Location"], params={"digest": sha256(chunk)})
    assert done.status_code == 201
    # Pulls: by tag and digest, fixture content and new.
    for reference in (fixture["tag"], fixture["digest"], "pushed", digest):
        assert http.get(f"/v2/{repo}/manifests/{reference}", headers=accept).status_code == 200
        assert http.head(f"/v2/{repo}/manifests/{reference}", headers=accept).status_code == 200
    assert http.head(f"/v2/{repo}/blobs/{sha256(chunk)}").status_code == 200
    assert http.get(f"/v2/{repo}/blobs/{sha256(chunk)}").content == chunk
    # Listings: a tag page, a catalog page, a referrers list.
    assert http.get(f"/v2/{repo}/tags/list", params={"n": 3, "last": "v0.1"}).status_code == 200
    assert http.get("/v2/_catalog", params={"n": 50, "last": "team-5/app-5"}).status_code == 200
    referrers = http.get(f"/v2/{fixture['subject_repository']}/referrers/{fixture['subject']}")
    assert referrers.status_code == 200 and referrers.json()["manifests"]
    # A mount into another fixture repository, then deletes.
    mounted = http.post(
        f"/v2/{fixture['other']}/blobs/uploads/",
        params={"mount": sha256(chunk), "from": repo},
    )
    assert mounted.status_code == 201
    assert http.delete(f"/v2/{repo}/manifests/pushed").status_code == 202
    assert http.delete(f"/v2/{repo}/manifests/{fixture['digest']}").status_code == 202
    # Idle housekeeping, as beat and operators run it.
    for command in (("gc",), ("gc", "--dry-run"), ("reconcile",)):
        result = registry.admin(*command)
        assert result.returncode == 0, result.stderr


def _fixture_names(database_url: str) -> dict[str, str]:
    url = make_url(database_url)
    connection = pymysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, database=url.database
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.name, t.name, m.digest FROM tags t "
                "JOIN repositories r ON r.id = t.repository_id "
                "JOIN manifests m ON m.id = t.manifest_id "
                "WHERE r.id = 3 AND m.media_type LIKE '%%manifest%%' LIMIT 1"
            )
            repository, tag, digest = cursor.fetchone()
            cursor.execute(
                "SELECT r.name, m.subject_digest FROM manifests m "
                "JOIN repositories r ON r.id = m.repository_id "
                "WHERE m.subject_digest IS NOT NULL LIMIT 1"
            )
            subject_repository, subject = cursor.fetchone()
            cursor.execute("SELECT name FROM repositories WHERE id = 4")
            (other,) = cursor.fetchone()
    finally:
        connection.close()
    return {
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "subject_repository": subject_repository,
        "subject": subject,
        "other": other,
    }


def test_every_statement_of_the_hot_paths_uses_an_index_at_100k_blobs(tmp_path: Path) -> None:
    with mariadb_database("registry_plans") as url:
        fill(url, BLOBS)
        names = _fixture_names(url)
        database = make_url(url).database
        assert database
        with general_log() as began:
            # Started once the log is on, so that every connection of the registry's is seen.
            with running_registry("mariadb", tmp_path, database_url=url) as registry:
                _workload(registry, names)
            statements = _statements(began, database)
        assert len(statements) > 20, statements  # the log saw the registry's work
        failures = {
            shape: problems
            for shape, statement in statements.items()
            if (problems := _problems(_plan(url, statement)))
        }
    assert not failures, "\n".join(f"{shape}\n  -> {'; '.join(p)}" for shape, p in failures.items())
