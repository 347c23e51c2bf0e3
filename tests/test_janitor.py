"""The janitor, end to end through real events: the services publish, the Celery worker (on
Redis, or the filesystem broker) promotes, discards, purges, collects and reconciles, and
storage ends holding exactly what the database says."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

import pytest

from shared import leases
from tests.conftest import registry_fixture, running_registry
from tests.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryUnderTest,
    eventually,
    janitor_client,
    sha256,
)
from tests.test_policies import other_manifest

# A registry of this module's own, so that its garbage collections touch no other test's data;
# reconcile may move blobs at once.
registry = registry_fixture("janitor", promote_delay_seconds="0")


def admin_ok(registry: RegistryUnderTest, *args: str) -> str:
    result = registry.admin(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def settle(registry: RegistryUnderTest) -> None:
    """Wait until the janitor has caught up: every blob at its own key, storage matching the
    database."""

    def settled() -> bool:
        moved = not registry.query("SELECT 1 FROM blobs WHERE storage_key LIKE 'uploads/%'")
        return moved and registry.storage_matches_database()

    eventually(settled, what="the janitor caught up")


def blob_keys(registry: RegistryUnderTest) -> dict[str, str]:
    return {digest: key for digest, key in registry.query("SELECT digest, storage_key FROM blobs")}


def test_a_pushed_blob_is_moved_to_its_content_addressed_key(
    registry: RegistryUnderTest, repo: str
) -> None:
    digest = registry.push_blob(repo, os.urandom(3000))
    hex_digest = digest.split(":")[1]
    eventually(
        lambda: blob_keys(registry)[digest] == f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data",
        what="the blob at its own key",
    )
    settle(registry)
    assert not [p for p in registry.stored_files() if p.startswith("uploads/")]


def test_a_blob_can_be_pulled_the_moment_its_upload_returned(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = os.urandom(100_000)
    for _ in range(5):
        digest = registry.push_blob(repo, data + os.urandom(8))
        assert registry.http.get(f"/v2/{repo}/blobs/{digest}").status_code == 200


def test_a_cancelled_upload_leaves_nothing(registry: RegistryUnderTest, repo: str) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.patch(location, content=os.urandom(5000)).status_code == 202
    assert registry.http.delete(location).status_code == 204
    settle(registry)
    assert location.rsplit("/", 1)[1] not in "".join(registry.stored_files())


def test_stale_uploads_are_purged(registry: RegistryUnderTest, repo: str) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.patch(location, content=b"abandoned" * 100).status_code == 202
    fresh = admin_ok(registry, "purge-uploads")  # default age: a week
    assert registry.http.get(location).status_code == 204, fresh
    time.sleep(1.1)
    summary = admin_ok(registry, "purge-uploads", "--older-than", "1s")
    assert "deleted 1 (900 bytes)" in summary
    assert registry.http.get(location).status_code == 404
    settle(registry)


def test_gc_dry_run_reports_and_deletes_nothing(registry: RegistryUnderTest, repo: str) -> None:
    _, digest = registry.push_image(repo, "v1", [b"dry run layer"])
    assert registry.http.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    settle(registry)  # the janitor has moved the new blobs to their keys
    before = registry.stored_files()
    report = admin_ok(registry, "gc", "--dry-run", "--grace", "0s")
    assert f"would delete {sha256(b'dry run layer')}" in report
    assert registry.stored_files() == before


def test_gc_deletes_what_no_manifest_references_and_keeps_the_rest(
    registry: RegistryUnderTest, repo: str
) -> None:
    shared_layer = os.urandom(2000)
    only_a = os.urandom(2000)
    _, kept = registry.push_image(f"{repo}/b", "v1", [shared_layer, b"b's own"])
    _, doomed = registry.push_image(f"{repo}/a", "v1", [shared_layer, only_a])
    orphan = registry.push_blob(f"{repo}/c", os.urandom(1000))  # pushed, never used

    # Young content is never collected, referenced or not.
    admin_ok(registry, "gc")
    assert registry.http.head(f"/v2/{repo}/c/blobs/{orphan}").status_code == 200

    assert registry.http.delete(f"/v2/{repo}/a/manifests/{doomed}").status_code == 202
    report = admin_ok(registry, "gc", "--grace", "0s")
    assert "deleted" in report
    stored_digests = set(blob_keys(registry))
    assert sha256(only_a) not in stored_digests
    assert orphan not in stored_digests
    assert sha256(shared_layer) in stored_digests
    # The surviving image pulls in full.
    manifest = json.loads(registry.http.get(f"/v2/{repo}/b/manifests/{kept}").content)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        assert (
            sha256(registry.http.get(f"/v2/{repo}/b/blobs/{descriptor['digest']}").content)
            == descriptor["digest"]
        )
    settle(registry)


def test_gc_reads_the_reviews_and_a_full_mark_taking_up_a_stopped_walk_still_sees_every_blob(
    registry: RegistryUnderTest, repo: str
) -> None:
    """A run takes the reviews changes recorded; a blob whose review was lost waits for
    ``gc --full``, whose walk of the blobs table goes on from where an interrupted one
    stopped, and then from the first digest up to there: the blobs before the cursor are
    looked at too, however old the walk it took up."""
    first, second = sorted(registry.push_blob(repo, os.urandom(1200)) for _ in range(2))
    settle(registry)
    registry.execute("DELETE FROM gc_blob_reviews WHERE digest IN (:a, :b)", a=first, b=second)
    admin_ok(registry, "gc", "--grace", "0s")
    assert {first, second} <= set(blob_keys(registry))  # no review, not looked at
    # A full mark that stopped a week ago after the first digest.
    registry.execute(
        "INSERT INTO janitor_cursors (name, position, updated_at) VALUES ('gc_mark', :at, :then)",
        at=first,
        then=dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=7),
    )
    report = admin_ok(registry, "gc", "--full", "--grace", "0s")
    assert "deleted" in report
    stored = set(blob_keys(registry))
    assert second not in stored and first not in stored
    assert registry.query("SELECT name FROM janitor_cursors") == []  # the walk finished
    assert registry.storage_matches_database()


def test_a_manifest_put_after_gc_took_its_blob_fails_cleanly_and_a_repush_works(
    registry: RegistryUnderTest, repo: str
) -> None:
    layer = os.urandom(1500)
    config = b'{"architecture":"amd64","os":"linux"}'
    layer_digest = registry.push_blob(repo, layer)
    config_digest = registry.push_blob(repo, config)
    admin_ok(registry, "gc", "--grace", "0s")  # collects both: nothing references them yet
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": len(layer),
            }
        ],
    }
    refused = registry.push_manifest(repo, "v1", manifest)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    registry.push_blob(repo, layer)
    registry.push_blob(repo, config)
    assert registry.push_manifest(repo, "v1", manifest).status_code == 201
    assert registry.http.get(f"/v2/{repo}/blobs/{layer_digest}").content == layer


def test_untagged_manifests_are_collected_only_by_policy(
    registry: RegistryUnderTest, repo: str
) -> None:
    _, old = registry.push_image(repo, "latest", [b"old layer"])
    _, new = registry.push_image(repo, "latest", [b"new layer"])  # moves the tag
    _, child = registry.push_image(repo, "child", [b"child layer"])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}],
    }
    assert registry.push_manifest(repo, "index", index, OCI_INDEX).status_code == 201
    assert (
        registry.http.delete(f"/v2/{repo}/manifests/child").status_code == 202
    )  # untag; the index still holds it

    admin_ok(registry, "gc", "--grace", "0s", "--no-untagged")
    assert registry.http.head(f"/v2/{repo}/manifests/{old}").status_code == 200

    admin_ok(registry, "gc", "--grace", "0s", "--untagged")
    assert registry.http.head(f"/v2/{repo}/manifests/{old}").status_code == 404
    assert sha256(b"old layer") not in blob_keys(registry)
    assert registry.http.head(f"/v2/{repo}/manifests/{new}").status_code == 200
    assert (
        registry.http.head(f"/v2/{repo}/manifests/{child}").status_code == 200
    )  # held by the index
    assert sha256(b"child layer") in blob_keys(registry)
    settle(registry)


def test_reconcile_finds_orphaned_objects(registry: RegistryUnderTest) -> None:
    stale = time.time() - 7200
    orphans = [
        registry.storage_root / "blobs" / "sha256" / "ab" / ("ab" + "0" * 62) / "data",
        registry.storage_root / "uploads" / "00000000-0000-0000-0000-00000000dead" / "data",
    ]
    young = registry.storage_root / "blobs" / "sha256" / "cd" / ("cd" + "0" * 62) / "data"
    for path in [*orphans, young]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"nobody knows me")
    for path in orphans:
        os.utime(path, (stale, stale))
    admin_ok(registry, "reconcile")
    assert not any(path.exists() for path in orphans)
    assert young.exists()
    young.unlink()
    young.parent.rmdir()


def push_by_digest_alone(registry: RegistryUnderTest, repo: str, layer: bytes) -> str:
    """A manifest pushed by its digest, never tagged; its digest."""
    manifest = other_manifest(registry, repo, layer)
    digest = sha256(manifest)
    assert registry.push_manifest(repo, digest, manifest).status_code == 201
    return digest


def test_a_manifest_pushed_by_digest_alone_is_collected_by_policy_and_a_full_run_finds_it(
    registry: RegistryUnderTest, repo: str
) -> None:
    alone = push_by_digest_alone(registry, repo, b"pushed by digest alone")
    lost = push_by_digest_alone(registry, repo, b"its review lost")
    registry.execute(
        "DELETE FROM gc_manifest_reviews WHERE manifest_id IN"
        " (SELECT id FROM manifests WHERE digest = :digest)",
        digest=lost,
    )
    admin_ok(registry, "gc", "--grace", "0s", "--untagged")
    assert registry.http.head(f"/v2/{repo}/manifests/{alone}").status_code == 404
    assert registry.http.head(f"/v2/{repo}/manifests/{lost}").status_code == 200  # unseen
    admin_ok(registry, "gc", "--grace", "0s", "--untagged", "--full")
    assert registry.http.head(f"/v2/{repo}/manifests/{lost}").status_code == 404
    assert sha256(b"its review lost") not in blob_keys(registry)


def test_the_storage_walk_goes_on_where_it_stopped_and_the_hourly_reconcile_does_not_walk(
    registry: RegistryUnderTest,
) -> None:
    stale = time.time() - 7200
    first, second = (f"blobs/sha256/ab/ab{'0' * 61}{n}/data" for n in (1, 2))
    for key in (first, second):
        path = registry.storage_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"nobody knows me")
        os.utime(path, (stale, stale))
    admin_ok(registry, "reconcile", "--database-only")  # the database alone: no walk
    assert (registry.storage_root / first).exists() and (registry.storage_root / second).exists()
    # A walk that stopped after the first: the next goes on from there.
    registry.execute(
        "INSERT INTO janitor_cursors (name, position, updated_at) "
        "VALUES ('storage_sweep', :at, :now)",
        at=first,
        now=dt.datetime.now(dt.UTC).replace(tzinfo=None),
    )
    summary = admin_ok(registry, "reconcile")
    assert f"going on after {first}" in summary
    assert (registry.storage_root / first).exists()
    assert not (registry.storage_root / second).exists()
    assert registry.query("SELECT name FROM janitor_cursors") == []  # the walk is done
    admin_ok(registry, "reconcile")  # a new walk, from the start
    assert not (registry.storage_root / first).exists()


def test_a_restarted_walk_of_storage_begins_again_at_the_first_key(
    registry: RegistryUnderTest,
) -> None:
    orphan = registry.storage_root / f"blobs/sha256/ce/ce{'0' * 62}/data"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"nobody knows me")
    stale = time.time() - 7200
    os.utime(orphan, (stale, stale))
    # A walk in progress that has passed the orphan's key.
    registry.execute(
        "INSERT INTO janitor_cursors (name, position, updated_at) "
        "VALUES ('storage_sweep', :at, :now)",
        at="uploads/~",
        now=dt.datetime.now(dt.UTC).replace(tzinfo=None),
    )
    summary = admin_ok(registry, "reconcile", "--restart")
    assert "going on after" not in summary
    assert not orphan.exists()
    assert registry.query("SELECT name FROM janitor_cursors") == []


def test_the_weekly_walk_of_storage_is_due_by_its_last_run_not_by_beats_uptime(
    registry: RegistryUnderTest,
) -> None:
    """Beat keeps its schedule in a temporary file and counts an interval from its own start,
    so a beat restarted more often than weekly would never begin the weekly walk: it asks every
    hour instead, and the walk begins when the last one began a week ago."""
    orphan = registry.storage_root / f"blobs/sha256/cd/cd{'0' * 62}/data"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"nobody knows me")
    stale = time.time() - 7200
    os.utime(orphan, (stale, stale))
    week = dt.timedelta(seconds=registry.settings.storage_sweep_interval_seconds)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    registry.execute("DELETE FROM janitor_cursors WHERE name = 'storage_sweep'")
    registry.execute("DELETE FROM janitor_runs WHERE job = 'sweep_storage'")
    registry.execute(
        "INSERT INTO janitor_runs"
        " (job, started_at, finished_at, examined, deleted, bytes_freed, moved, dry_run)"
        " VALUES ('sweep_storage', :at, :at, 0, 0, 0, 0, :dry)",
        at=now - week / 2,
        dry=False,
    )
    send_as_beat(registry, "janitor.sweep_storage", when_due=True)
    eventually(
        lambda: "sweep_storage: not due" in registry.log("janitor"), what="a walk found not due"
    )
    assert orphan.exists()
    registry.execute(
        "UPDATE janitor_runs SET started_at = :at, finished_at = :at WHERE job = 'sweep_storage'",
        at=now - week,
    )
    send_as_beat(registry, "janitor.sweep_storage", when_due=True)
    eventually(lambda: not orphan.exists(), what="the walk, due, deleting the orphan")


def send_as_beat(registry: RegistryUnderTest, task: str, **kwargs: Any) -> None:
    """Queue janitor task ``task`` with ``kwargs`` as beat does on its schedule."""
    client = janitor_client(registry.settings.broker_url, registry.settings.broker_queue)
    try:
        client.send_task(task, kwargs=kwargs)
    finally:
        client.close()


def test_a_lease_lets_one_janitor_run_a_sweep(registry: RegistryUnderTest) -> None:
    with registry.configured():
        ttl = dt.timedelta(seconds=2)
        assert leases.acquire("test-sweep", ttl, owner="a")
        assert not leases.acquire("test-sweep", ttl, owner="b")
        assert leases.acquire("test-sweep", ttl, owner="a")  # the holder renews
        time.sleep(2.1)
        assert leases.acquire("test-sweep", ttl, owner="b")  # an expired lease is free
        leases.release("test-sweep", owner="b")
        assert leases.acquire("test-sweep", ttl, owner="a")
        leases.release("test-sweep", owner="a")
        assert not leases.held("test-sweep")
        assert leases.acquire("test-sweep", ttl, owner="c")  # a released lease is free
        assert leases.held("test-sweep")
        assert not leases.acquire("test-sweep", ttl, owner="a")
        leases.release("test-sweep", owner="a")  # not a's: changes nothing
        assert not leases.acquire("test-sweep", ttl, owner="b")
        leases.release("test-sweep", owner="c")
        assert not leases.held("test-sweep")


def test_beat_schedules_the_sweeps(tmp_path_factory: pytest.TempPathFactory, repo: str) -> None:
    """With a short interval and grace, beat sends collect_garbage and the worker runs it: an
    unreferenced blob disappears with nobody calling registry-admin."""
    root = tmp_path_factory.mktemp("beat")
    with running_registry("sqlite", root, gc_interval_seconds="2", gc_grace_seconds="1") as running:
        digest = running.push_blob(repo, b"nobody will reference this")
        eventually(
            lambda: digest not in blob_keys(running), timeout=60, what="beat-driven collection"
        )
        eventually(running.storage_matches_database, what="storage matching the database")
        assert "janitor.collect_garbage" in running.log("janitor")
