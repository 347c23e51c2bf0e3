"""The registry as deployed: two replicas of every process (gateway, blob service, manifest
service, janitor worker and beat) over one MariaDB database, one Redis and one storage (a folder,
and OSS), behind HAProxy, which picks a replica for every request (tests/replicas.py).

- A chunked push whose requests alternate between the two gateways pulls back byte for byte.
- Two chunks at one offset, sent at the same moment to the two replicas: exactly one is
  accepted (202), the other is refused with 416 ``BLOB_UPLOAD_INVALID`` and a ``Range`` naming
  the bytes acknowledged so far; the upload closes with the accepted bytes and reads back.
- A chunk racing the closing PUT, a closing PUT racing a cancel, two closing PUTs at once:
  never a 5xx, only the outcomes the spec allows, and what was acknowledged reads back.
- Manifest and tag writes racing on the two replicas: never a 5xx, and both replicas agree on
  the result.
- Garbage collection on both janitors while clients push: nothing acknowledged is lost.
- skopeo, podman and containerd push and pull through the balancer.
- One replica of each service down: the other serves; restarted, it serves again.
- A soak of pushes, deletes and sweeps, after which every acknowledged image pulls in full,
  ``registry-admin reconcile`` finds nothing to repair, and storage matches the database.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests import test_client_containerd as containerd_client
from tests import test_client_podman as podman_client
from tests import test_client_skopeo as skopeo_client
from tests import test_notification_faults, test_policies
from tests.docker_engine import DockerEngine
from tests.images import single_image
from tests.podman import Podman
from tests.registry import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    error_codes,
    eventually,
    sha256,
)
from tests.replicas import ReplicatedRegistry, replicated_registry
from tests.test_client_docker import push_remove_and_pull
from tests.webhooks import Receiver

pytestmark = pytest.mark.timeout(300)

# The client tests' own fixtures, on this module's registry.
skopeo = skopeo_client.skopeo
podman = podman_client.podman
containerd = containerd_client.containerd

ROUNDS = 20  # of each race
OCTETS = {"Content-Type": "application/octet-stream"}
ACCEPT = {"Accept": OCI_MANIFEST}
GC_TASK = "janitor.collect_garbage"
BLOBS_AT_UPLOAD_KEYS = "SELECT COUNT(*) FROM blobs WHERE storage_key LIKE 'uploads/%'"


@pytest.fixture(scope="module", params=["file", "oss"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReplicatedRegistry]:
    """Blobs no manifest references are collectable two seconds after their push; sweeps run
    only when a test queues them (beat's interval stays an hour), so that no sweep takes the
    blobs of a client's push in progress in the other tests. The policies of
    ``tests/test_policies.py`` hold (their repositories' names are used only there and below)."""
    storage: str = request.param
    root = tmp_path_factory.mktemp(f"replicas-{storage}")
    policies = root / "policies.yaml"
    policies.write_text(json.dumps(test_policies.RULES))
    with replicated_registry(
        storage, root, gc_grace_seconds="2", policies_file=str(policies)
    ) as running:
        yield running


@pytest.fixture
def replicas(registry: ReplicatedRegistry) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """A client of each gateway replica, bypassing the balancer, each connected already."""
    with registry.gateway(1) as one, registry.gateway(2) as two:
        for client in (one, two):
            assert client.get("/v2/").status_code == 200
        yield one, two


# --- helpers ---------------------------------------------------------------------------------


def race(*calls: Callable[[], httpx.Response]) -> tuple[list[httpx.Response], bool]:
    """Make the calls at the same moment, each in a thread of its own. Returns the answers,
    and whether the requests were all in flight together at some moment."""
    barrier = threading.Barrier(len(calls))
    answers: list[httpx.Response | BaseException | None] = [None] * len(calls)
    spans = [(0.0, 0.0)] * len(calls)

    def run(index: int) -> None:
        barrier.wait(30)
        began = time.monotonic()
        try:
            answers[index] = calls[index]()
        except BaseException as exc:
            answers[index] = exc
        spans[index] = (began, time.monotonic())

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done = []
    for answer in answers:
        if not isinstance(answer, httpx.Response):
            raise AssertionError(f"a racing request failed: {answer!r}")
        done.append(answer)
    return done, max(began for began, _ in spans) < min(ended for _, ended in spans)


def outcome(response: httpx.Response) -> str:
    """``416 BLOB_UPLOAD_INVALID``: the status and the spec's error codes, if any."""
    codes = []
    if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
        codes = error_codes(response)
    return " ".join([str(response.status_code), *codes])


def details(*responses: httpx.Response) -> str:
    """The error messages of ``responses``, to say why an outcome is not one allowed."""
    return "; ".join(r.text[:300] for r in responses if r.status_code >= 400)


def start_upload(client: httpx.Client, repo: str, prefix: bytes) -> str:
    """An upload holding ``prefix`` (acknowledged); returns its location."""
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    first = patch(client, started.headers["Location"], 0, prefix)
    assert first.status_code == 202, first.text
    assert first.headers["Range"] == f"0-{len(prefix) - 1}"
    return str(first.headers["Location"])


def patch(client: httpx.Client, location: str, offset: int, chunk: bytes) -> httpx.Response:
    return client.patch(
        location,
        content=chunk,
        headers={**OCTETS, "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
    )


def close(client: httpx.Client, location: str, data: bytes, final: bytes = b"") -> httpx.Response:
    """The closing PUT, with ``final`` as its last chunk and the digest of ``data``."""
    return client.put(location, params={"digest": sha256(data)}, content=final, headers=OCTETS)


def blob_problem(client: httpx.Client, repo: str, data: bytes) -> str | None:
    """Why the blob ``data`` does not read back exactly from ``repo`` (None when it does)."""
    try:
        response = client.get(f"/v2/{repo}/blobs/{sha256(data)}")
    except httpx.TransportError as exc:
        return f"GET of the acknowledged blob broke off: {exc}"
    if response.status_code != 200:
        return f"GET of the acknowledged blob: {outcome(response)}"
    if response.content != data:
        return f"the acknowledged blob reads back {len(response.content)} other bytes"
    return None


def absent_problem(client: httpx.Client, repo: str, data: bytes) -> str | None:
    """Why the blob ``data`` is readable although no upload of it was acknowledged."""
    response = client.head(f"/v2/{repo}/blobs/{sha256(data)}")
    return None if response.status_code == 404 else f"unacknowledged blob: HEAD {outcome(response)}"


@dataclass
class Rounds:
    """The rounds of a race: their outcomes, what was wrong in any of them, and the uploads
    they made (none may leave an object behind once it is over)."""

    name: str
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    together: int = 0  # rounds whose requests were all in flight at one moment

    def upload(self, client: httpx.Client, repo: str, prefix: bytes) -> str:
        location = start_upload(client, repo, prefix)
        self.uploads.append(location.rsplit("/", 1)[1])
        return location

    def race(self, *calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
        answers, together = race(*calls)
        self.together += together
        return answers

    def record(self, number: int, seen: str, *problems: str | None) -> None:
        self.outcomes[seen] += 1
        self.problems.extend(f"round {number}: {seen}: {p}" for p in problems if p)

    def check(self, registry: ReplicatedRegistry) -> None:
        try:
            eventually(lambda: not leftovers(registry, self.uploads), timeout=10)
        except AssertionError:
            self.problems += [f"left behind: {key}" for key in leftovers(registry, self.uploads)]
        rounds = sum(self.outcomes.values())
        print(
            f"\n[{registry.backend}] {self.name}: {dict(self.outcomes)}; "
            f"requests in flight together in {self.together} of {rounds} rounds"
        )
        assert not self.problems, "\n".join(self.problems[:20])
        assert self.together >= rounds / 2, "the racing requests did not overlap"


def leftovers(registry: ReplicatedRegistry, uploads: list[str]) -> list[str]:
    """The stored objects of ``uploads`` that outlive them: neither an upload in progress nor
    a blob's bytes (named as stored: the OSS driver's segment objects apart)."""
    in_progress = {uuid for (uuid,) in registry.query("SELECT uuid FROM uploads")}
    blobs = {key for (key,) in registry.query("SELECT storage_key FROM blobs")}
    found = []
    for upload in uploads:
        folder = registry.storage_root / "uploads" / upload
        if upload in in_progress or f"uploads/{upload}/data" in blobs or not folder.exists():
            continue
        found += [f"uploads/{upload}/{path.name}" for path in folder.iterdir()]
    return found


def settled(registry: ReplicatedRegistry) -> None:
    """Storage holds exactly what the database says, once the janitors have caught up."""
    try:
        eventually(registry.storage_matches_database, timeout=30, what="storage = database")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {registry.storage_difference()}") from None


def requests_served(registry: ReplicatedRegistry, names: list[str], **labels: str) -> list[float]:
    return [registry.counter(name, "registry_http_requests_total", **labels) for name in names]


# --- the balancer ----------------------------------------------------------------------------


def test_requests_on_one_connection_alternate_between_replicas(
    registry: ReplicatedRegistry, repo: str
) -> None:
    """Consecutive requests on one kept-alive client connection reach the two gateways in
    turn, and one gateway's consecutive calls to a service reach its two replicas in turn."""
    gateways = ["api-gateway-1", "api-gateway-2"]
    host, port = registry.host.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    served = []
    try:
        connection.request("GET", "/v2/")
        connection.getresponse().read()
        sock = connection.sock
        for _ in range(8):
            before = requests_served(registry, gateways, route="/v2/", method="GET")
            connection.request("GET", "/v2/")
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            assert connection.sock is sock, "the client connection was not kept alive"
            after = requests_served(registry, gateways, route="/v2/", method="GET")
            served.append([b - a for a, b in zip(before, after, strict=True)])
    finally:
        connection.close()
    assert served in ([[1, 0], [0, 1]] * 4, [[0, 1], [1, 0]] * 4), served

    services = ["manifest-service-1", "manifest-service-2"]
    with registry.gateway(1) as one:
        before = requests_served(registry, services, method="HEAD")
        for _ in range(8):
            assert one.head(f"/v2/{repo}/manifests/absent").status_code == 404
        after = requests_served(registry, services, method="HEAD")
    assert [b - a for a, b in zip(before, after, strict=True)] == [4, 4]


# --- uploads across replicas -----------------------------------------------------------------


def test_a_chunked_push_alternating_between_gateways_pulls_back_byte_for_byte(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Three blobs pushed in chunks, each request to the other gateway than the one before (with
    ``Content-Range``, and streamed without), the upload's status asked of the other one after
    each chunk; then the manifest. The image pulls back byte for byte from either gateway and
    through the balancer."""
    rng = random.Random(7)
    layers = [os.urandom(rng.randrange(300_000, 1_500_000)) for _ in range(3)]
    for number, data in enumerate(layers):
        cuts = sorted(rng.sample(range(1, len(data)), 4))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        started = replicas[number % 2].post(f"/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        offset = 0
        for index, chunk in enumerate(chunks[:-1]):
            client, other = replicas[(number + index + 1) % 2], replicas[(number + index) % 2]
            if number == 1:  # streamed, without Content-Range (chunked transfer encoding)
                half = len(chunk) // 2
                sent = client.patch(location, content=iter([chunk[:half], chunk[half:]]))
            else:
                sent = patch(client, location, offset, chunk)
            offset += len(chunk)
            assert sent.status_code == 202, sent.text
            assert sent.headers["Range"] == f"0-{offset - 1}"
            status = other.get(location)
            assert status.status_code == 204, status.text
            assert status.headers["Range"] == f"0-{offset - 1}"
        done = close(replicas[number % 2], location, data, chunks[-1])
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == sha256(data)

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    single = replicas[0].post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(config)}, content=config
    )
    assert single.status_code == 201, single.text
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers
            ],
        }
    ).encode()
    pushed = replicas[1].put(
        f"/v2/{repo}/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert pushed.status_code == 201, pushed.text

    for client in (*replicas, registry.http):
        for reference in ("v1", sha256(body)):
            manifest = client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
            assert manifest.status_code == 200, manifest.text
            assert manifest.content == body
        for data in [config, *layers]:
            assert blob_problem(client, repo, data) is None


def test_two_chunks_at_one_offset_on_two_replicas_one_is_accepted(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Each round: an upload holding some bytes; two different chunks at its end, sent at the
    same moment to the two gateways. One is 202; the other 416 ``BLOB_UPLOAD_INVALID`` with
    the upload's ``Range`` (without the accepted chunk if it came while that one was being
    written, with it if it came after). The closing PUT with the digest of the acknowledged
    bytes is 201, and the blob reads back exactly those bytes."""
    rng = random.Random(11)
    rounds = Rounds("PATCH against PATCH")
    for number in range(ROUNDS):
        prefix = os.urandom(rng.randrange(1, 64 * 1024))
        chunks = [os.urandom(rng.randrange(64 * 1024, 512 * 1024)) for _ in range(2)]
        location = rounds.upload(registry.http, repo, prefix)
        end = len(prefix)
        answers = rounds.race(
            partial(patch, replicas[0], location, end, chunks[0]),
            partial(patch, replicas[1], location, end, chunks[1]),
        )
        seen = " / ".join(outcome(a) for a in answers)
        accepted = [i for i, a in enumerate(answers) if a.status_code == 202]
        refused = [i for i, a in enumerate(answers) if outcome(a) == "416 BLOB_UPLOAD_INVALID"]
        if len(accepted) != 1 or len(refused) != 1:
            rounds.record(
                number, seen, f"not one 202 and one 416 BLOB_UPLOAD_INVALID: {details(*answers)}"
            )
            registry.http.delete(location)
            continue
        winner = chunks[accepted[0]]
        acknowledged = prefix + winner
        ranges = {f"0-{end - 1}": "before", f"0-{len(acknowledged) - 1}": "after"}
        given = answers[refused[0]].headers.get("Range")
        seen = f"202 + 416 with the Range {ranges.get(str(given), given)} the accepted chunk"
        closed = close(registry.http, location, acknowledged)
        rounds.record(
            number,
            seen,
            None if given in ranges else f"the 416's Range is {given!r}",
            None
            if answers[accepted[0]].headers.get("Range") == f"0-{len(acknowledged) - 1}"
            else f"the 202's Range is {answers[accepted[0]].headers.get('Range')!r}",
            None if closed.status_code == 201 else f"closing PUT: {outcome(closed)}",
            blob_problem(registry.http, repo, acknowledged),
        )
    rounds.check(registry)


def test_a_chunk_racing_the_closing_put(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Either the PUT closes the upload as it was (201; the chunk then finds no upload, 404
    ``BLOB_UPLOAD_UNKNOWN``, or finds it being closed, 416), or the chunk gets in first (202)
    and the PUT is refused: 416 while the chunk is written, or 400 ``DIGEST_INVALID`` after
    it, since its digest no longer matches the upload (which that ends)."""
    rng = random.Random(13)
    rounds = Rounds("PATCH against the closing PUT")
    for number in range(ROUNDS):
        prefix = os.urandom(rng.randrange(1, 64 * 1024))
        chunk = os.urandom(rng.randrange(64 * 1024, 512 * 1024))
        location = rounds.upload(registry.http, repo, prefix)
        for_patch, for_put = replicas[number % 2], replicas[(number + 1) % 2]
        sent, closed = rounds.race(
            partial(patch, for_patch, location, len(prefix), chunk),
            partial(close, for_put, location, prefix),
        )
        seen = f"PATCH {outcome(sent)}, PUT {outcome(closed)}"
        if closed.status_code == 201 and outcome(sent) in (
            "404 BLOB_UPLOAD_UNKNOWN",
            "416 BLOB_UPLOAD_INVALID",
        ):
            rounds.record(
                number,
                seen,
                blob_problem(registry.http, repo, prefix),
                absent_problem(registry.http, repo, prefix + chunk),
            )
        elif sent.status_code == 202 and outcome(closed) == "416 BLOB_UPLOAD_INVALID":
            # The upload holds the chunk: it closes with it.
            status = registry.http.get(location)
            done = close(registry.http, location, prefix + chunk)
            rounds.record(
                number,
                seen,
                None
                if status.headers.get("Range") == f"0-{len(prefix) + len(chunk) - 1}"
                else f"upload status {outcome(status)} {status.headers.get('Range')}",
                None if done.status_code == 201 else f"closing PUT again: {outcome(done)}",
                blob_problem(registry.http, repo, prefix + chunk),
            )
        elif sent.status_code == 202 and outcome(closed) == "400 DIGEST_INVALID":
            status = registry.http.get(location)
            rounds.record(
                number,
                seen,
                None if status.status_code == 404 else f"upload still there: {outcome(status)}",
                absent_problem(registry.http, repo, prefix),
            )
        else:
            rounds.record(number, seen, f"not an allowed outcome: {details(sent, closed)}")
            registry.http.delete(location)
    rounds.check(registry)


def test_a_closing_put_racing_a_cancel(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Exactly one wins: the PUT (201, the DELETE then finds no upload, 404) or the DELETE
    (204, the PUT 404). The blob is readable exactly when the PUT was 201. The PUT's last
    chunk is empty, small or large, so that either may come first."""
    rng = random.Random(17)
    rounds = Rounds("closing PUT against DELETE")
    for number in range(ROUNDS):
        prefix = os.urandom(rng.randrange(1, 64 * 1024))
        final = os.urandom(
            [0, rng.randrange(1, 4096), rng.randrange(64 * 1024, 512 * 1024)][number % 3]
        )
        location = rounds.upload(registry.http, repo, prefix)
        for_put, for_delete = replicas[number % 2], replicas[(number + 1) % 2]
        closed, cancelled = rounds.race(
            partial(close, for_put, location, prefix + final, final),
            partial(for_delete.delete, location),
        )
        seen = f"PUT {outcome(closed)}, DELETE {outcome(cancelled)}"
        if closed.status_code == 201 and outcome(cancelled) == "404 BLOB_UPLOAD_UNKNOWN":
            rounds.record(number, seen, blob_problem(registry.http, repo, prefix + final))
        elif cancelled.status_code == 204 and outcome(closed) == "404 BLOB_UPLOAD_UNKNOWN":
            rounds.record(number, seen, absent_problem(registry.http, repo, prefix + final))
        else:
            rounds.record(number, seen, f"not exactly one succeeded: {details(closed, cancelled)}")
    rounds.check(registry)


def test_two_closing_puts_at_once(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Two closing PUTs with different last chunks: exactly one is 201 and its blob reads
    back; the other is 404 ``BLOB_UPLOAD_UNKNOWN`` (closed already) or 416 (being closed), and
    its blob does not exist."""
    rng = random.Random(19)
    rounds = Rounds("closing PUT against closing PUT")
    for number in range(ROUNDS):
        prefix = os.urandom(rng.randrange(1, 64 * 1024))
        finals = [os.urandom(rng.randrange(64 * 1024, 512 * 1024)) for _ in range(2)]
        location = rounds.upload(registry.http, repo, prefix)
        answers = rounds.race(
            partial(close, replicas[0], location, prefix + finals[0], finals[0]),
            partial(close, replicas[1], location, prefix + finals[1], finals[1]),
        )
        seen = " / ".join(outcome(a) for a in answers)
        won = [i for i, a in enumerate(answers) if a.status_code == 201]
        lost = [
            i
            for i, a in enumerate(answers)
            if outcome(a) in ("404 BLOB_UPLOAD_UNKNOWN", "416 BLOB_UPLOAD_INVALID")
        ]
        if len(won) != 1 or len(lost) != 1:
            rounds.record(number, seen, f"not one 201 and one 404 or 416: {details(*answers)}")
            registry.http.delete(location)
            continue
        rounds.record(
            number,
            f"201 + {outcome(answers[lost[0]])}",
            blob_problem(registry.http, repo, prefix + finals[won[0]]),
            absent_problem(registry.http, repo, prefix + finals[lost[0]]),
        )
    rounds.check(registry)


# --- manifests and tags across replicas ------------------------------------------------------


@dataclass
class Manifests:
    """Manifests of one config and one layer, told apart by an annotation."""

    repo: str
    config: bytes
    layer: bytes

    @classmethod
    def pushed(cls, registry: ReplicatedRegistry, repo: str) -> Manifests:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
        layer = os.urandom(2048)
        registry.push_blob(repo, config)
        registry.push_blob(repo, layer)
        return cls(repo, config, layer)

    def body(self, name: str) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": sha256(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": sha256(self.layer), "size": len(self.layer)}
                ],
                "annotations": {"name": name},
            }
        ).encode()

    def put(self, client: httpx.Client, reference: str, body: bytes) -> httpx.Response:
        return client.put(
            f"/v2/{self.repo}/manifests/{reference}",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )

    def state(self, client: httpx.Client, reference: str) -> bytes | int:
        """What ``reference`` resolves to: the manifest's bytes, or the status."""
        response = client.get(f"/v2/{self.repo}/manifests/{reference}", headers=ACCEPT)
        return response.content if response.status_code == 200 else response.status_code

    def agreed(self, replicas: tuple[httpx.Client, httpx.Client], reference: str) -> bytes | int:
        """What both replicas say ``reference`` is (an AssertionError if they disagree)."""
        one, two = (self.state(client, reference) for client in replicas)
        assert one == two, f"{reference}: the replicas disagree: {one!r} against {two!r}"
        return one

    def tags(self, client: httpx.Client) -> list[str]:
        listed: list[str] = client.get(f"/v2/{self.repo}/tags/list").json()["tags"]
        return listed


def test_one_tag_pushed_to_two_manifests_at_once_ends_on_one_of_them(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Both PUTs are 201 (a new tag in even rounds, one that moves in odd rounds); the tag
    then names one of the two manifests, the same on both replicas, and both manifests exist."""
    manifests = Manifests.pushed(registry, repo)
    rounds = Rounds("one tag PUT to two manifests")
    for number in range(ROUNDS):
        tag = f"race-{number}"
        if number % 2:
            old = manifests.put(registry.http, tag, manifests.body(f"old-{number}"))
            assert old.status_code == 201, old.text
        bodies = [manifests.body(f"{side}-{number}") for side in ("a", "b")]
        answers = rounds.race(
            partial(manifests.put, replicas[0], tag, bodies[0]),
            partial(manifests.put, replicas[1], tag, bodies[1]),
        )
        seen = " / ".join(outcome(a) for a in answers)
        try:
            final = manifests.agreed(replicas, tag)
            by_digest = [manifests.agreed(replicas, sha256(body)) for body in bodies]
        except AssertionError as exc:
            rounds.record(number, seen, str(exc))
            continue
        rounds.record(
            number,
            seen,
            None if seen == "201 / 201" else f"not both 201: {details(*answers)}",
            None if final in bodies else f"the tag resolves to {final!r}",
            None if by_digest == bodies else "a manifest is missing",
            None if manifests.tags(registry.http).count(tag) == 1 else "tag list",
        )
    rounds.check(registry)


def test_a_tag_deleted_while_it_moves(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """DELETE of a tag racing a PUT that moves it to another manifest: the DELETE is 202 and
    the PUT 201; the tag is then gone (the DELETE came last) or names the new manifest, the
    same on both replicas; the manifest it named stays."""
    manifests = Manifests.pushed(registry, repo)
    rounds = Rounds("tag DELETE against tag move")
    for number in range(ROUNDS):
        tag = f"moving-{number}"
        old, new = manifests.body(f"old-{number}"), manifests.body(f"new-{number}")
        assert manifests.put(registry.http, tag, old).status_code == 201
        deleted, moved = rounds.race(
            partial(replicas[number % 2].delete, f"/v2/{repo}/manifests/{tag}"),
            partial(manifests.put, replicas[(number + 1) % 2], tag, new),
        )
        seen = f"DELETE {outcome(deleted)}, PUT {outcome(moved)}"
        try:
            final = manifests.agreed(replicas, tag)
            kept = manifests.agreed(replicas, sha256(old))
        except AssertionError as exc:
            rounds.record(number, seen, str(exc))
            continue
        listed = tag in manifests.tags(registry.http)
        rounds.record(
            number,
            f"{seen}: tag {'moved' if final == new else final!r}",
            None
            if (deleted.status_code, moved.status_code) == (202, 201)
            else details(deleted, moved),
            None if final in (404, new) else f"the tag resolves to {final!r}",
            None if kept == old else "the manifest the tag named is gone",
            None if listed == (final == new) else "the tag list disagrees",
        )
    rounds.check(registry)


def test_a_manifest_deleted_while_its_tag_moves(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """DELETE of a tagged manifest by digest racing a PUT that moves its tag to another: both
    succeed; the old manifest is gone and the tag names the new one, on both replicas."""
    manifests = Manifests.pushed(registry, repo)
    rounds = Rounds("manifest DELETE against tag move")
    for number in range(ROUNDS):
        tag = f"moving-{number}"
        old, new = manifests.body(f"old-{number}"), manifests.body(f"new-{number}")
        assert manifests.put(registry.http, tag, old).status_code == 201
        deleted, moved = rounds.race(
            partial(replicas[number % 2].delete, f"/v2/{repo}/manifests/{sha256(old)}"),
            partial(manifests.put, replicas[(number + 1) % 2], tag, new),
        )
        seen = f"DELETE {outcome(deleted)}, PUT {outcome(moved)}"
        try:
            final = manifests.agreed(replicas, tag)
            gone = manifests.agreed(replicas, sha256(old))
        except AssertionError as exc:
            rounds.record(number, seen, str(exc))
            continue
        rounds.record(
            number,
            seen,
            None
            if (deleted.status_code, moved.status_code) == (202, 201)
            else details(deleted, moved),
            None if final == new else f"the tag resolves to {final!r}",
            None if gone == 404 else f"the deleted manifest: {gone!r}",
        )
    rounds.check(registry)


def test_a_manifest_pushed_again_while_it_is_deleted(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """A PUT of a manifest under a tag racing a DELETE of the same manifest by digest: the PUT
    is 201 and the DELETE 202; afterwards the manifest and its tag exist together (the PUT
    came last) or are gone together, the same on both replicas."""
    manifests = Manifests.pushed(registry, repo)
    rounds = Rounds("manifest PUT against its DELETE")
    for number in range(ROUNDS):
        tag = f"again-{number}"
        body = manifests.body(f"again-{number}")
        assert manifests.put(registry.http, sha256(body), body).status_code == 201
        pushed, deleted = rounds.race(
            partial(manifests.put, replicas[number % 2], tag, body),
            partial(replicas[(number + 1) % 2].delete, f"/v2/{repo}/manifests/{sha256(body)}"),
        )
        seen = f"PUT {outcome(pushed)}, DELETE {outcome(deleted)}"
        try:
            by_tag = manifests.agreed(replicas, tag)
            by_digest = manifests.agreed(replicas, sha256(body))
        except AssertionError as exc:
            rounds.record(number, seen, str(exc))
            continue
        rounds.record(
            number,
            f"{seen}: {'kept' if by_digest == body else 'deleted'}",
            None
            if (pushed.status_code, deleted.status_code) == (201, 202)
            else details(pushed, deleted),
            None
            if (by_tag, by_digest) in ((body, body), (404, 404))
            else f"tag {by_tag!r}, digest {by_digest!r}",
        )
    rounds.check(registry)


# --- real clients through the balancer -------------------------------------------------------


@pytest.mark.client
def test_every_replica_reads_a_change_at_once(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client], repo: str
) -> None:
    """Each manifest service keeps manifests and tag lists in memory (counted as hits below); a
    change made through one gateway (a new tag, a moved tag, a deleted tag, a manifest deleted
    by digest) is in what either gateway answers next, whichever manifest service replica
    serves it: the tag list, each tag's manifest, each manifest by digest."""
    manifests = Manifests.pushed(registry, repo)
    services = ("manifest-service-1", "manifest-service-2")
    metric = "registry_read_cache_total"
    hits = [registry.counter(name, metric, result="hit") for name in services]
    bodies = [manifests.body(f"m{number}") for number in range(3)]
    expected: dict[str, bytes] = {}
    gone: list[str] = []

    def read_everywhere() -> None:
        for _ in range(3):
            for client in replicas:
                assert manifests.tags(client) == sorted(expected)
                for tag, body in expected.items():
                    assert manifests.state(client, tag) == body
                    assert manifests.state(client, sha256(body)) == body
                for reference in gone:
                    assert manifests.state(client, reference) == 404, reference

    def delete(reference: str) -> Callable[[httpx.Client], httpx.Response]:
        return lambda client: client.delete(f"/v2/{repo}/manifests/{reference}")

    changes: list[tuple[str, Callable[[httpx.Client], httpx.Response], dict[str, bytes]]] = [
        ("new tag a", partial(manifests.put, reference="a", body=bodies[0]), {"a": bodies[0]}),
        ("new tag b", partial(manifests.put, reference="b", body=bodies[1]), {"b": bodies[1]}),
        ("a moved", partial(manifests.put, reference="a", body=bodies[1]), {"a": bodies[1]}),
        ("new tag c", partial(manifests.put, reference="c", body=bodies[2]), {"c": bodies[2]}),
        ("b deleted", delete("b"), {}),
        ("c's manifest deleted", delete(sha256(bodies[2])), {}),
    ]
    read_everywhere()
    for number, (change, make, tagged) in enumerate(changes):
        answer = make(replicas[number % 2])
        assert answer.status_code in (201, 202), f"{change}: {answer.status_code} {answer.text}"
        expected.update(tagged)
        if change == "b deleted":
            del expected["b"]
            gone.append("b")
        if change == "c's manifest deleted":
            del expected["c"]
            gone.extend(["c", sha256(bodies[2])])
        read_everywhere()
    for name, before in zip(services, hits, strict=True):
        assert registry.counter(name, metric, result="hit") > before, f"{name} kept nothing"


def test_skopeo_copies_an_image_in_and_back_out(
    registry: ReplicatedRegistry, repo: str, skopeo: skopeo_client.Skopeo, tmp_path: Path
) -> None:
    """``skopeo copy`` of a three-layer image in, and back out: the same digests and bytes."""
    image = single_image(tmp_path / "pushed")
    remote = f"docker://{registry.host}/{repo}:v1"
    digest, _ = skopeo.push(image, remote)
    assert digest == skopeo_client.tagged(image.path)["digest"]
    pulled = skopeo.pull(remote, tmp_path / "pulled")
    skopeo_client.assert_same_image(image, pulled)


@pytest.mark.client
def test_podman_pushes_and_pulls_back_an_image(
    registry: ReplicatedRegistry, repo: str, podman: Podman, tmp_path: Path
) -> None:
    """``podman push``, every local image removed, ``podman pull``: the same image, whose
    layers unpack to the config's ``diff_ids``."""
    image = single_image(tmp_path / "image")
    config_digest, diff_ids = podman_client.layout_image(
        image, podman_client.tagged(image)["digest"]
    )
    image_id = podman.pull(f"oci:{image.path}:latest")
    remote = f"{registry.host}/{repo}"
    digest, _ = podman.push(image_id, f"docker://{remote}:v1")
    podman_client.assert_pushed_image(registry, repo, digest, image, config_digest)
    podman.run("rmi", "--all", "--force")
    assert podman.pull_remote(f"{remote}:v1") == image_id
    details = podman.inspect(f"{remote}:v1")
    assert details["Digest"] == digest
    assert details["RootFS"]["Layers"] == diff_ids


@pytest.mark.client
def test_containerd_pushes_and_pulls_back_an_image(
    registry: ReplicatedRegistry,
    repo: str,
    containerd: containerd_client.Containerd,
    tmp_path: Path,
) -> None:
    """``ctr images push``, then ``ctr images pull`` into a fresh namespace: every blob fetched
    again, checked and unpacked."""
    image = single_image(tmp_path / "image")
    manifest_digest = containerd_client.tagged(image)["digest"]
    blobs = containerd_client.image_blobs(image, manifest_digest)
    local = containerd.namespace()
    local.import_layout(image, "--base-name", f"import/{repo}")
    local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:latest")
    containerd_client.assert_manifest(
        registry, repo, "v1", image.blobs[manifest_digest], OCI_MANIFEST
    )
    pulled = containerd.namespace()
    pulled.pull(f"{registry.host}/{repo}:v1")
    assert pulled.images() == {f"{registry.host}/{repo}:v1": (OCI_MANIFEST, manifest_digest)}
    status = pulled.check(f"{registry.host}/{repo}:v1")
    assert "complete (4/4)" in status and status.endswith("true"), status
    containerd_client.assert_pulled(pulled, image, repo, [manifest_digest, *blobs])


@pytest.mark.client
def test_docker_pushes_and_pulls_back_an_image(
    registry: ReplicatedRegistry, repo: str, docker_engine: DockerEngine
) -> None:
    """``docker push`` of a two-layer image through the balancer, ``docker rmi``, ``docker
    pull``: the engine ends with the image it pushed, under the digest the registry serves."""
    push_remove_and_pull(docker_engine, registry, repo, headers={})


# --- replicas lost -------------------------------------------------------------------------


def test_one_replica_of_each_service_down_the_other_serves(
    registry: ReplicatedRegistry, repo: str
) -> None:
    """With one gateway, one blob service and one manifest service killed, images push and
    pull through the balancer; restarted, the replicas are back in it and serve."""
    down = ["api-gateway-1", "blob-service-2", "manifest-service-1"]
    for name in down:
        registry.kill(name)
    try:
        for number in range(3):
            layers = [os.urandom(100_000), os.urandom(300_000)]
            body, _ = registry.push_image(repo, f"v{number}", layers)
            manifest = registry.http.get(f"/v2/{repo}/manifests/v{number}", headers=ACCEPT)
            assert manifest.content == body
            for data in layers:
                assert blob_problem(registry.http, repo, data) is None
    finally:
        for name in down:
            registry.restart(name)

    def all_up() -> bool:
        servers = [row for row in registry.balancer_stats() if row["svname"] in down]
        return len(servers) == len(down) and all(row["status"] == "UP" for row in servers)

    eventually(all_up, timeout=30, what="the restarted replicas back in the balancer")
    with registry.gateway(1) as one:
        assert one.get(f"/v2/{repo}/manifests/v0", headers=ACCEPT).status_code == 200


# --- garbage collection and the soak ---------------------------------------------------------

SWEEP_SUMMARY = re.compile(r"collect_garbage: examined (\d+), deleted (\d+)")
REPOSITORIES = ["replicas/alpha", "replicas/beta", "replicas/gamma"]
BASE_LAYER = b"base layer " + bytes(range(256)) * 64  # in every image


@dataclass(frozen=True)
class Image:
    repository: str
    digest: str
    body: bytes
    blobs: dict[str, bytes]


@dataclass
class Load:
    """What the clients were told, and the figures of the run, shared by the threads."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: dict[str, tuple[Image, str | None]] = field(default_factory=dict)  # by digest
    deleted: dict[str, Image] = field(default_factory=dict)
    figures: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def running(self) -> bool:
        return time.monotonic() < self.deadline and len(self.errors) < 20

    def count(self, name: str) -> None:
        with self.lock:
            self.figures[name] += 1

    def thread(self, name: str, work: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except Exception:
                with self.lock:
                    self.errors.append(f"{name}: {traceback.format_exc()}")

        return threading.Thread(target=run, name=name, daemon=True)


def _upload(client: httpx.Client, repo: str, data: bytes, style: int) -> None:
    """Upload ``data`` in one of the spec's ways: a single POST, POST then PUT, or chunks."""
    path = f"/v2/{repo}/blobs/uploads/"
    if style == 0:
        done = client.post(path, params={"digest": sha256(data)}, content=data, headers=OCTETS)
    else:
        started = client.post(path)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if style == 2:
            half = len(data) // 2
            first = patch(client, location, 0, data[:half])
            assert first.status_code == 202, first.text
            location, data_left = first.headers["Location"], data[half:]
        else:
            data_left = data
        done = close(client, location, data, data_left)
    assert done.status_code == 201, f"{done.status_code} {done.text}"


def _push(load: Load, client: httpx.Client, rng: random.Random, pusher: int, serial: int) -> None:
    """Push one image (a shared base layer, a layer of its own, a config) and record it once
    acknowledged; a manifest refused because a sweep took a blob first is pushed again."""
    repo = rng.choice(REPOSITORIES)
    config = json.dumps({"architecture": "amd64", "os": "linux", "by": [pusher, serial]}).encode()
    layers = [BASE_LAYER, os.urandom(rng.randrange(1_000, 200_000))]
    blobs = {sha256(d): d for d in [config, *layers]}
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers
            ],
        }
    ).encode()
    tag = None if serial % 4 == 0 else f"p{pusher}-{serial}"
    for _attempt in range(10):
        for digest, data in blobs.items():
            if client.head(f"/v2/{repo}/blobs/{digest}").status_code != 200:
                _upload(client, repo, data, rng.randrange(3))
        if rng.random() < 0.3:  # garbage: a blob no manifest will use
            _upload(client, repo, os.urandom(rng.randrange(100, 5_000)), rng.randrange(3))
        response = client.put(
            f"/v2/{repo}/manifests/{tag or sha256(body)}",
            content=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        if response.status_code == 201:
            with load.lock:
                load.figures["pushes acknowledged"] += 1
                load.alive[sha256(body)] = (Image(repo, sha256(body), body, blobs), tag)
            return
        assert outcome(response) == "400 MANIFEST_BLOB_UNKNOWN", (
            f"manifest PUT: {response.status_code} {response.text}"
        )
        load.count("pushes again after a sweep took a blob")
    load.count("pushes given up")


def _pusher(registry: ReplicatedRegistry, load: Load, number: int) -> None:
    rng = random.Random(number)
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        serial = 0
        while load.running():
            serial += 1
            _push(load, client, rng, number, serial)


def _deleter(registry: ReplicatedRegistry, load: Load) -> None:
    rng = random.Random(99)
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        while load.running():
            time.sleep(rng.uniform(0.1, 0.4))
            with load.lock:
                if len(load.alive) < 6:
                    continue
                digest = rng.choice(sorted(load.alive))
                image, tag = load.alive[digest]
                by_tag = tag is not None and rng.random() < 0.4
                if by_tag:
                    load.alive[digest] = (image, None)  # the manifest stays, untagged
                else:
                    del load.alive[digest]
            response = client.delete(
                f"/v2/{image.repository}/manifests/{tag if by_tag else digest}"
            )
            assert response.status_code == 202, f"{response.status_code} {response.text}"
            if by_tag:
                load.count("tags deleted")
            else:
                load.count("manifests deleted")
                with load.lock:
                    load.deleted[digest] = image


def _sweeper(registry: ReplicatedRegistry, load: Load, every: float) -> None:
    """Queue garbage collection for the janitor workers, as beat does on its schedule."""
    while load.running():
        registry.send_janitor_task(GC_TASK)
        load.count("sweeps queued")
        time.sleep(every)


def _pull_problems(client: httpx.Client, image: Image, tag: str | None) -> list[str]:
    """Why ``image`` does not pull in full (nothing when it does)."""
    problems = []
    for reference in (image.digest, tag) if tag else (image.digest,):
        response = client.get(f"/v2/{image.repository}/manifests/{reference}", headers=ACCEPT)
        if response.status_code != 200 or response.content != image.body:
            problems.append(f"manifest {image.repository}:{reference}: {outcome(response)}")
    for digest, data in image.blobs.items():
        problem = blob_problem(client, image.repository, data)
        if problem:
            problems.append(f"blob {digest} of {image.repository}@{image.digest}: {problem}")
    return problems


def _sweeps(registry: ReplicatedRegistry) -> dict[str, tuple[int, int]]:
    """Per janitor worker: the sweeps it ran (skipped ones aside) and the blobs they deleted."""
    found = {}
    for name in ("janitor-1", "janitor-2"):
        summaries = SWEEP_SUMMARY.findall(registry.log(name))
        found[name] = (len(summaries), sum(int(deleted) for _, deleted in summaries))
    return found


def _gc_tasks_done(registry: ReplicatedRegistry) -> float:
    return sum(
        registry.counter(name, "registry_janitor_tasks_total", task=GC_TASK)
        for name in ("janitor-1", "janitor-2")
    )


def _run_load(
    registry: ReplicatedRegistry, seconds: float, pushers: int, sweep_every: float
) -> Load:
    load = Load(deadline=time.monotonic() + seconds)
    done_before = _gc_tasks_done(registry)
    threads = [
        *(load.thread(f"pusher-{i}", partial(_pusher, registry, load, i)) for i in range(pushers)),
        load.thread("deleter", partial(_deleter, registry, load)),
        load.thread("sweeper", partial(_sweeper, registry, load, sweep_every)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
        assert not thread.is_alive(), f"{thread.name} did not stop"
    queued = load.figures["sweeps queued"]
    eventually(
        lambda: _gc_tasks_done(registry) >= done_before + queued,
        timeout=60,
        what="every queued sweep run",
    )
    return load


def _check_pulls(registry: ReplicatedRegistry, load: Load) -> tuple[int, list[str]]:
    """Pull every image the clients were told exists, four at a time: how many pulled in full,
    and what is wrong with the others; and every deleted manifest must be gone."""
    images = list(load.alive.values())

    def check(part: list[tuple[Image, str | None]]) -> list[list[str]]:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            return [_pull_problems(client, image, tag) for image, tag in part]

    with ThreadPoolExecutor(4) as pool:
        found = [p for part in pool.map(check, [images[i::4] for i in range(4)]) for p in part]
    lost = [problem for problems in found for problem in problems]
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        for image in load.deleted.values():
            response = client.get(f"/v2/{image.repository}/manifests/{image.digest}")
            if response.status_code != 404:
                lost.append(f"deleted manifest {image.digest}: {outcome(response)}")
    return sum(1 for problems in found if not problems), lost


def reconcile(registry: ReplicatedRegistry) -> str:
    """``registry-admin reconcile`` with no grace period (nothing is in flight); its summary."""
    result = registry.admin("reconcile", "--grace", "0s")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_garbage_collection_on_both_janitors_during_pushes_loses_nothing(
    registry: ReplicatedRegistry,
) -> None:
    """Clients push (some blobs no manifest uses) and delete images while sweeps are queued
    for the two janitor workers every half second, with a two-second grace period: every
    image whose push was acknowledged and not deleted pulls in full, before and after a last
    sweep that takes everything unreferenced; both workers swept and collected, and storage
    matches the database (it starts from a reconciled state: earlier tests report their own
    leftovers)."""
    reconcile(registry)
    before = _sweeps(registry)
    load = _run_load(registry, seconds=10, pushers=3, sweep_every=0.5)
    after = _sweeps(registry)
    full, lost = _check_pulls(registry, load)
    final = registry.admin("gc", "--grace", "0s")
    assert final.returncode == 0, final.stderr
    full_after, lost_after = _check_pulls(registry, load)
    lost += [f"after the last gc: {p}" for p in lost_after]
    ran = {name: after[name][0] - before[name][0] for name in after}
    collected = {name: after[name][1] - before[name][1] for name in after}
    print(
        f"\n[{registry.backend}] gc on two janitors: {dict(load.figures)}; sweeps run {ran}, "
        f"blobs collected {collected}; pulled back in full: {full}, after a last gc "
        f"({final.stdout.strip()}): {full_after}; lost: {len(lost)}"
    )
    assert load.errors == [], "\n".join(load.errors[:5])
    assert lost == [], "\n".join(lost[:20])
    assert load.figures["pushes given up"] == 0
    assert all(count > 0 for count in ran.values()), f"a janitor ran no sweep: {ran}"
    assert sum(collected.values()) > 0, "the sweeps collected nothing: no race happened"
    settled(registry)


def test_soak(registry: ReplicatedRegistry) -> None:
    """Four clients push through the balancer for twenty seconds, one deletes manifests and
    tags, and sweeps are queued for both janitors every second. Then every image whose push
    was acknowledged and not deleted pulls in full (manifest and every blob, byte for byte),
    ``registry-admin reconcile`` finds nothing to repair, storage matches the database (the
    soak starts from a reconciled state), and every process of every replica still runs."""
    reconcile(registry)
    load = _run_load(registry, seconds=20, pushers=4, sweep_every=1.0)
    full, lost = _check_pulls(registry, load)
    print(
        f"\n[{registry.backend}] soak: {load.figures['pushes acknowledged']} pushes "
        f"acknowledged, {load.figures['manifests deleted']} of them deleted, {full} pulled "
        f"back in full, {len(load.alive) - full} lost; {dict(load.figures)}"
    )
    eventually(
        lambda: registry.query(BLOBS_AT_UPLOAD_KEYS)[0][0] == 0,
        timeout=60,
        what="every blob promoted",
    )
    settled(registry)
    reconciled = reconcile(registry)
    print(f"[{registry.backend}] soak: then {reconciled}")
    assert load.errors == [], "\n".join(load.errors[:5])
    assert lost == [], "\n".join(lost[:20])
    assert load.figures["pushes given up"] == 0
    assert re.search(r"deleted 0 .*moved 0,", reconciled), reconciled
    exited = [process.name for process, popen in registry.processes if popen.poll() is not None]
    assert exited == [], f"processes that exited during the run: {exited}"


def test_two_replicas_pushing_at_once_never_take_a_repository_past_its_quota(
    registry: ReplicatedRegistry, replicas: tuple[httpx.Client, httpx.Client]
) -> None:
    """``tests/test_policies.py``'s quota race, the pushes sent half to each gateway replica
    (and so to both manifest service replicas behind the balancer): exactly three fit."""
    name = f"burst/replicas-{registry.backend}"
    pushes = test_policies.PUSHES
    manifests = [
        test_policies.other_manifest(registry, name, bytes([i]) * 1000) for i in range(pushes)
    ]

    def put(item: tuple[int, bytes]) -> int:
        client = replicas[item[0] % 2]
        headers = {"Content-Type": OCI_MANIFEST}
        return client.put(
            f"/v2/{name}/manifests/m{item[0]}", content=item[1], headers=headers
        ).status_code

    with ThreadPoolExecutor(pushes) as pool:
        answers = list(pool.map(put, enumerate(manifests)))
    assert sorted(answers) == [201] * 3 + [403] * (pushes - 3), answers


def test_webhooks_from_two_replicas_of_everything_arrive_once_each_in_push_order(
    tmp_path: Path,
) -> None:
    """Two replicas of every process on files, with one webhook endpoint: four clients push
    through the balancer for eight seconds, so that both manifest services record events and
    both janitors' delivery workers take their wake-ups. Every push answered 201 reaches the
    endpoint under one delivery id (a request repeated carries the same one), each
    repository's in the order its client was answered."""
    audit = Receiver().start()
    endpoint = {
        "name": "audit",
        "url": audit.url("/audit"),
        "actions": ["push"],
        "ignore_media_types": [test_notification_faults.BLOB],
    }
    (tmp_path / "notifications.json").write_text(json.dumps({"endpoints": [endpoint]}))
    try:
        with replicated_registry(
            "file",
            tmp_path,
            notifications_file=str(tmp_path / "notifications.json"),
            # Beat's own look for due events a minute apart: the dispatches the workers take
            # during the test are the services' wake-ups.
            notifications_poll_seconds="60",
        ) as registry:
            stem = f"hooks-{uuid.uuid4().hex[:8]}"
            pushers = [
                test_notification_faults.Pusher(registry, f"{stem}/client-{i}") for i in range(4)
            ]
            until = threading.Event()
            threads = [threading.Thread(target=p.run, args=(until,)) for p in pushers]
            for thread in threads:
                thread.start()
            time.sleep(8)
            until.set()
            for thread in threads:
                thread.join(60)

            def arrived(pusher: test_notification_faults.Pusher) -> list[tuple[str, str]]:
                return test_notification_faults._first_arrivals(audit, "/audit", pusher.repository)

            eventually(
                lambda: all(len(arrived(p)) >= len(p.acknowledged) for p in pushers),
                timeout=60,
                what="every acknowledged push's event",
            )
            time.sleep(1)  # an event sent twice under two delivery ids would show by now
            for pusher in pushers:
                assert pusher.unanswered == []
                assert len(pusher.acknowledged) > 10
                assert [digest for _, digest in arrived(pusher)] == pusher.acknowledged
            workers = [f"janitor-notifications-{n}" for n in (1, 2)]
            received = re.compile(r"janitor\.notifications\.dispatch\[[^\]]+\] received")
            took = [len(received.findall(registry.log(w))) for w in workers]
            assert min(took) > 5, f"wake-ups taken by each delivery worker: {took}"
    finally:
        audit.stop()
