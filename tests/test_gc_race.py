"""Online garbage collection racing real clients: threads push images that share layers, other
threads delete manifests and tags, and ``registry-admin gc`` sweeps in a loop the whole time,
with a grace period short enough that blobs a client pushed a moment ago are collectable.

A client that loses a race with a sweep must get ``MANIFEST_BLOB_UNKNOWN`` for its manifest
(and push again, as real clients do); what a client was told exists must never lose a byte.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest

from tests.conftest import registry_fixture
from tests.registry import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryUnderTest,
    eventually,
    sha256,
)

pytestmark = pytest.mark.timeout(240)

DURATION = 20.0  # seconds of racing per backend
PUSHERS = 6
DELETERS = 2
REPOSITORIES = ["race/alpha", "race/beta", "race/gamma"]
TAGS = ["latest", "stable", "v1", "v2"]
MAX_ATTEMPTS = 20  # pushes of one image before the test gives up on it
SLOW_CLIENTS = 0.2  # the share of image pushes that wait before their manifest

BASE_LAYER = b"base layer " + bytes(range(256)) * 16  # in every image
MIDDLE_LAYERS = [f"middle layer {i} ".encode() * 200 for i in range(3)]  # in some images

UNREFERENCED_BLOBS = (
    "SELECT COUNT(*) FROM blobs b"
    " WHERE NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.digest = b.digest)"
)


# A registry of each test's own whose unreferenced blobs become collectable two seconds after
# they were pushed (and, with ``gc --grace 1s``, after one).
registry = registry_fixture("gc-race", scope="function", isolated=True, gc_grace_seconds="2")


@dataclass(frozen=True)
class Image:
    repository: str
    digest: str
    body: bytes
    blobs: tuple[str, ...]


@dataclass
class Race:
    """What the clients were told, and the figures of the run, shared by the threads."""

    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    alive: dict[tuple[str, str], Image] = field(default_factory=dict)
    tags: set[tuple[str, str]] = field(default_factory=set)
    pushes: int = 0
    retries: int = 0
    given_up: int = 0
    manifest_deletes: int = 0
    tag_deletes: int = 0
    tags_already_gone: int = 0
    mounts: int = 0
    sweeps: int = 0
    collected: int = 0
    examined: int = 0
    lost: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def running(self) -> bool:
        return time.monotonic() < self.deadline and len(self.errors) < 20

    def count(self, name: str, by: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + by)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def _thread(race: Race, name: str, work: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except Exception:
            race.error(f"{name}: {traceback.format_exc()}")

    return threading.Thread(target=run, name=name, daemon=True)


def _pull_problems(client: httpx.Client, image: Image) -> list[str]:
    """Why ``image`` does not pull in full (nothing when it does)."""
    problems = []
    response = client.get(
        f"/v2/{image.repository}/manifests/{image.digest}", headers={"Accept": OCI_MANIFEST}
    )
    if response.status_code != 200 or response.content != image.body:
        problems.append(f"manifest {image.repository}@{image.digest}: {response.status_code}")
    for digest in image.blobs:
        blob = client.get(f"/v2/{image.repository}/blobs/{digest}")
        if blob.status_code != 200 or sha256(blob.content) != digest:
            problems.append(
                f"blob {image.repository}@{digest} of {image.digest}: {blob.status_code} "
                f"{blob.text[:200] if blob.status_code != 200 else 'wrong bytes'}"
            )
    return problems


# --- the clients -----------------------------------------------------------------------------


def _ensure_blob(
    client: httpx.Client, race: Race, repo: str, data: bytes, rng: random.Random
) -> None:
    """As a client does: skip a blob the repository already has (HEAD), else mount a shared
    layer from another repository, else upload it."""
    digest = sha256(data)
    if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return
    if data == BASE_LAYER or data in MIDDLE_LAYERS:
        source = rng.choice([r for r in REPOSITORIES if r != repo])
        mount = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source})
        if mount.status_code == 201:
            race.count("mounts")
            return
        assert mount.status_code == 202, mount.text
        done = client.put(mount.headers["Location"], params={"digest": digest}, content=data)
        assert done.status_code == 201, done.text
        return
    done = client.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": digest},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text


def _pusher(registry: RegistryUnderTest, race: Race, number: int) -> None:
    rng = random.Random(number)
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        serial = 0
        while race.running():
            serial += 1
            repo = rng.choice(REPOSITORIES)
            own_layer = os.urandom(rng.randrange(500, 3000))
            layers = [BASE_LAYER, *rng.sample(MIDDLE_LAYERS, rng.randrange(0, 3)), own_layer]
            config = json.dumps(
                {"architecture": "amd64", "os": "linux", "pusher": number, "serial": serial}
            ).encode()
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers
                ],
            }
            body = json.dumps(manifest).encode()
            digest = sha256(body)
            tag = rng.choice([*TAGS, None])  # by tag (which may move), or by digest
            for _attempt in range(MAX_ATTEMPTS):
                for data in [config, *layers]:
                    _ensure_blob(client, race, repo, data, rng)
                if rng.random() < SLOW_CLIENTS:
                    # A slow client: its blobs may be collected before its manifest comes.
                    time.sleep(rng.uniform(0.5, 2.0))
                response = client.put(
                    f"/v2/{repo}/manifests/{tag or digest}",
                    content=body,
                    headers={"Content-Type": OCI_MANIFEST},
                )
                if response.status_code == 201:
                    break
                if response.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in response.text:
                    race.count("retries")  # lost a race with a sweep: push the image again
                    continue
                race.error(
                    f"manifest PUT {repo}:{tag or digest}: {response.status_code} "
                    f"{response.text[:300]}"
                )
                return
            else:
                race.count("given_up")
                continue
            image = Image(repo, digest, body, tuple(sha256(d) for d in [config, *layers]))
            # Told it exists, and no deleter knows it yet: it must pull in full right now.
            problems = _pull_problems(client, image)
            with race.lock:
                race.pushes += 1
                race.lost.extend(f"just after its push: {p}" for p in problems)
                race.alive[(repo, digest)] = image
                if tag is not None:
                    race.tags.add((repo, tag))


def _deleter(registry: RegistryUnderTest, race: Race, number: int) -> None:
    rng = random.Random(1000 + number)
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        while race.running():
            time.sleep(rng.uniform(0.05, 0.25))
            with race.lock:
                if rng.random() < 0.3 and race.tags:
                    repo, tag = rng.choice(sorted(race.tags))
                    race.tags.discard((repo, tag))
                    victim = None
                elif len(race.alive) > 5:
                    victim = race.alive.pop(rng.choice(sorted(race.alive)))
                else:
                    continue
            if victim is None:
                # The manifest stays (untagged manifests are kept): only the tag goes.
                response = client.delete(f"/v2/{repo}/manifests/{tag}")
                if response.status_code == 202:
                    race.count("tag_deletes")
                elif response.status_code == 404:
                    race.count("tags_already_gone")  # its manifest was deleted meanwhile
                else:
                    race.error(f"DELETE {repo}:{tag}: {response.status_code} {response.text}")
                continue
            response = client.delete(f"/v2/{victim.repository}/manifests/{victim.digest}")
            if response.status_code == 202:
                race.count("manifest_deletes")
            else:
                race.error(
                    f"DELETE {victim.repository}@{victim.digest}: {response.status_code} "
                    f"{response.text}"
                )


SUMMARY = re.compile(r"examined (\d+), deleted (\d+)")


def _collector(registry: RegistryUnderTest, race: Race) -> None:
    while race.running():
        result = registry.admin("gc", "--grace", "1s", timeout=120)
        if result.returncode != 0:
            race.error(f"gc: status {result.returncode}: {result.stderr[-1000:]}")
            continue
        found = SUMMARY.search(result.stdout)
        assert found is not None, result.stdout
        with race.lock:
            race.sweeps += 1
            race.examined += int(found[1])
            race.collected += int(found[2])


# --- the test --------------------------------------------------------------------------------


def test_gc_never_takes_a_blob_that_a_pushed_manifest_references(
    registry: RegistryUnderTest,
) -> None:
    race = Race(deadline=time.monotonic() + DURATION)
    threads = [
        *(
            _thread(race, f"pusher-{i}", partial(_pusher, registry, race, i))
            for i in range(PUSHERS)
        ),
        *(
            _thread(race, f"deleter-{i}", partial(_deleter, registry, race, i))
            for i in range(DELETERS)
        ),
        _thread(race, "gc", partial(_collector, registry, race)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + 150)
        assert not thread.is_alive(), f"{thread.name} did not stop"

    # Every manifest the clients were told exists (and did not delete) pulls in full...
    with httpx.Client(base_url=registry.url, timeout=60) as client:
        survivors = list(race.alive.values())
        for image in survivors:
            race.lost.extend(f"after the race: {p}" for p in _pull_problems(client, image))

        # ...and still does after a last sweep that takes everything unreferenced.
        final = registry.admin("gc", "--grace", "0s")
        assert final.returncode == 0, final.stderr
        for image in survivors:
            race.lost.extend(f"after the last gc: {p}" for p in _pull_problems(client, image))

    unreferenced = registry.query(UNREFERENCED_BLOBS)[0][0]
    deleting = registry.query("SELECT COUNT(*) FROM blobs WHERE state = 'deleting'")[0][0]
    blob_rows = registry.query("SELECT COUNT(*) FROM blobs")[0][0]
    worker_alive = registry.process("janitor").poll() is None
    print(
        f"\n[{registry.backend}] {DURATION:.0f} s, {PUSHERS} pushers, {DELETERS} deleters, "
        f"1 collector: {race.pushes} images pushed ({race.retries} retries after "
        f"MANIFEST_BLOB_UNKNOWN, {race.given_up} given up, {race.mounts} mounts), "
        f"{race.manifest_deletes} manifests and {race.tag_deletes} tags deleted "
        f"({race.tags_already_gone} tags already gone), {race.sweeps} sweeps examined "
        f"{race.examined} reviews and collected {race.collected} blobs; {len(survivors)} "
        f"manifests checked, {blob_rows} blobs left; last gc: {final.stdout.strip()}; "
        f"lost: {len(race.lost)}; janitor worker alive: {worker_alive}"
    )

    assert race.errors == [], "\n".join(race.errors[:5])
    assert race.lost == [], "\n".join(race.lost[:20])
    assert race.given_up == 0
    assert race.pushes > 0 and race.manifest_deletes > 0 and race.sweeps > 0
    assert race.collected > 0, "the sweeps collected nothing: the race did not happen"
    assert unreferenced == 0
    assert deleting == 0
    try:
        eventually(registry.storage_matches_database, timeout=30, what="storage = database")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {registry.storage_difference()}") from None
