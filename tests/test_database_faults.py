"""When the database does not grant a lock in time (another process holds it longer than
``REGISTRY_DATABASE_LOCK_TIMEOUT_SECONDS``), the client is answered 503 ``UNAVAILABLE`` with
``Retry-After``, nothing of the request is recorded, and sending it again works: never a 500.
And when the database drops the registry's connections (a restart, an idle timeout), the reads
and writes after it are answered as if nothing happened."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import make_url, text

from shared.db import make_engine
from tests.conftest import registry_fixture
from tests.registry import OCI_CONFIG, OCI_MANIFEST, RegistryUnderTest, error_codes, sha256

registry = registry_fixture(
    "database-faults", ("sqlite", "mariadb"), database_lock_timeout_seconds="1"
)


@contextmanager
def locked(registry: RegistryUnderTest, repo: str) -> Iterator[None]:
    """Another transaction holds the lock the registry needs to write to ``repo``: SQLite's
    write lock (``BEGIN IMMEDIATE``), or on MariaDB the repository's row."""
    engine = make_engine(registry.settings.database_url)
    try:
        with engine.begin() as connection:
            if registry.backend == "mariadb":
                connection.execute(
                    text("SELECT id FROM repositories WHERE name = :name FOR UPDATE"),
                    {"name": repo},
                ).one()
            yield
    finally:
        engine.dispose()


def test_a_push_kept_waiting_for_a_lock_is_answered_503_and_sent_again(
    registry: RegistryUnderTest, repo: str
) -> None:
    registry.push_blob(repo, b"makes the repository")
    data = os.urandom(5000)
    with locked(registry, repo):
        answer = registry.http.post(
            f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data
        )
    assert answer.status_code == 503, answer.text
    assert error_codes(answer) == ["UNAVAILABLE"]
    assert answer.headers["Retry-After"] == "1"
    assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert registry.query("SELECT digest FROM blobs WHERE digest = :d", d=sha256(data)) == []

    again = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data
    )
    assert again.status_code == 201, again.text
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_a_manifest_put_kept_waiting_for_a_lock_is_answered_503_and_sent_again(
    registry: RegistryUnderTest, repo: str
) -> None:
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": registry.push_blob(repo, config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    with locked(registry, repo):
        answer = registry.push_manifest(repo, "v1", manifest)
    assert answer.status_code == 503, answer.text
    assert error_codes(answer) == ["UNAVAILABLE"]
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 404
    assert registry.http.get(f"/v2/{repo}/tags/list").json()["tags"] in (None, [])

    again = registry.push_manifest(repo, "v1", manifest)
    assert again.status_code == 201, again.text
    assert registry.http.get(f"/v2/{repo}/manifests/v1").content == manifest


@pytest.mark.parametrize("registry", ["mariadb"], indirect=True)
def test_writes_and_reads_go_on_after_the_database_dropped_every_connection(
    registry: RegistryUnderTest, repo: str
) -> None:
    body, digest = registry.push_image(repo, "v1")
    reads = (
        f"/v2/{repo}/manifests/v1",
        f"/v2/{repo}/manifests/{digest}",
        f"/v2/{repo}/tags/list",
        f"/v2/{repo}/blobs/{json.loads(body)['config']['digest']}",
    )
    registry.push_image(repo, "v0")
    for path in reads:  # the services' pools hold connections for writes and reads now
        assert registry.http.get(path).status_code == 200
    database = make_url(registry.settings.database_url).database
    engine = make_engine(registry.settings.database_url)
    try:
        with engine.connect() as connection:
            dropped = (
                connection.execute(
                    text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = :db AND id <> CONNECTION_ID()"
                    ),
                    {"db": database},
                )
                .scalars()
                .all()
            )
            for session in dropped:
                connection.execute(text(f"KILL {int(session)}"))
    finally:
        engine.dispose()
    assert dropped
    for service in ("blob", "manifest"):  # ready at once: no probe fails on a dropped connection
        ready = httpx.get(f"{registry.settings.service_url(service)}/readyz")
        assert ready.status_code == 200, (service, ready.text)
    registry.push_image(repo, "v2", [b"another layer"])  # each step answered 201
    for _ in range(3):
        for path in reads:
            answer = registry.http.get(path)
            assert answer.status_code == 200, (path, answer.text)
    assert registry.http.get(f"/v2/{repo}/manifests/v1").content == body
