"""Faults the janitor must survive, with real processes: the Celery worker killed (SIGKILL) in
the middle of promotes, a garbage collection killed in the middle of its sweep, the crash
states such kills leave (made here directly in the database and in storage), and the broker
down while clients push. After the work is picked up again (a restarted worker, a new sweep,
``registry-admin reconcile``) every blob must be readable with its bytes and storage must hold
exactly what the database says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from shared.db import make_engine
from shared.reference import parse_digest
from shared.storage import keys
from tests.conftest import registry_fixture, running_registry
from tests.registry import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    RedisServer,
    RegistryUnderTest,
    error_codes,
    eventually,
    sha256,
)

# Each test pushes hundreds of blobs, or starts a registry of its own.
pytestmark = pytest.mark.timeout(240)

UNREFERENCED_BLOBS = (
    "SELECT COUNT(*) FROM blobs b"
    " WHERE NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.digest = b.digest)"
)
BLOBS_AT_UPLOAD_KEYS = "SELECT COUNT(*) FROM blobs WHERE storage_key LIKE 'uploads/%'"
DELETING_BLOBS = "SELECT COUNT(*) FROM blobs WHERE state = 'deleting'"


# --- helpers -------------------------------------------------------------------------------


class Database:
    """One engine on the registry's database for the whole test: quick enough to poll while
    the janitor works, and able to write (``RegistryUnderTest.query`` never commits)."""

    def __init__(self, registry: RegistryUnderTest) -> None:
        self.engine: Engine = make_engine(registry.settings.database_url)
        # On SQLite a read-only transaction begins with BEGIN, not BEGIN IMMEDIATE: it neither
        # waits for the janitor's writes nor holds them up.
        self.reader: Engine = self.engine.execution_options(readonly=True)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.reader.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def execute(self, sql: str, **params: Any) -> int:
        with self.engine.begin() as connection:
            return connection.execute(text(sql), params).rowcount

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def database(registry: RegistryUnderTest) -> Iterator[Database]:
    db = Database(registry)
    yield db
    db.close()


def final_key(digest: str) -> str:
    return keys.blob_key(parse_digest(digest))


def key_of(database: Database, digest: str) -> str | None:
    key: str | None = database.scalar("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
    return key


def push_blobs(registry: RegistryUnderTest, repo: str, contents: list[bytes], clients: int) -> None:
    """Push every blob in one request each (POST with ``?digest=``), from ``clients`` threads."""

    def push(part: list[bytes]) -> None:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            for data in part:
                response = client.post(
                    f"/v2/{repo}/blobs/uploads/",
                    params={"digest": sha256(data)},
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                )
                assert response.status_code == 201, response.text

    with ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(push, contents[i::clients]) for i in range(clients)]:
            done.result()


def expire_claims(database: Database) -> int:
    """A killed task's claims on blobs last until they expire (``CLAIM_SECONDS``,
    janitor/claims.py); until then no other task moves or deletes those blobs. Expire them,
    as the time would. Returns how many there were."""
    return database.execute(
        "UPDATE blobs SET claimed_until = :past WHERE claimed_by IS NOT NULL",
        past="2000-01-01 00:00:00",
    )


def admin_ok(registry: RegistryUnderTest, *args: str) -> str:
    result = registry.admin(*args)
    assert result.returncode == 0, f"registry-admin {' '.join(args)}: {result.stderr[-2000:]}"
    return result.stdout


def log_tail(registry: RegistryUnderTest, process: str, lines: int = 12) -> str:
    return "\n".join(registry.log(process).splitlines()[-lines:])


def settled(registry: RegistryUnderTest) -> None:
    try:
        eventually(registry.storage_matches_database, timeout=30, what="storage = database")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {registry.storage_difference()}") from None


def assert_pulls(registry: RegistryUnderTest, repo: str, blobs: dict[str, bytes]) -> None:
    for digest, data in blobs.items():
        response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 200, f"{digest}: {response.status_code} {response.text}"
        assert response.content == data, f"{digest}: wrong bytes"


def push_image_parts(
    registry: RegistryUnderTest, repo: str, layers: list[bytes]
) -> tuple[bytes, dict[str, bytes]]:
    """Push an image by tag ``v1``; returns the manifest's bytes and its blobs by digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    blobs = {registry.push_blob(repo, data): data for data in [config, *layers]}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(data), "size": len(data)} for data in layers
        ],
    }
    body = json.dumps(manifest).encode()
    response = registry.push_manifest(repo, "v1", body)
    assert response.status_code == 201, response.text
    return body, blobs


def assert_image_pulls(
    registry: RegistryUnderTest, repo: str, body: bytes, blobs: dict[str, bytes]
) -> None:
    for reference in ("v1", sha256(body)):
        response = registry.http.get(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )
        assert response.status_code == 200, response.text
        assert response.content == body
    assert_pulls(registry, repo, blobs)


# --- the registry these tests share ----------------------------------------------------------


# A registry of this module's own: its sweeps touch no other test's data. Reconcile moves blobs
# still at their upload key at once; a blob nothing references may be collected one second
# after it was pushed.
registry = registry_fixture(
    "janitor-faults", isolated=True, promote_delay_seconds="0", gc_grace_seconds="1"
)


@pytest.fixture(autouse=True)
def janitor_running(request: pytest.FixtureRequest) -> None:
    """Each test on the shared registry starts with a janitor worker: one killed (or crashed)
    in an earlier test is started again."""
    if "registry" in request.fixturenames:
        registry: RegistryUnderTest = request.getfixturevalue("registry")
        if registry.process("janitor").poll() is not None:
            registry.restart("janitor")


# --- crash states, made directly ------------------------------------------------------------


def test_a_blob_moved_before_its_row_was_updated_is_served_and_reconciled(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    data = os.urandom(5000)
    digest = sha256(data)
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    upload_key = keys.upload_key(start.headers["Docker-Upload-UUID"])
    done = registry.http.put(start.headers["Location"], params={"digest": digest}, content=data)
    assert done.status_code == 201, done.text
    eventually(lambda: key_of(database, digest) == final_key(digest), what="the blob promoted")

    # A promote that died between moving the object and updating the row.
    assert database.execute(
        "UPDATE blobs SET storage_key = :key WHERE digest = :d", key=upload_key, d=digest
    )
    stored = registry.stored_files()
    assert upload_key not in stored and final_key(digest) in stored

    head = registry.http.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    assert_pulls(registry, repo, {digest: data})
    part = registry.http.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]

    admin_ok(registry, "reconcile")  # the default grace: what it fixes is no orphan
    assert key_of(database, digest) == final_key(digest)
    assert_pulls(registry, repo, {digest: data})
    settled(registry)


def test_a_blob_left_deleting_is_absent_to_readers_and_reconcile_deletes_it(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    data = os.urandom(3000)
    digest = registry.push_blob(repo, data)
    eventually(lambda: key_of(database, digest) == final_key(digest), what="the blob promoted")

    # A sweep that died after marking the blob and before deleting its object and row.
    assert database.execute("UPDATE blobs SET state = 'deleting' WHERE digest = :d", d=digest)

    assert registry.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404
    pull = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert pull.status_code == 404 and error_codes(pull) == ["BLOB_UNKNOWN"]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": len(data)},
        "layers": [],
    }
    refused = registry.push_manifest(repo, "v1", manifest)
    assert refused.status_code == 400 and error_codes(refused) == ["MANIFEST_BLOB_UNKNOWN"]
    mount = registry.http.post(
        f"/v2/{repo}/other/blobs/uploads/", params={"mount": digest, "from": repo}
    )
    assert mount.status_code == 202  # not mountable: an ordinary upload starts instead
    assert registry.http.delete(mount.headers["Location"]).status_code == 204

    admin_ok(registry, "reconcile")
    assert database.scalar("SELECT COUNT(*) FROM blobs WHERE digest = :d", d=digest) == 0
    assert (
        database.scalar("SELECT COUNT(*) FROM repository_blobs WHERE blob_digest = :d", d=digest)
        == 0
    )
    assert final_key(digest) not in registry.stored_files()
    settled(registry)


def test_an_upload_of_the_same_content_revives_a_blob_left_deleting(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    data = os.urandom(3000)
    digest = registry.push_blob(repo, data)
    eventually(lambda: key_of(database, digest) == final_key(digest), what="the blob promoted")
    assert database.execute("UPDATE blobs SET state = 'deleting' WHERE digest = :d", d=digest)
    assert registry.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 404

    assert registry.push_blob(repo, data) == digest
    assert registry.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 200
    admin_ok(registry, "reconcile")
    assert database.scalar("SELECT state FROM blobs WHERE digest = :d", d=digest) == "present"
    eventually(lambda: key_of(database, digest) == final_key(digest), what="the blob promoted")
    assert_pulls(registry, repo, {digest: data})
    settled(registry)


def test_orphaned_objects_older_than_the_grace_are_deleted_and_younger_ones_kept(
    registry: RegistryUnderTest, repo: str
) -> None:
    def put_object(key: str, data: bytes, age: float = 0) -> Path:
        path = registry.storage_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if age:
            os.utime(path, (time.time() - age, time.time() - age))
        return path

    two_hours = 2 * 3600.0
    old_blob, young_blob = os.urandom(1000), os.urandom(1000)
    old_orphans = [
        put_object(final_key(sha256(old_blob)), old_blob, age=two_hours),
        put_object(keys.upload_key(str(uuid.uuid4())), os.urandom(1000), age=two_hours),
    ]
    young_orphans = [
        put_object(final_key(sha256(young_blob)), young_blob),
        put_object(keys.upload_key(str(uuid.uuid4())), os.urandom(1000)),
    ]
    # An upload in progress, idle for as long: its session still owns its object.
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    in_progress = os.urandom(2000)
    patched = registry.http.patch(start.headers["Location"], content=in_progress)
    assert patched.status_code == 202
    in_progress_path = registry.storage_root / keys.upload_key(start.headers["Docker-Upload-UUID"])
    os.utime(in_progress_path, (time.time() - two_hours, time.time() - two_hours))

    admin_ok(registry, "reconcile", "--grace", "1h")
    assert [path for path in old_orphans if path.exists()] == []
    assert all(path.exists() for path in young_orphans)
    assert in_progress_path.exists()
    # Neither orphan blob object became readable.
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(young_blob)}").status_code == 404

    done = registry.http.put(start.headers["Location"], params={"digest": sha256(in_progress)})
    assert done.status_code == 201, done.text
    assert_pulls(registry, repo, {sha256(in_progress): in_progress})

    admin_ok(registry, "reconcile", "--grace", "0s")
    assert [path for path in young_orphans if path.exists()] == []
    settled(registry)


# --- the worker and the filesystem broker's messages ------------------------------------------


def test_the_worker_survives_events_from_concurrent_pushes(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    """Six clients pushing at a pace the worker keeps up with: the worker reads each event
    moments after a service wrote it."""
    contents = [os.urandom(300) + i.to_bytes(2, "big") for i in range(72)]

    def paced(part: list[bytes]) -> None:
        for data in part:
            push_blobs(registry, repo, [data], clients=1)
            time.sleep(0.25)

    worker = registry.process("janitor")
    with ThreadPoolExecutor(6) as pool:
        for done in [pool.submit(paced, contents[i::6]) for i in range(6)]:
            done.result()
    eventually(
        lambda: database.scalar(BLOBS_AT_UPLOAD_KEYS) == 0 or worker.poll() is not None,
        timeout=60,
        what="every blob promoted",
    )
    assert worker.poll() is None, (
        f"the janitor worker died (status {worker.returncode}):\n{log_tail(registry, 'janitor')}"
    )


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_the_worker_survives_a_message_read_while_it_is_being_written(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    """kombu's filesystem transport writes a message by creating its file, then locking and
    writing it, and its consumer takes the oldest file without looking at the lock: a file
    caught between creation and write is empty, and parsing it stopped the worker. The
    registry's transport renames complete messages into place, and skips a file that holds no
    complete message: here one is left for the worker to find."""
    folder = registry.root / "broker" / "queue"
    queue = registry.settings.broker_queue
    (folder / f"{int(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg").touch()
    worker = registry.process("janitor")
    digest = registry.push_blob(repo, os.urandom(1000))
    eventually(
        lambda: key_of(database, digest) == final_key(digest) or worker.poll() is not None,
        what="the blob promoted",
    )
    assert worker.poll() is None, (
        f"the janitor worker died (status {worker.returncode}):\n{log_tail(registry, 'janitor')}"
    )


# --- a worker killed in the middle of promotes -------------------------------------------------


def test_a_worker_killed_in_the_middle_of_promotes_loses_no_blob(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    contents = [os.urandom(400) + i.to_bytes(2, "big") for i in range(150)]
    blobs = {sha256(data): data for data in contents}
    counts_sql = (
        "SELECT SUM(CASE WHEN b.storage_key LIKE 'uploads/%' THEN 1 ELSE 0 END), COUNT(*)"
        " FROM blobs b JOIN repository_blobs rb ON rb.blob_digest = b.digest"
        " JOIN repositories r ON r.id = rb.repository_id WHERE r.name = :repo"
    )

    def counts() -> tuple[int, int]:
        """(blobs still at their upload key, blobs at their own key) of this repository."""
        with database.reader.connect() as connection:
            waiting, total = connection.execute(text(counts_sql), {"repo": repo}).one()
        return int(waiting or 0), int(total) - int(waiting or 0)

    # The worker is down while the blobs are pushed, so that their events queue up; started
    # again, it promotes them one by one, and is killed once some are done and many are not,
    # whatever the backend's speed. (Killed, not paused: a worker stopped in the middle of a
    # write transaction would hold the database's lock and keep the pushes waiting.)
    registry.kill("janitor")
    push_blobs(registry, repo, contents, 4)
    worker = registry.restart("janitor")
    deadline = time.monotonic() + 90
    while True:
        waiting, moved = counts()
        if moved >= 10:
            break
        assert worker.poll() is None, (
            f"the janitor worker died by itself (status {worker.returncode}) before it "
            f"was killed:\n{log_tail(registry, 'janitor')}"
        )
        assert time.monotonic() < deadline, f"stuck at {waiting} waiting, {moved} moved"
        time.sleep(0.01)
    registry.kill("janitor")

    waiting, moved = counts()
    print(f"\nworker killed: {moved} blobs moved, {waiting} still at their upload key")
    assert moved >= 10 and waiting >= 10

    print(f"claims the killed worker held: {expire_claims(database)}")
    registry.restart("janitor")
    admin_ok(registry, "reconcile", "--grace", "0s")

    assert database.scalar(BLOBS_AT_UPLOAD_KEYS) == 0
    for digest in blobs:
        assert key_of(database, digest) == final_key(digest)
    assert_pulls(registry, repo, blobs)
    settled(registry)


# --- a garbage collection killed in the middle of its sweep ------------------------------------


def test_a_gc_killed_in_the_middle_of_a_sweep_is_finished_by_the_next_one(
    registry: RegistryUnderTest, database: Database, repo: str
) -> None:
    image_body, image_blobs = push_image_parts(
        registry, f"{repo}/kept", [os.urandom(1500), os.urandom(2500)]
    )
    junk = [os.urandom(200) + i.to_bytes(2, "big") for i in range(300)]
    push_blobs(registry, f"{repo}/junk", junk, clients=1 if registry.backend != "mariadb" else 4)
    time.sleep(2)  # older than the grace period (1 s)

    before = int(database.scalar("SELECT COUNT(*) FROM blobs"))
    unreferenced_before = int(database.scalar(UNREFERENCED_BLOBS))
    assert unreferenced_before >= len(junk)
    with open(registry.root / "logs" / "gc-killed.log", "wb") as output:
        gc = subprocess.Popen(
            [sys.executable, "-m", "janitor.cli", "gc", "--grace", "0s"],
            env=registry.env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while int(database.scalar("SELECT COUNT(*) FROM blobs")) > before - 10:
            assert gc.poll() is None, "gc ended before it deleted 10 blobs"
            assert time.monotonic() < deadline, "gc deleted nothing within 60 s"
            time.sleep(0.002)
    finally:
        gc.kill()
        gc.wait()
    assert gc.returncode == -9, "gc finished before it was killed: kill it sooner"

    remaining = int(database.scalar(UNREFERENCED_BLOBS))
    deleting = int(database.scalar(DELETING_BLOBS))
    print(
        f"\ngc killed after {before - int(database.scalar('SELECT COUNT(*) FROM blobs'))} "
        f"deletions; {remaining} unreferenced blobs left, {deleting} left 'deleting'"
    )
    assert 0 < remaining < unreferenced_before

    # The killed run still holds the sweep's lease until its heartbeat is missed (the lease
    # lasts two minutes, janitor/leases.py): until then every other gc is refused...
    refused = registry.admin("gc", "--grace", "0s")
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "another janitor is running it now" in refused.stderr
    # ...so expire it, as the time would, and the claim on the blob it was deleting.
    assert database.execute(
        "UPDATE job_leases SET expires_at = :past WHERE name = 'collect_garbage'",
        past="2000-01-01 00:00:00",
    )
    expire_claims(database)
    admin_ok(registry, "gc", "--grace", "0s")
    admin_ok(registry, "reconcile", "--grace", "0s")

    assert database.scalar(DELETING_BLOBS) == 0
    assert database.scalar(UNREFERENCED_BLOBS) == 0
    for data in junk:
        assert registry.http.head(f"/v2/{repo}/junk/blobs/{sha256(data)}").status_code == 404
    assert_image_pulls(registry, f"{repo}/kept", image_body, image_blobs)
    settled(registry)


# --- the broker down while clients push -------------------------------------------------------


def test_events_committed_while_redis_is_down_are_relayed_when_it_is_back(
    tmp_path_factory: pytest.TempPathFactory, repo: str
) -> None:
    """The events of changes made while the broker is down are kept in the database (the
    outbox), even when the process that made the changes is killed meanwhile: once Redis is
    back, a relay sends them and the janitor does their work, with no reconcile."""
    root = tmp_path_factory.mktemp("janitor-redis-down")
    redis_server = RedisServer()
    redis_server.start()
    try:
        with running_registry(
            "mariadb", root, broker_url=redis_server.url, promote_delay_seconds="0"
        ) as registry:
            db = Database(registry)
            try:
                _redis_outage(registry, db, redis_server, repo)
            finally:
                db.close()
    finally:
        redis_server.stop()


def _redis_outage(
    registry: RegistryUnderTest, database: Database, redis_server: RedisServer, repo: str
) -> None:
    warm_up = registry.push_blob(repo, os.urandom(500))
    eventually(lambda: key_of(database, warm_up) == final_key(warm_up), what="a first promote")

    redis_server.stop()
    started = time.monotonic()
    body, blobs = push_image_parts(registry, repo, [os.urandom(4000), os.urandom(6000)])
    upload = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    assert upload.status_code == 202
    assert registry.http.patch(
        upload.headers["Location"], content=os.urandom(3000)
    ).status_code == (202)
    assert registry.http.delete(upload.headers["Location"]).status_code == 204
    cancelled_key = keys.upload_key(upload.headers["Docker-Upload-UUID"])
    print(f"\npush and cancel with Redis down: {time.monotonic() - started:.1f} s")

    # Their events wait in the outbox: every blob stays at its upload's key, the cancelled
    # data stays.
    eventually(
        lambda: "event not published" in registry.log("blob-service"),
        what="the blob service failing to send its events",
    )
    assert database.scalar("SELECT COUNT(*) FROM event_outbox") == len(blobs) + 1
    for digest in blobs:
        key = key_of(database, digest)
        assert key is not None and key.startswith("uploads/"), key
    assert cancelled_key in registry.stored_files()
    # Reads need no broker.
    assert_image_pulls(registry, repo, body, blobs)
    # So the services stay ready (an orchestrator keeps routing to them), the broker reported.
    for service in ("blob", "manifest"):
        ready = httpx.get(f"{registry.settings.service_url(service)}/readyz", timeout=30)
        assert ready.status_code == 200, (service, ready.text)
        assert ready.json()["advisory"]["broker"].startswith("failing"), ready.text

    # The process that recorded them dies; a new one (any replica) relays them.
    registry.kill("blob-service")
    registry.restart("blob-service")
    redis_server.start()
    for digest in blobs:
        eventually(
            lambda digest=digest: key_of(database, digest) == final_key(digest),  # type: ignore[misc]
            timeout=60,
            what="a blob moved by its relayed event",
        )
    eventually(lambda: cancelled_key not in registry.stored_files(), what="cancelled data gone")
    assert database.scalar("SELECT COUNT(*) FROM event_outbox") == 0
    assert_image_pulls(registry, repo, body, blobs)
    settled(registry)

    # The services and the worker are connected again: a new push is promoted by the janitor.
    again = registry.push_blob(repo, os.urandom(700))
    eventually(
        lambda: key_of(database, again) == final_key(again),
        timeout=60,
        what="a promote after Redis came back",
    )
