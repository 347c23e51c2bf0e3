"""Notifications: pushes and deletes reach webhook endpoints in the reference registry's
envelope, signed, in order per repository, and none is lost while an endpoint fails.

The endpoints are real HTTP servers on loopback started here (:class:`Receiver`), which record
every request and can be told to fail. The registry is a whole one of real processes, on SQLite
and on MariaDB + Redis, with three endpoints in its notifications file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import users
from tests.conftest import running_registry
from tests.docker_engine import DockerEngine
from tests.images import single_image
from tests.podman import private_podman
from tests.registry import DOCKER_MANIFEST, OCI_MANIFEST, RegistryUnderTest, eventually
from tests.test_auth import Account, make_skopeo
from tests.test_client_docker import login
from tests.test_client_docker import push as docker_push
from tests.webhooks import Receiver, repository_of

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
SECRET = "a shared secret"
BLOB = "application/octet-stream"


@dataclass
class World:
    registry: RegistryUnderTest
    steady: Receiver  # always answers
    flaky: Receiver  # fails when told


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"notifications-{request.param}")
    steady, flaky = Receiver().start(), Receiver().start()
    (root / "hook-secret").write_text(SECRET + "\n")
    document = {
        "endpoints": [
            {
                "name": "all",
                "url": steady.url("/all"),
                "secret_file": "hook-secret",
                "ignore_media_types": [BLOB],
            },
            {
                "name": "blobs",
                "url": steady.url("/blobs"),
                "actions": ["push", "mount", "delete", "pull"],
                "repositories": ["blobs/*"],
            },
            {
                "name": "pulls",
                "url": flaky.url("/pulls"),
                "actions": ["pull"],
                "repositories": ["pulls/*"],
                "max_backoff_seconds": 1,
            },
            {
                "name": "team-deletes",
                "url": steady.url("/team"),
                "actions": ["delete"],
                "repositories": ["team/*"],
                "format": "cloudevents",
            },
            {
                "name": "flaky",
                "url": flaky.url("/flaky"),
                "repositories": ["flaky/*"],
                "headers": {"X-Team": ["platform", "ops"]},
                "timeout_seconds": 2,
                "ignore_media_types": [BLOB],
            },
        ]
    }
    (root / "notifications.yaml").write_text(json.dumps(document))
    try:
        with running_registry(
            request.param,
            root,
            notifications_file=str(root / "notifications.yaml"),
            notifications_poll_seconds="0.5",
        ) as running:
            yield World(running, steady, flaky)
    finally:
        steady.stop()
        flaky.stop()


def _name(stem: str) -> str:
    return f"{stem}/repo-{uuid.uuid4().hex[:8]}"


def _manifest(registry: RegistryUnderTest, repo: str, note: str) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux", "note": note}).encode()
    layer = f"layer of {note}".encode()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": registry.push_blob(repo, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": registry.push_blob(repo, layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


def _metrics(registry: RegistryUnderTest) -> dict[str, float]:
    """The janitor's metrics, by name and labels as Prometheus' text format writes them."""
    url = f"http://127.0.0.1:{registry.settings.janitor_metrics_port}/metrics"
    found = {}
    for line in httpx.get(url).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def test_a_push_and_deletes_arrive_in_the_reference_envelope_signed_and_in_order(
    world: World,
) -> None:
    registry, repo = world.registry, _name("notify")
    body = _manifest(registry, repo, "envelope")
    digest = _digest(body)
    pushed = registry.push_manifest(repo, "v1", body)
    assert pushed.status_code == 201, pushed.text
    assert registry.http.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    assert registry.http.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202

    eventually(lambda: len(world.steady.delivered("/all", repo)) == 3, what="three events")
    received = world.steady.delivered("/all", repo)
    for request in received:
        assert request.headers["content-type"] == ENVELOPE
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-registry-signature-256"] == expected
        assert len(request.events) == 1
    assert len({r.headers["x-registry-delivery"] for r in received}) == 3
    push, untag, delete = (r.events[0] for r in received)

    assert push["action"] == "push"
    assert push["target"] == {
        "mediaType": OCI_MANIFEST,
        "size": len(body),
        "length": len(body),
        "digest": digest,
        "repository": repo,
        "url": f"{registry.url}/v2/{repo}/manifests/{digest}",
        "tag": "v1",
    }
    assert push["request"]["id"] == pushed.headers["x-request-id"]
    assert push["request"]["method"] == "PUT"
    assert push["request"]["addr"] == "127.0.0.1"
    assert push["request"]["host"] == registry.host
    assert push["request"]["useragent"].startswith("python-httpx/")
    assert push["actor"] == {"name": ""}  # anonymous
    assert push["source"]["instanceID"]
    stamp = dt.datetime.fromisoformat(push["timestamp"])
    assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)

    assert untag["action"] == "delete"
    assert untag["target"] == {"repository": repo, "tag": "v1"}
    assert untag["request"]["method"] == "DELETE"
    assert delete["action"] == "delete"
    assert delete["target"]["digest"] == digest
    assert delete["target"]["mediaType"] == OCI_MANIFEST
    assert len({push["id"], untag["id"], delete["id"]}) == 3
    # The other endpoints want other repositories.
    assert world.steady.delivered("/team", repo) == []
    assert world.flaky.delivered("/flaky", repo) == []


def test_an_endpoint_gets_only_the_actions_and_repositories_it_asked_for_as_cloudevents(
    world: World,
) -> None:
    registry, repo = world.registry, _name("team")
    body = _manifest(registry, repo, "team")
    assert registry.push_manifest(repo, "v1", body).status_code == 201
    assert registry.http.delete(f"/v2/{repo}/manifests/{_digest(body)}").status_code == 202

    eventually(lambda: len(world.steady.delivered("/team", repo)) == 1, what="the delete")
    eventually(lambda: len(world.steady.delivered("/all", repo)) == 2, what="push and delete")
    (request,) = world.steady.delivered("/team", repo)
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert "x-registry-signature-256" not in request.headers  # this endpoint has no secret
    event = json.loads(request.body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "registry.delete"
    assert event["subject"] == repo
    assert event["data"]["target"]["digest"] == _digest(body)


def test_events_wait_for_a_failing_endpoint_and_arrive_in_order_once_it_is_back(
    world: World,
) -> None:
    registry = world.registry
    first, second = _name("flaky"), _name("flaky")
    world.flaky.failing = True
    pushed: dict[str, list[str]] = {first: [], second: []}
    try:
        for number in range(6):
            repo = first if number % 3 else second
            body = _manifest(registry, repo, f"flaky {number}")
            assert registry.push_manifest(repo, f"v{number}", body).status_code == 201
            pushed[repo].append(_digest(body))
        # Tried, and tried again, while it fails; nothing counts as delivered.
        eventually(lambda: len(world.flaky.refused("/flaky")) >= 4, what="retries")
        assert world.flaky.delivered("/flaky", first) == []
        # The janitor's metrics show the backlog waiting, and how old its first event is.
        backlog = _metrics(registry)
        assert backlog['registry_notifications_pending{endpoint="flaky"}'] >= 6, backlog
        assert backlog['registry_notifications_oldest_pending_age_seconds{endpoint="flaky"}'] > 0
        assert backlog['registry_notifications_total{endpoint="flaky",outcome="failed"}'] >= 4
    finally:
        world.flaky.failing = False

    def all_delivered() -> bool:
        return all(
            len(world.flaky.delivered("/flaky", repo)) >= len(digests)
            for repo, digests in pushed.items()
        )

    eventually(all_delivered, timeout=60, what="every event")
    for repo in (first, second):
        received = world.flaky.delivered("/flaky", repo)
        assert [r.events[0]["target"]["digest"] for r in received] == pushed[repo]
        assert len({r.headers["x-registry-delivery"] for r in received}) == len(received)
        assert all(r.headers["x-team"] == "platform, ops" for r in received)

    def rows() -> list[Any]:
        return registry.query(
            "SELECT state, attempts FROM notifications "
            "WHERE endpoint = 'flaky' AND repository IN (:first, :second)",
            first=first,
            second=second,
        )

    # The janitor records a delivery once the endpoint has answered.
    eventually(lambda: {state for state, _ in rows()} == {"delivered"}, what="rows delivered")
    assert max(attempts for _, attempts in rows()) > 1


def test_an_event_in_flight_when_the_janitor_is_killed_is_delivered_after_it_restarts(
    world: World,
) -> None:
    """The janitor worker dies (SIGKILL) while the endpoint has the event and has not answered:
    once the worker runs again and the dead one's lease on the stream has expired, the event is
    sent again, with the same delivery id, and recorded delivered; none is lost."""
    registry, repo = world.registry, _name("flaky")
    world.flaky.stall = 30.0
    arrived = len(world.flaky.arrived)
    try:
        body = _manifest(registry, repo, "killed")
        assert registry.push_manifest(repo, "v1", body).status_code == 201
        eventually(lambda: len(world.flaky.arrived) > arrived, what="the attempt")
        registry.kill("janitor")
    finally:
        world.flaky.stall = 0.0
    registry.restart("janitor")

    eventually(lambda: world.flaky.delivered("/flaky", repo) != [], timeout=60, what="delivery")
    received = world.flaky.delivered("/flaky", repo)
    assert {r.events[0]["target"]["digest"] for r in received} == {_digest(body)}
    assert len({r.headers["x-registry-delivery"] for r in received}) == 1
    eventually(
        lambda: (
            registry.query(
                "SELECT state FROM notifications WHERE endpoint = 'flaky' AND repository = :repo",
                repo=repo,
            )
            == [("delivered",)]
        ),
        what="the row delivered",
    )


def test_a_skopeo_push_and_copy_back_are_announced_blob_by_blob(
    world: World, tmp_path: Path
) -> None:
    """A real client's push: an endpoint that ignores blobs hears of the manifest alone; one
    that wants everything hears of every blob pushed, then of the manifest, and of the pulls
    when the image is copied back."""
    registry, repo = world.registry, _name("blobs")
    skopeo = make_skopeo(tmp_path / "skopeo")
    layout = single_image(tmp_path / "image", layer_count=2, layer_size=50_000)
    digest, _ = skopeo.push(layout, f"docker://{registry.host}/{repo}:latest")
    manifest = registry.http.get(
        f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
    ).json()
    blobs = {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}

    eventually(lambda: len(world.steady.delivered("/all", repo)) == 1, what="the push")
    (event,) = world.steady.delivered("/all", repo)[0].events
    assert event["action"] == "push"
    assert event["target"]["digest"] == digest
    assert event["target"]["tag"] == "latest"
    assert event["request"]["method"] == "PUT"

    def events() -> list[dict[str, Any]]:
        return [e for r in world.steady.delivered("/blobs", repo) for e in r.events]

    def pushes() -> list[dict[str, Any]]:
        return [e for e in events() if e["action"] == "push"]

    eventually(lambda: len(pushes()) == len(blobs) + 1, what="blob and manifest pushes")
    *blob_pushes, manifest_push = pushes()
    assert {e["target"]["digest"] for e in blob_pushes} == blobs
    for pushed in blob_pushes:
        assert pushed["action"] == "push"
        assert pushed["target"]["mediaType"] == BLOB
        assert pushed["target"]["url"].endswith(f"/v2/{repo}/blobs/{pushed['target']['digest']}")
        assert pushed["target"]["size"] > 0
    assert manifest_push["target"]["digest"] == digest

    skopeo.copy(f"docker://{registry.host}/{repo}:latest", f"oci:{tmp_path / 'back'}:latest")
    eventually(lambda: len(events()) >= len(blobs) + 3, what="the pulls")
    by_tag = [e for e in events() if e["action"] == "pull" and "tag" in e["target"]]
    assert by_tag[0]["target"]["digest"] == digest
    assert by_tag[0]["target"]["tag"] == "latest"
    assert by_tag[0]["request"]["method"] == "GET"
    # Every blob the copy read (skopeo reads the config and the layers it lacks: all of them).
    eventually(
        lambda: (
            {e["target"]["digest"] for e in events() if e["action"] == "pull"} == blobs | {digest}
        ),
        what="a pull of every blob",
    )


def test_blob_pushes_mounts_and_deletes_are_announced(world: World) -> None:
    registry, repo, other = world.registry, _name("blobs"), _name("blobs")
    data = b"a blob announced " + uuid.uuid4().bytes
    digest = registry.push_blob(repo, data)
    mounted = registry.http.post(
        f"/v2/{other}/blobs/uploads/", params={"mount": digest, "from": repo}
    )
    assert mounted.status_code == 201, mounted.text
    deleted = registry.http.delete(f"/v2/{other}/blobs/{digest}")
    assert deleted.status_code == 202, deleted.text

    eventually(lambda: len(world.steady.delivered("/blobs", repo)) == 1, what="the push")
    eventually(lambda: len(world.steady.delivered("/blobs", other)) == 2, what="mount, delete")
    (push,) = world.steady.delivered("/blobs", repo)[0].events
    assert push["action"] == "push"
    assert push["target"] == {
        "mediaType": BLOB,
        "size": len(data),
        "length": len(data),
        "digest": digest,
        "repository": repo,
        "url": f"{registry.url}/v2/{repo}/blobs/{digest}",
    }
    mount, delete = (r.events[0] for r in world.steady.delivered("/blobs", other))
    assert mount["action"] == "mount"
    assert mount["target"]["fromRepository"] == repo
    assert mount["target"]["digest"] == digest
    assert mount["target"]["repository"] == other
    assert mount["request"]["method"] == "POST"
    assert delete["action"] == "delete"
    assert delete["target"]["digest"] == digest
    assert delete["target"]["mediaType"] == BLOB
    assert delete["request"]["method"] == "DELETE"
    # An endpoint that ignores blobs heard of none of it.
    assert world.steady.delivered("/all", repo) == []
    assert world.steady.delivered("/all", other) == []


def test_pulls_that_wait_for_an_endpoint_are_sent_together_the_same_at_every_attempt(
    world: World,
) -> None:
    """Pull events are many: those waiting when a request is made go in one request (up to a
    hundred), whose events and delivery id stay the same when it has to be sent again."""
    registry, repo = world.registry, _name("pulls")
    body, digest = registry.push_image(repo, "v1", [b"pulled layer " + uuid.uuid4().bytes])
    manifest = json.loads(body)
    world.flaky.failing = True
    try:
        reads = [
            f"/v2/{repo}/manifests/v1",
            f"/v2/{repo}/blobs/{manifest['config']['digest']}",
            f"/v2/{repo}/blobs/{manifest['layers'][0]['digest']}",
            f"/v2/{repo}/manifests/{digest}",
        ]
        for path in reads:
            assert registry.http.head(path).status_code == 200  # not a pull
            assert registry.http.get(path).status_code == 200
        eventually(lambda: len(world.flaky.refused("/pulls")) >= 2, what="attempts")
    finally:
        world.flaky.failing = False

    def pulls() -> list[dict[str, Any]]:
        return [e for r in world.flaky.delivered("/pulls", repo) for e in r.events]

    eventually(lambda: len(pulls()) == 4, what="four pulls")
    assert [e["target"]["digest"] for e in pulls()] == [
        digest,
        manifest["config"]["digest"],
        manifest["layers"][0]["digest"],
        digest,
    ]
    assert [e["action"] for e in pulls()] == ["pull"] * 4
    assert pulls()[0]["target"]["tag"] == "v1"
    assert "tag" not in pulls()[3]["target"]
    assert pulls()[1]["target"]["mediaType"] == BLOB
    delivered = world.flaky.delivered("/pulls", repo)
    assert any(len(r.events) > 1 for r in delivered), [len(r.events) for r in delivered]
    # A request sent again is the same request: same delivery id, same events.
    sent = {r.headers["x-registry-delivery"]: r.body for r in delivered}
    for refused in world.flaky.refused("/pulls"):
        if repository_of(refused) == repo:
            assert sent[refused.headers["x-registry-delivery"]] == refused.body


def test_two_delivery_tasks_of_one_stream_in_one_worker_send_each_event_once_in_order(
    world: World,
) -> None:
    """A worker runs several tasks at once (threads): two of them given the same stream, with
    the janitor's own worker on it too, deliver its 200 events once each, in order."""
    from janitor import notifications as delivery
    from shared import db, events, notifications

    registry, repo = world.registry, _name("threads")
    with registry.configured():
        try:
            with db.transaction() as session:
                for number in range(200):
                    notifications.record(
                        session,
                        "push",
                        repo,
                        digest=f"sha256:{number:064x}",
                        media_type=OCI_MANIFEST,
                        size=number,
                        tag=f"v{number}",
                    )
            tasks = [
                threading.Thread(target=delivery.deliver, args=("all", repo)) for _ in range(2)
            ]
            for task in tasks:
                task.start()
            for task in tasks:
                task.join(60)
        finally:
            events.stop_relay()

    eventually(lambda: len(world.steady.delivered("/all", repo)) >= 200, what="200 events")
    time.sleep(1)  # a second copy of any of them would have come by now
    received = world.steady.delivered("/all", repo)
    assert [r.events[0]["target"]["tag"] for r in received] == [f"v{n}" for n in range(200)]
    assert len({r.headers["x-registry-delivery"] for r in received}) == 200


def test_a_replay_sends_an_endpoints_events_again_in_order_with_new_delivery_ids(
    world: World,
) -> None:
    registry, repo = world.registry, _name("replay")
    digests = []
    for number in range(2):
        body = _manifest(registry, repo, f"replay {number}")
        assert registry.push_manifest(repo, f"v{number}", body).status_code == 201
        digests.append(_digest(body))
    eventually(lambda: len(world.steady.delivered("/all", repo)) == 2, what="two pushes")

    def listed() -> str:
        result = registry.admin("notifications", "list")
        assert result.returncode == 0, result.stderr
        return result.stdout

    # (The janitor records a delivery once the endpoint has answered.)
    eventually(lambda: "all: 0 pending, 0 parked; last delivered 20" in listed(), what="list")

    replayed = registry.admin("notifications", "replay", "all", "--since", "10m")
    assert replayed.returncode == 0, replayed.stderr
    assert int(replayed.stdout.split()[0]) >= 2, replayed.stdout
    eventually(lambda: len(world.steady.delivered("/all", repo)) == 4, what="the replay")
    first, again = (
        world.steady.delivered("/all", repo)[:2],
        world.steady.delivered("/all", repo)[2:],
    )
    assert [r.events[0]["target"]["digest"] for r in again] == digests
    assert [r.events[0]["id"] for r in again] == [r.events[0]["id"] for r in first]
    delivery_ids = {r.headers["x-registry-delivery"] for r in first + again}
    assert len(delivery_ids) == 4


# --- real clients, logged in ------------------------------------------------------------------


@dataclass
class Guarded:
    """A registry with password logins (htpasswd) announcing pushes to ``receiver``."""

    registry: RegistryUnderTest
    receiver: Receiver
    alice: Account
    bob: Account


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def guarded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guarded]:
    root = tmp_path_factory.mktemp(f"notifications-logins-{request.param}")
    alice, bob = (
        Account("alice", f"pw-{uuid.uuid4().hex}"),
        Account("bob", f"pw-{uuid.uuid4().hex}"),
    )
    document = {
        "users": {
            account.name: {"password_hash": users.hash_password(account.password, 4)}
            for account in (alice, bob)
        },
        "grants": [{"repositories": ["team/*"], "users": ["*"], "actions": ["pull", "push"]}],
    }
    users.write_document(root / "users.yaml", document)
    receiver = Receiver().start()
    endpoints = {"endpoints": [{"name": "audit", "url": receiver.url("/audit")}]}
    (root / "notifications.yaml").write_text(json.dumps(endpoints))
    try:
        with running_registry(
            request.param,
            root,
            auth="htpasswd",
            auth_users_file=str(root / "users.yaml"),
            auth_realm="Notifications",
            internal_secret=uuid.uuid4().hex,
            notifications_file=str(root / "notifications.yaml"),
            notifications_poll_seconds="0.5",
        ) as running:
            yield Guarded(running, receiver, alice, bob)
    finally:
        receiver.stop()


def test_docker_and_podman_pushes_name_the_user_who_pushed(
    guarded: Guarded, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """The Docker engine logged in as alice pushes an image: its blobs and its manifest are
    announced with alice as the actor and docker's user agent; podman pushes another as bob."""
    registry, receiver = guarded.registry, guarded.receiver
    repo = f"team/docker-{uuid.uuid4().hex[:8]}"
    image = f"{registry.host}/{repo}:v1"
    image_id = docker_engine.build_scratch_image(image)
    login(docker_engine, registry, guarded.alice, tmp_path / "alice")
    digest = docker_push(docker_engine, image, tmp_path / "alice")

    def events(repository: str) -> list[dict[str, Any]]:
        return [e for r in receiver.delivered("/audit", repository) for e in r.events]

    eventually(lambda: any(e["target"].get("tag") == "v1" for e in events(repo)), what="push")
    pushed = events(repo)
    assert {e["actor"]["name"] for e in pushed} == {"alice"}
    assert all(e["request"]["useragent"].startswith("docker/") for e in pushed)
    manifest_push = pushed[-1]
    assert manifest_push["target"]["digest"] == digest
    assert manifest_push["target"]["mediaType"] == DOCKER_MANIFEST
    blobs = {e["target"]["digest"] for e in pushed if e["target"]["mediaType"] == BLOB}
    assert image_id in blobs  # the config; and the layers
    assert len(blobs) == 3, pushed

    layout = single_image(tmp_path / "image", layer_count=1, layer_size=20_000)
    other = f"team/podman-{uuid.uuid4().hex[:8]}"
    with private_podman(tmp_path / "podman", [registry.host]) as podman:
        local = podman.pull(f"oci:{layout.path}:latest")
        creds = f"{guarded.bob.name}:{guarded.bob.password}"
        podman_digest, _ = podman.push(
            local, f"docker://{registry.host}/{other}:v1", "--creds", creds
        )
    eventually(lambda: any(e["target"].get("tag") == "v1" for e in events(other)), what="push")
    (by_podman,) = [e for e in events(other) if e["target"].get("tag") == "v1"]
    assert by_podman["target"]["digest"] == podman_digest
    assert {e["actor"]["name"] for e in events(other)} == {"bob"}
