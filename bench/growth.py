"""How request and housekeeping costs grow with the registry (``make bench ARGS="--scenarios
growth"``): at each size (10,000, 100,000 and 1,000,000 blobs by default), a MariaDB database
is filled by the scale fixture (``bench.scale``), this registry is started on it (with Redis),
and the bench measures

- the latency of single requests, one at a time over one connection (median and p99 of
  ``--requests`` each, on content picked at random across the whole registry): manifest PUT,
  GET by tag and by digest, blob HEAD, a tag page, a catalog page, a referrers list, a mount;
- idle housekeeping, run in a process of its own as the janitor runs it: a garbage-collection
  run, the hourly reconcile and ``registry-admin gc --dry-run``, each's time, the rows the
  server read meanwhile (the sum of MariaDB's ``Handler_read_*`` counters: index entries and
  table rows; the registry's own idle polling adds a few) and the storage requests it made.

The figure is each measure's ratio from the smallest size to the largest: 1.0 is flat.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.scale import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, fill

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
WARM = 20  # requests of each kind before the measured ones
HOUSEKEEPING = {
    "idle garbage collection": "gc.collect_garbage(storage)",
    "idle reconcile (hourly)": "reconcile.reconcile(storage)",
    "gc --dry-run": "gc.collect_garbage(storage, dry_run=True)",
}
# Run in a process of its own, with the registry's settings: times the work alone (not the
# interpreter's start), counts the storage driver's calls, and prints both.
_HOUSEKEEPING_RUN = """
import asyncio, json, sys, time
from janitor import gc, reconcile
from shared.storage import get_storage

class Counted:
    def __init__(self, driver):
        self.driver, self.calls = driver, 0
    def __getattr__(self, name):
        found = getattr(self.driver, name)
        if callable(found):
            def counted(*args, **kwargs):
                self.calls += 1
                return found(*args, **kwargs)
            return counted
        return found

storage = Counted(get_storage())
began = time.perf_counter()
asyncio.run(%s)
print(json.dumps({"seconds": time.perf_counter() - began, "storage_requests": storage.calls}))
"""


@dataclass
class Fixture:
    """Content of the filled registry, picked at random for the requests."""

    tags: list[tuple[str, str]]  # repository, tag
    manifests: list[tuple[str, str]]  # repository, digest
    blobs: list[tuple[str, str]]  # repository, digest
    subjects: list[tuple[str, str]]  # repository, digest with referrers
    repositories: list[str]


def _sample(database_url: str, count: int) -> Fixture:
    from sqlalchemy import text

    from shared.db import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            (repositories,) = connection.execute(text("SELECT COUNT(*) FROM repositories")).one()
            # Distinct repositories where there are enough: what a process kept of one (its
            # read cache) is not what the next request asks for.
            wanted = count + WARM
            ids = random.sample(range(1, repositories + 1), min(wanted, repositories))
            ids = (ids * (wanted // len(ids) + 1))[:wanted]

            def rows(sql: str) -> list[tuple[str, str]]:
                found = []
                for repository_id in ids:
                    row = connection.execute(text(sql), {"r": repository_id}).first()
                    if row is not None:
                        found.append((row[0], row[1]))
                return found

            tags = rows(
                "SELECT r.name, t.name FROM tags t JOIN repositories r ON r.id = t.repository_id "
                "WHERE t.repository_id = :r LIMIT 1"
            )
            manifests = rows(
                "SELECT r.name, m.digest FROM manifests m JOIN repositories r "
                "ON r.id = m.repository_id WHERE m.repository_id = :r LIMIT 1"
            )
            blobs = rows(
                "SELECT r.name, b.blob_digest FROM repository_blobs b JOIN repositories r "
                "ON r.id = b.repository_id WHERE b.repository_id = :r LIMIT 1"
            )
            subjects = rows(
                "SELECT r.name, m.subject_digest FROM manifests m JOIN repositories r "
                "ON r.id = m.repository_id WHERE m.repository_id >= :r "
                "AND m.subject_digest IS NOT NULL ORDER BY m.repository_id LIMIT 1"
            )
            names = [name for name, _ in tags]
    finally:
        engine.dispose()
    return Fixture(tags, manifests, blobs, subjects, names)


def _latencies(count: int, request: Callable[[int], httpx.Response]) -> dict[str, float]:
    times = []
    for i in range(count):
        began = time.perf_counter()
        answer = request(i)
        times.append((time.perf_counter() - began) * 1000)
        if answer.status_code >= 300:
            raise RuntimeError(
                f"{answer.request.method} {answer.request.url}: {answer.status_code}"
            )
    times.sort()
    return {
        "median": statistics.median(times),
        "p99": times[min(len(times) - 1, len(times) * 99 // 100)],
    }


def _push_blob(http: httpx.Client, repository: str, content: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    answer = http.post(
        f"/v2/{repository}/blobs/uploads/",
        params={"digest": digest},
        content=content,
        headers={"Content-Type": "application/octet-stream"},
    )
    if answer.status_code != 201:
        raise RuntimeError(f"blob push: {answer.status_code} {answer.text[:200]}")
    return digest


def _requests(http: httpx.Client, fixture: Fixture, count: int) -> dict[str, dict[str, float]]:
    accept = {"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"}
    pushed_to = "growth/pushes"
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = _push_blob(http, pushed_to, config)
    layer = os.urandom(1024)
    layer_digest = _push_blob(http, pushed_to, layer)
    nonce = os.urandom(4).hex()

    def put(i: int) -> httpx.Response:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            "annotations": {"n": f"{nonce}-{i}"},
        }
        return http.put(
            f"/v2/{pushed_to}/manifests/t{nonce}-{i}",
            content=json.dumps(document).encode(),
            headers={"Content-Type": OCI_MANIFEST},
        )

    def pick(items: list[tuple[str, str]], i: int) -> tuple[str, str]:
        return items[i % len(items)]

    measured: dict[str, Callable[[int], httpx.Response]] = {
        "manifest PUT": put,
        "manifest GET by tag": lambda i: http.get(
            "/v2/{}/manifests/{}".format(*pick(fixture.tags, i)), headers=accept
        ),
        "manifest GET by digest": lambda i: http.get(
            "/v2/{}/manifests/{}".format(*pick(fixture.manifests, i)), headers=accept
        ),
        "blob HEAD": lambda i: http.head("/v2/{}/blobs/{}".format(*pick(fixture.blobs, i))),
        "tag page (n=100)": lambda i: http.get(
            f"/v2/{pick(fixture.tags, i)[0]}/tags/list", params={"n": 100}
        ),
        "catalog page (n=100)": lambda i: http.get(
            "/v2/_catalog",
            params={"n": 100, "last": fixture.repositories[i % len(fixture.repositories)]},
        ),
        "referrers list": lambda i: http.get(
            "/v2/{}/referrers/{}".format(*pick(fixture.subjects, i))
        ),
        "mount": lambda i: http.post(
            f"/v2/growth/mounts-{i % 50}/blobs/uploads/",
            params={"mount": pick(fixture.blobs, i)[1], "from": pick(fixture.blobs, i)[0]},
        ),
    }
    results: dict[str, dict[str, float]] = {}
    for name, request in measured.items():
        for i in range(WARM):  # the connection and the processes' code warmed, on other content
            request(count + i)
        results[name] = _latencies(count, request)
    return results


def _rows_read() -> int:
    import pymysql

    connection = pymysql.connect(
        host=servers.MARIADB_HOST, port=servers.MARIADB_PORT, user="root", password=""
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'Handler_read%'")
            return sum(int(value) for _, value in cursor.fetchall())
    finally:
        connection.close()


def _housekeeping(env: dict[str, str]) -> dict[str, dict[str, float]]:
    results = {}
    for name, call in HOUSEKEEPING.items():
        before = _rows_read()
        done = subprocess.run(
            [sys.executable, "-c", _HOUSEKEEPING_RUN % call],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        after = _rows_read()
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        results[name] = {
            "ms": figures["seconds"] * 1000,
            "rows read": float(after - before),
            "storage requests": float(figures["storage_requests"]),
        }
    return results


def measure(root: Path, blobs: int, count: int) -> dict[str, Any]:
    """Fill a fresh database with ``blobs`` blobs, start the registry on it, measure."""
    database_name, database_url = servers._mariadb_database()
    try:
        began = time.monotonic()
        rows = fill(database_url, blobs)
        filled = time.monotonic() - began
        fixture = _sample(database_url, count)
        registry = servers.start_ours(root, "mariadb", database_url=database_url)
        try:
            with httpx.Client(base_url=registry.endpoint.url, timeout=60) as http:
                requests = _requests(http, fixture, count)
            env = {
                **os.environ,
                "REGISTRY_DATABASE_URL": database_url,
                "REGISTRY_STORAGE_URL": f"file://{root / 'storage'}",
                "REGISTRY_BROKER_URL": servers.REDIS_URL,
                "REGISTRY_LOG_LEVEL": "warning",
            }
            housekeeping = _housekeeping(env)
        finally:
            registry.stop()
    finally:
        servers._drop_mariadb_database(database_name)
    return {
        "blobs": blobs,
        "rows": rows,
        "fill_seconds": filled,
        "requests": requests,
        "housekeeping": housekeeping,
    }


def table(runs: list[dict[str, Any]]) -> str:
    """Each measure at each size, and its ratio from the smallest size to the largest."""
    sizes = [f"{run['blobs']:,} blobs" for run in runs]
    lines = [f"{'measure':<44}" + "".join(f"{s:>18}" for s in sizes) + f"{'largest/smallest':>18}"]
    lines.append("-" * len(lines[0]))

    def row(label: str, values: list[float], unit: str) -> None:
        ratio = values[-1] / values[0] if values[0] else float("nan")
        shown = "".join(f"{v:>15.2f} {unit:<2}" if unit else f"{v:>18,.0f}" for v in values)
        lines.append(f"{label:<44}{shown}{ratio:>18.2f}")

    for name in runs[0]["requests"]:
        for stat in ("median", "p99"):
            row(f"{name}, {stat}", [run["requests"][name][stat] for run in runs], "ms")
    for name in runs[0]["housekeeping"]:
        for figure, unit in (("ms", "ms"), ("rows read", ""), ("storage requests", "")):
            row(f"{name}, {figure}", [run["housekeeping"][name][figure] for run in runs], unit)
    return "\n".join(lines)


def chart(path: Path, runs: list[dict[str, Any]]) -> str | None:
    """Request latencies (medians) against the registry's size, log-log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = [run["blobs"] for run in runs]
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for name in runs[0]["requests"]:
        axes.plot(sizes, [run["requests"][name]["median"] for run in runs], marker="o", label=name)
    for name in runs[0]["housekeeping"]:
        axes.plot(
            sizes,
            [run["housekeeping"][name]["ms"] for run in runs],
            marker="s",
            linestyle="--",
            label=name,
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("blobs in the registry")
    axes.set_ylabel("milliseconds (median)")
    axes.set_title("Cost against the registry's size (MariaDB + Redis); flat is the goal")
    axes.legend(fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)


def run(root: Path, results: Path, sizes: tuple[int, ...], count: int) -> int:
    runs = []
    for blobs in sizes:
        print(f"growth: {blobs:,} blobs ...", flush=True)
        where = root / f"growth-{blobs}"
        where.mkdir(parents=True)
        measured = measure(where, blobs, count)
        print(f"   filled in {measured['fill_seconds']:.0f} s: {measured['rows']}", flush=True)
        runs.append(measured)
    print()
    print(table(runs))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"growth-{stamp}.json").write_text(json.dumps(runs, indent=2))
    drawn = chart(results / f"growth-{stamp}.png", runs)
    print(f"\nraw figures: {results / f'growth-{stamp}.json'}")
    print(f"chart: {drawn}" if drawn else "chart: not written (matplotlib is not installed)")
    return 0
