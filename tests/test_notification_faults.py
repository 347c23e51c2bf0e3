"""Notifications through faults: every push a client was told succeeded reaches every endpoint
(once, after dropping duplicates by delivery id), in push order per repository, while the
endpoint is down for a minute, a service is killed, and Redis stops; and a push committed by a
service that was killed before it could answer is announced too.

The registry runs on SQLite and on MariaDB, each with a Redis of its own as the broker (and so
its read cache) so that the tests can stop it, and its processes are those of the Kubernetes
deployment, deliveries on a worker of their own. The endpoints are real HTTP
servers on loopback (:class:`tests.webhooks.Receiver`).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_registry
from tests.registry import OCI_MANIFEST, RedisServer, RegistryUnderTest, eventually
from tests.webhooks import Receiver, repository_of

BLOB = "application/octet-stream"
OUTAGE_SECONDS = 60.0
CLIENTS = 4
PUSH_EVERY = 0.2  # seconds: each client's pace (some 1,200 pushes in the minute)


@dataclass
class Faulty:
    registry: RegistryUnderTest
    redis: RedisServer
    down: Receiver  # goes away for the soak's minute
    audit: Receiver  # always there


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def faulty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Faulty]:
    root = tmp_path_factory.mktemp(f"notification-faults-{request.param}")
    down, audit = Receiver().start(), Receiver().start()
    common = {"actions": ["push"], "ignore_media_types": [BLOB], "timeout_seconds": 2}
    document = {
        "endpoints": [
            {"name": "down", "url": down.url("/down"), "max_backoff_seconds": 2, **common},
            {"name": "audit", "url": audit.url("/audit"), **common},
        ]
    }
    (root / "notifications.yaml").write_text(json.dumps(document))
    try:
        with (
            RedisServer() as redis_server,
            running_registry(
                request.param,
                root,
                broker_url=redis_server.url,
                notifications_file=str(root / "notifications.yaml"),
                notifications_poll_seconds="0.5",
                # The processes as Kubernetes runs them: beat on its own, the deliveries taken
                # by a worker of their own.
                beat_in_worker="false",
            ) as running,
        ):
            yield Faulty(running, redis_server, down, audit)
    finally:
        down.stop()
        audit.stop()


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass
class Pusher:
    """One client pushing distinct manifests to a repository of its own, one after another."""

    registry: RegistryUnderTest
    repository: str
    acknowledged: list[str] = field(default_factory=list)  # digests answered 201, in order
    unanswered: list[str] = field(default_factory=list)  # digests of pushes that failed

    def run(self, until: threading.Event) -> None:
        with httpx.Client(base_url=self.registry.url, timeout=30) as http:
            config, layer = self._blobs(http)
            number = 0
            while not until.is_set():
                number += 1
                body = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": OCI_MANIFEST,
                        "config": config,
                        "layers": [layer],
                        "annotations": {"push": f"{self.repository} {number}"},
                    }
                ).encode()
                try:
                    answer = http.put(
                        f"/v2/{self.repository}/manifests/v{number}",
                        content=body,
                        headers={"Content-Type": OCI_MANIFEST},
                    )
                    done = answer.status_code == 201
                except httpx.HTTPError:
                    done = False
                (self.acknowledged if done else self.unanswered).append(_digest(body))
                time.sleep(PUSH_EVERY)

    def _blobs(self, http: httpx.Client) -> tuple[dict[str, object], dict[str, object]]:
        found = []
        for kind, data in (
            ("application/vnd.oci.image.config.v1+json", b'{"architecture":"amd64","os":"linux"}'),
            ("application/vnd.oci.image.layer.v1.tar", f"layer of {self.repository}".encode()),
        ):
            digest = _digest(data)
            started = http.post(f"/v2/{self.repository}/blobs/uploads/")
            assert started.status_code == 202, started.text
            done = http.put(started.headers["Location"], params={"digest": digest}, content=data)
            assert done.status_code == 201, done.text
            found.append({"mediaType": kind, "digest": digest, "size": len(data)})
        return found[0], found[1]


def _stored(registry: RegistryUnderTest, names: str) -> set[str]:
    """The digests of the manifests stored in the repositories whose names are LIKE ``names``."""
    rows = registry.query(
        "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id "
        "WHERE r.name LIKE :names",
        names=names,
    )
    return {digest for (digest,) in rows}


def _first_arrivals(receiver: Receiver, path: str, repository: str) -> list[tuple[str, str]]:
    """(delivery id, digest) of each delivery to ``path`` about ``repository``, the first time
    it arrived, in arrival order."""
    seen: dict[str, str] = {}
    for request in receiver.delivered(path, repository):
        (event,) = request.events
        seen.setdefault(request.headers["x-registry-delivery"], event["target"]["digest"])
    return list(seen.items())


def test_a_soak_of_pushes_while_the_endpoint_is_down_a_minute_loses_no_event(
    faulty: Faulty, tmp_path: Path
) -> None:
    """Four clients push for a minute while one endpoint refuses connections; meanwhile the
    manifest service is killed and started again and Redis is stopped for ten seconds. Then
    the endpoint is back: every acknowledged push reaches both endpoints exactly once after
    de-duplication by delivery id, in push order per repository, and so does every push the
    database holds whose client got no answer; nothing else is announced."""
    registry = faulty.registry
    stem = f"soak-{uuid.uuid4().hex[:6]}"
    pushers = [Pusher(registry, f"{stem}/client-{n}") for n in range(CLIENTS)]
    repositories = [p.repository for p in pushers]
    faulty.down.stop()
    until = threading.Event()
    threads = [threading.Thread(target=p.run, args=(until,)) for p in pushers]
    started = time.monotonic()
    for thread in threads:
        thread.start()

    def at(second: float) -> None:
        time.sleep(max(0.0, started + second - time.monotonic()))

    try:
        at(15)
        registry.kill("manifest-service")
        time.sleep(1)
        registry.restart("manifest-service")
        at(30)
        faulty.redis.stop()
        at(40)
        faulty.redis.start()
        at(OUTAGE_SECONDS)
    finally:
        until.set()
        for thread in threads:
            thread.join(60)
        faulty.down.start()

    acknowledged = {p.repository: p.acknowledged for p in pushers}
    unanswered = [digest for p in pushers for digest in p.unanswered]
    stored = _stored(registry, f"{stem}/%")
    assert set().union(*acknowledged.values()) <= stored
    assert sum(len(d) for d in acknowledged.values()) > 100, acknowledged  # a real load

    def delivered(receiver: Receiver, path: str) -> set[str]:
        return {
            digest
            for repository in repositories
            for _, digest in _first_arrivals(receiver, path, repository)
        }

    for receiver, path in ((faulty.down, "/down"), (faulty.audit, "/audit")):

        def arrived(receiver: Receiver = receiver, path: str = path) -> bool:
            return delivered(receiver, path) >= stored

        eventually(arrived, timeout=120, what=f"every push at {path}")
        # Exactly the stored pushes: none lost, none made up, each once by delivery id.
        assert delivered(receiver, path) == stored
        for repository in repositories:
            arrivals = _first_arrivals(receiver, path, repository)
            digests = [digest for _, digest in arrivals]
            assert len(digests) == len(set(digests)), "one event, two delivery ids"
            in_order = [d for d in digests if d in set(acknowledged[repository])]
            assert in_order == acknowledged[repository], f"{path} {repository}: out of order"
    counts = {
        "backend": registry.backend,
        "pushes acknowledged": sum(len(d) for d in acknowledged.values()),
        "pushes unanswered": len(unanswered),
        "of those stored (announced too)": len(set(unanswered) & stored),
        "events delivered at /down (distinct delivery ids)": len(delivered(faulty.down, "/down")),
        "requests answered 2xx at /down": sum(
            repository_of(r) in repositories for r in faulty.down.delivered("/down")
        ),
        "lost": len(stored - delivered(faulty.down, "/down")),
    }
    print(f"\nnotification soak: {json.dumps(counts)}")
    (Path(os.environ.get("NOTIFICATION_SOAK_REPORT", tmp_path / "soak.json"))).write_text(
        json.dumps(counts)
    )
    # Rows say so too: every event of these repositories delivered at both endpoints.
    eventually(
        lambda: (
            registry.query(
                "SELECT DISTINCT state FROM notifications WHERE repository LIKE :names",
                names=f"{stem}/%",
            )
            == [("delivered",)]
        ),
        what="every row delivered",
    )


def test_a_push_committed_by_a_service_killed_before_it_answered_is_announced(
    faulty: Faulty,
) -> None:
    """The manifest service commits a push and is SIGKILLed before it answers (it is waiting
    on Redis, stopped with SIGSTOP, to invalidate its read cache): the client gets an error,
    yet the manifest is stored, so its event is delivered, with the request's id."""
    registry, repo = faulty.registry, f"killed-{uuid.uuid4().hex[:8]}/app"
    body, digest = registry.push_image(repo, "base")
    manifest = json.loads(body)
    manifest["annotations"] = {"pushed": "then killed"}
    body = json.dumps(manifest).encode()
    answers: list[httpx.Response | Exception] = []

    def push() -> None:
        try:
            answers.append(registry.push_manifest(repo, "v1", body))
        except httpx.HTTPError as exc:
            answers.append(exc)

    assert faulty.redis.popen is not None
    os.kill(faulty.redis.popen.pid, signal.SIGSTOP)
    try:
        pushing = threading.Thread(target=push)
        pushing.start()
        eventually(lambda: _digest(body) in _stored(registry, repo), timeout=10, what="the commit")
        registry.kill("manifest-service")
        pushing.join(30)
    finally:
        os.kill(faulty.redis.popen.pid, signal.SIGCONT)
    registry.restart("manifest-service")
    (answer,) = answers
    assert isinstance(answer, Exception) or answer.status_code >= 500, answer

    def pushes() -> list[str]:
        return [r.events[0]["target"]["digest"] for r in faulty.audit.delivered("/audit", repo)]

    eventually(lambda: _digest(body) in pushes(), timeout=60, what="the killed push's event")
    assert pushes() == [digest, _digest(body)]
    if isinstance(answer, httpx.Response):
        (event,) = faulty.audit.delivered("/audit", repo)[-1].events
        assert event["request"]["id"] == answer.headers["x-request-id"]
