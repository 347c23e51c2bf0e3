"""The scenarios. Each runs on both registries, interleaved, several times.

A scenario has an untimed ``prepare`` per registry (push what it reads, check it once with a
full SHA-256) and a ``run`` per repetition whose timed parts are inside ``ctx.timed(label)``,
which also measures the client's own CPU time. Every request is checked (status codes, digests,
lengths of pulled bytes, complete tag lists): a wrong answer raises ``Failure``, which
the harness records and which makes the run exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.client import (
    OCI_MANIFEST,
    Blob,
    Connection,
    DataFile,
    Endpoint,
    Failure,
    MiB,
    image_manifest,
    load,
    location_path,
    sha256_digest,
    with_digest,
)
from bench.servers import LOOPBACK, Registry

WRK_SCRIPT = Path(__file__).with_name("manifest.lua")
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    compared: bool = True  # False: shown for information, no ratio
    ours_only: bool = False  # a figure the reference has no counterpart of


@dataclass(frozen=True)
class Sizes:
    """What the scenarios move; ``full()`` for the default run, ``quick()`` for a smoke run."""

    mono_size: int
    mono_count: int
    chunked_size: int
    chunk_size: int
    pull_size: int
    pull_count: int
    concurrent_size: int
    concurrent_clients: int
    concurrent_rounds: int
    manifest_puts: int
    manifest_put_connections: int
    read_connections: int
    read_seconds: float
    tags: int
    tag_page: int
    tag_walks: int
    memory_size: int
    hostile_connections: int  # slow uploads, and as many slow-header connections
    mirror_layers: int  # layers of each image pulled through a mirror
    mirror_layer_size: int
    ui_repositories: int = 1000  # the web interface scenario's registry
    ui_tags: int = 10_000  # tags in its largest repository

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            mono_size=64 * MiB,
            mono_count=4,
            chunked_size=128 * MiB,
            chunk_size=8 * MiB,
            pull_size=256 * MiB,
            pull_count=4,
            concurrent_size=32 * MiB,
            concurrent_clients=16,
            concurrent_rounds=2,
            manifest_puts=800,
            manifest_put_connections=4,
            read_connections=32,
            read_seconds=5.0,
            tags=1000,
            tag_page=100,
            tag_walks=10,
            memory_size=1024 * MiB,
            hostile_connections=1000,
            mirror_layers=4,
            mirror_layer_size=16 * MiB,
        )

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            mono_size=16 * MiB,
            mono_count=2,
            chunked_size=32 * MiB,
            chunk_size=8 * MiB,
            pull_size=64 * MiB,
            pull_count=2,
            concurrent_size=8 * MiB,
            concurrent_clients=16,
            concurrent_rounds=1,
            manifest_puts=200,
            manifest_put_connections=4,
            read_connections=32,
            read_seconds=2.0,
            tags=1000,
            tag_page=100,
            tag_walks=2,
            memory_size=256 * MiB,
            hostile_connections=200,
            mirror_layers=2,
            mirror_layer_size=4 * MiB,
            ui_repositories=100,
            ui_tags=1000,
        )

    def data_file_size(self) -> int:
        """Big enough for the largest blob plus room for distinct slices of it."""
        largest = max(self.memory_size, self.pull_size, self.chunked_size, self.mono_size)
        return largest + 64 * MiB


@dataclass
class Timing:
    """The timed parts of one run: wall time and the client's CPU time (this process, all its
    threads, plus child processes such as wrk that ended meanwhile)."""

    wall: float = 0.0
    cpu: float = 0.0


@dataclass
class Context:
    data: DataFile
    sizes: Sizes
    timings: dict[str, Timing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def timed(self, label: str) -> Iterator[None]:
        def cpu() -> float:
            own = resource.getrusage(resource.RUSAGE_SELF)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

        cpu_before = cpu()
        wall_before = time.perf_counter()
        try:
            yield
        finally:
            timing = self.timings.setdefault(label, Timing())
            timing.wall += time.perf_counter() - wall_before
            timing.cpu += cpu() - cpu_before

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def run_threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``count`` threads released together; the wall time until all ended.
    The first exception of any thread is raised."""
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def push_base_blobs(connection: Connection, repo: str) -> tuple[tuple[str, int], tuple[str, int]]:
    """A config and a small layer in ``repo``, for manifests to refer to."""
    layer = b"bench layer " * 100
    config = (connection.push_small_blob(repo, CONFIG_BLOB), len(CONFIG_BLOB))
    return config, (connection.push_small_blob(repo, layer), len(layer))


def put_manifests(
    endpoint: Endpoint,
    repo: str,
    items: list[tuple[str, bytes]],
    connections: int,
    acknowledged: dict[str, float] | None = None,
) -> list[float]:
    """PUT ``(tag, manifest)`` items over ``connections`` connections; the latencies. With
    ``acknowledged``, the ``time.monotonic()`` at which each tag's checked 201 was read."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    open_connections = [Connection(endpoint) for _ in range(connections)]

    def work(i: int) -> None:
        connection = open_connections[i]
        for tag, manifest in items[i::connections]:
            started = time.perf_counter()
            connection.put_manifest(repo, tag, manifest)
            latencies[i].append(time.perf_counter() - started)
            if acknowledged is not None:
                acknowledged[tag] = time.monotonic()

    try:
        run_threads(connections, work)
    finally:
        for connection in open_connections:
            connection.close()
    return [latency for chunk in latencies for latency in chunk]


class Scenario:
    name = ""
    title = ""
    metrics: tuple[Metric, ...] = ()

    def prepare(self, ctx: Context, registry: Registry) -> None:
        """Untimed setup on one registry."""

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        raise NotImplementedError


THROUGHPUT = Metric("throughput", "throughput", "MB/s", True)


class MonolithicPush(Scenario):
    name = "mono"
    metrics = (THROUGHPUT,)

    def __init__(self, sizes: Sizes) -> None:
        self.title = f"1 monolithic push {sizes.mono_size // MiB} MiB x{sizes.mono_count}"
        self.blobs: dict[int, list[Blob]] = {}

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        # New blobs each repetition, the same ones on both registries.
        if rep not in self.blobs:
            self.blobs[rep] = [
                ctx.data.blob(ctx.sizes.mono_size) for _ in range(ctx.sizes.mono_count)
            ]
        blobs = self.blobs[rep]
        repo = "bench/mono"
        with Connection(registry.endpoint) as connection:
            started = time.perf_counter()
            with ctx.timed("push"):
                for blob in blobs:
                    connection.push_blob(repo, ctx.data, blob)
            elapsed = time.perf_counter() - started
            for blob in blobs:
                connection.check_blob(repo, blob)
        return {"throughput": mb_per_s(sum(b.size for b in blobs), elapsed)}


class ChunkedPush(Scenario):
    name = "chunked"
    metrics = (THROUGHPUT,)

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"2 chunked push {sizes.chunked_size // MiB} MiB "
            f"in {sizes.chunk_size // MiB} MiB PATCHes"
        )
        self.blobs: dict[int, Blob] = {}

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        if rep not in self.blobs:
            self.blobs[rep] = ctx.data.blob(ctx.sizes.chunked_size)
        blob = self.blobs[rep]
        repo = "bench/chunked"
        chunk = ctx.sizes.chunk_size
        with Connection(registry.endpoint) as connection:
            started = time.perf_counter()
            with ctx.timed("push"):
                response = connection.request("POST", f"/v2/{repo}/blobs/uploads/")
                response.expect(202, "upload start")
                location = location_path(response.header("Location"))
                for start in range(0, blob.size, chunk):
                    end = min(blob.size, start + chunk) - 1
                    response = connection.send_file(
                        "PATCH",
                        location,
                        ctx.data,
                        blob.offset + start,
                        end - start + 1,
                        {
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{start}-{end}",
                        },
                    ).expect(202, f"PATCH {start}-{end}")
                    if response.header("Range") != f"0-{end}":
                        raise Failure(
                            f"PATCH {start}-{end} answered Range {response.header('Range')!r}"
                        )
                    location = location_path(response.header("Location"))
                done = connection.request("PUT", with_digest(location, blob.digest), b"")
                done.expect(201, "closing PUT of a chunked upload")
                if done.header("Docker-Content-Digest") != blob.digest:
                    raise Failure(
                        f"chunked upload answered digest {done.header('Docker-Content-Digest')}"
                    )
            elapsed = time.perf_counter() - started
            connection.check_blob(repo, blob)
        return {"throughput": mb_per_s(blob.size, elapsed)}


class Pull(Scenario):
    name = "pull"
    metrics = (THROUGHPUT,)

    def __init__(self, sizes: Sizes) -> None:
        self.title = f"3 pull {sizes.pull_size // MiB} MiB, one stream (x{sizes.pull_count})"
        self.blob: Blob | None = None

    def prepare(self, ctx: Context, registry: Registry) -> None:
        if self.blob is None:
            self.blob = ctx.data.blob(ctx.sizes.pull_size)
        with Connection(registry.endpoint) as connection:
            connection.push_blob("bench/pull", ctx.data, self.blob)
            connection.download(f"/v2/bench/pull/blobs/{self.blob.digest}", sha=True).check(
                self.blob, "warm-up pull (SHA-256)"
            )

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        assert self.blob is not None
        path = f"/v2/bench/pull/blobs/{self.blob.digest}"
        with Connection(registry.endpoint) as connection:
            started = time.perf_counter()
            with ctx.timed("pull"):
                for _ in range(ctx.sizes.pull_count):
                    connection.download(path).check(self.blob, "pull")
            elapsed = time.perf_counter() - started
        return {"throughput": mb_per_s(self.blob.size * ctx.sizes.pull_count, elapsed)}


class ConcurrentPull(Scenario):
    name = "pull16"
    metrics = (THROUGHPUT,)

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"4 {sizes.concurrent_clients} concurrent pulls of {sizes.concurrent_size // MiB} MiB"
        )
        self.blob: Blob | None = None

    def prepare(self, ctx: Context, registry: Registry) -> None:
        if self.blob is None:
            self.blob = ctx.data.blob(ctx.sizes.concurrent_size)
        with Connection(registry.endpoint) as connection:
            connection.push_blob("bench/pull16", ctx.data, self.blob)
            connection.download(f"/v2/bench/pull16/blobs/{self.blob.digest}", sha=True).check(
                self.blob, "warm-up pull (SHA-256)"
            )

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        blob = self.blob
        assert blob is not None
        clients = ctx.sizes.concurrent_clients
        rounds = ctx.sizes.concurrent_rounds
        path = f"/v2/bench/pull16/blobs/{blob.digest}"
        connections = [Connection(registry.endpoint) for _ in range(clients)]

        def work(i: int) -> None:
            for _ in range(rounds):
                connections[i].download(path).check(blob, f"concurrent pull {i}")

        try:
            with ctx.timed("pull"):
                elapsed = run_threads(clients, work)
        finally:
            for connection in connections:
                connection.close()
        return {"throughput": mb_per_s(blob.size * clients * rounds, elapsed)}


class ManifestPut(Scenario):
    name = "manifest-put"
    metrics = (
        Metric("rate", "throughput", "req/s", True),
        Metric("p50", "latency p50", "ms", False),
        Metric("p99", "latency p99", "ms", False),
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"5 manifest PUT, {sizes.manifest_put_connections} connections "
            f"({sizes.manifest_puts} distinct)"
        )
        self.base: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {}

    def prepare(self, ctx: Context, registry: Registry) -> None:
        with Connection(registry.endpoint) as connection:
            self.base[registry.name] = push_base_blobs(connection, "bench/manifests")

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        config, layer = self.base[registry.name]
        items = [
            (f"r{rep}-{i}", image_manifest(config, layer, f"rep {rep} manifest {i}"))
            for i in range(ctx.sizes.manifest_puts)
        ]
        connections = ctx.sizes.manifest_put_connections
        with ctx.timed("PUT"):
            started = time.perf_counter()
            latencies = put_manifests(registry.endpoint, "bench/manifests", items, connections)
            elapsed = time.perf_counter() - started
        # Read back what each connection pushed last: the bytes that were PUT.
        with Connection(registry.endpoint) as connection:
            for tag, manifest in items[-connections:]:
                got = connection.request(
                    "GET", f"/v2/bench/manifests/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                ).expect(200, f"manifest GET {tag}")
                if got.body != manifest:
                    raise Failure(f"manifest {tag} reads back different bytes")
        return {
            "rate": len(items) / elapsed,
            "p50": percentile(latencies, 0.50) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
        }


class ManifestRead(Scenario):
    name = "manifest-get"
    metrics = (
        Metric("get_rate", "GET throughput (wrk)", "req/s", True),
        Metric("get_p50", "GET latency p50 (wrk)", "ms", False),
        Metric("get_p99", "GET latency p99 (wrk)", "ms", False),
        Metric("head_rate", "HEAD throughput (asyncio)", "req/s", True),
        Metric("head_p50", "HEAD latency p50 (asyncio)", "ms", False),
        Metric("head_p99", "HEAD latency p99 (asyncio)", "ms", False),
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"6 manifest GET/HEAD by tag, {sizes.read_connections} connections, "
            f"{sizes.read_seconds:g} s each"
        )
        self.manifest: dict[str, bytes] = {}

    def prepare(self, ctx: Context, registry: Registry) -> None:
        with Connection(registry.endpoint) as connection:
            config, layer = push_base_blobs(connection, "bench/read")
            manifest = image_manifest(config, layer, "read me")
            connection.put_manifest("bench/read", "latest", manifest)
            got = connection.request(
                "GET", "/v2/bench/read/manifests/latest", headers={"Accept": OCI_MANIFEST}
            ).expect(200, "manifest GET")
            if got.body != manifest:
                raise Failure("the manifest reads back different bytes")
        self.manifest[registry.name] = manifest

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        manifest = self.manifest[registry.name]
        digest = sha256_digest(manifest)
        path = "/v2/bench/read/manifests/latest"
        seconds = ctx.sizes.read_seconds
        connections = ctx.sizes.read_connections
        command = [
            "wrk",
            "--threads",
            "2",
            "--connections",
            str(connections),
            "--duration",
            f"{seconds:g}s",
            "--timeout",
            "10s",
            "--script",
            str(WRK_SCRIPT),
            f"{registry.endpoint.url}{path}",
            "--",
            "GET",
            digest,
            str(len(manifest)),
            OCI_MANIFEST,
        ]
        with ctx.timed("GET (wrk)"):
            finished = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        summary = _wrk_summary(finished)
        requests = summary["requests"]
        failures = sum(
            summary[k]
            for k in (
                "bad",
                "connect_errors",
                "read_errors",
                "write_errors",
                "status_errors",
                "timeouts",
            )
        )
        if failures or not requests:
            raise Failure(f"manifest GET under wrk: {failures} failures of {requests}: {summary}")
        values = {
            "get_rate": requests / (summary["duration_us"] / 1e6),
            "get_p50": summary["p50_us"] / 1000,
            "get_p99": summary["p99_us"] / 1000,
        }
        with ctx.timed("HEAD (asyncio)"):
            result = load(
                registry.endpoint,
                "HEAD",
                path,
                {"Accept": OCI_MANIFEST},
                digest,
                len(manifest),
                connections,
                seconds,
            )
        if result.bad or result.errors or not result.requests:
            raise Failure(
                f"manifest HEAD: {result.bad} wrong answers and {result.errors} errors of "
                f"{result.requests}; first: {result.first_problem}"
            )
        values |= {
            "head_rate": result.requests / result.elapsed,
            "head_p50": percentile(result.latencies, 0.50) * 1000,
            "head_p99": percentile(result.latencies, 0.99) * 1000,
        }
        return values


def _wrk_summary(finished: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in finished.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return summary
    raise Failure(
        f"wrk exited with {finished.returncode} and no summary: "
        f"{finished.stdout[-500:]} {finished.stderr[-500:]}"
    )


class TagListing(Scenario):
    name = "tags"
    metrics = (
        Metric("listing_ms", "full listing time, n per page", "ms", False),
        Metric("whole_ms", "whole list in one request (no n)", "ms", False),
        Metric("pages", "pages returned", "pages", False, compared=False),
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"7 list {sizes.tags} tags, n={sizes.tag_page}, following Link (x{sizes.tag_walks})"
        )
        self.tags = [f"t{i:04d}" for i in range(sizes.tags)]

    def prepare(self, ctx: Context, registry: Registry) -> None:
        with Connection(registry.endpoint) as connection:
            config, layer = push_base_blobs(connection, "bench/tags")
        manifest = image_manifest(config, layer, "tagged")
        put_manifests(registry.endpoint, "bench/tags", [(t, manifest) for t in self.tags], 4)

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        first = f"/v2/bench/tags/tags/list?n={ctx.sizes.tag_page}"
        pages = 0
        with Connection(registry.endpoint) as connection:
            started = time.perf_counter()
            with ctx.timed("list"):
                for _ in range(ctx.sizes.tag_walks):
                    seen: list[str] = []
                    path: str | None = first
                    pages = 0
                    while path is not None:
                        page = connection.request("GET", path).expect(200, f"GET {path}")
                        pages += 1
                        if pages > len(self.tags) + 1:
                            raise Failure("the tag listing's Link headers do not end")
                        seen.extend(json.loads(page.body)["tags"] or [])
                        link = page.header("Link")
                        path = (
                            location_path(link.split(";")[0].strip().strip("<>")) if link else None
                        )
                    if len(seen) != len(self.tags) or sorted(seen) != self.tags:
                        missing = sorted(set(self.tags) - set(seen))
                        raise Failure(
                            f"the tag listing returned {len(seen)} tags "
                            f"({len(set(seen))} distinct), "
                            f"expected {len(self.tags)}; missing {missing[:5]}"
                        )
            elapsed = time.perf_counter() - started
            # Like for like with a registry that does not paginate: one request for the list.
            whole_started = time.perf_counter()
            with ctx.timed("list"):
                for _ in range(ctx.sizes.tag_walks):
                    page = connection.request("GET", "/v2/bench/tags/tags/list").expect(200, "GET")
                    if sorted(json.loads(page.body)["tags"] or []) != self.tags:
                        raise Failure("the unpaginated tag listing is not the whole list")
            whole = time.perf_counter() - whole_started
        if pages == 1 and len(self.tags) > ctx.sizes.tag_page:
            ctx.note(
                f"{registry.name}: the tag listing ignored n={ctx.sizes.tag_page} and returned all "
                f"{len(self.tags)} tags in one page (Distribution 2.8 does not paginate tags/list)"
            )
        return {
            "listing_ms": elapsed / ctx.sizes.tag_walks * 1000,
            "whole_ms": whole / ctx.sizes.tag_walks * 1000,
            "pages": float(pages),
        }


# Ours, one process at a time (the reference is one process: its figures are the sums).
OUR_PROCESSES = ("api-gateway", "blob-service", "manifest-service", "janitor")


class Memory(Scenario):
    name = "memory"
    metrics = (
        Metric("idle_rss", "RSS idle before", "MiB", False),
        Metric("push_rss", "peak RSS during push", "MiB", False),
        Metric("pull_rss", "peak RSS during pull", "MiB", False),
        Metric("push", "push throughput", "MB/s", True),
        Metric("pull", "pull throughput", "MB/s", True),
        *(
            Metric(f"{when}_rss_{process}", f"{label}: {process}", "MiB", False, False, True)
            for process in OUR_PROCESSES
            for when, label in (("idle", "RSS idle"), ("peak", "peak RSS"))
        ),
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = f"8 memory: {sizes.memory_size // MiB} MiB push and pull (all processes)"
        self.blobs: dict[int, Blob] = {}

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        if rep not in self.blobs:
            self.blobs[rep] = ctx.data.blob(ctx.sizes.memory_size)
        blob = self.blobs[rep]
        repo = "bench/memory"
        idle = registry.rss_kib()
        idle_by_process = registry.rss_kib_by_process()
        with Connection(registry.endpoint) as connection:
            with RssSampler(registry) as sampler, ctx.timed("push"):
                started = time.perf_counter()
                connection.push_blob(repo, ctx.data, blob)
                push_seconds = time.perf_counter() - started
            push_peak = sampler.peak_kib
            push_peaks = sampler.peak_kib_by_process
            with RssSampler(registry) as sampler, ctx.timed("pull"):
                started = time.perf_counter()
                connection.download(f"/v2/{repo}/blobs/{blob.digest}").check(blob, "pull")
                pull_seconds = time.perf_counter() - started
            pull_peak = sampler.peak_kib
            peaks = {
                name: max(kib, push_peaks.get(name, 0))
                for name, kib in sampler.peak_kib_by_process.items()
            }
        figures = {
            "idle_rss": idle / 1024,
            "push_rss": push_peak / 1024,
            "pull_rss": pull_peak / 1024,
            "push": mb_per_s(blob.size, push_seconds),
            "pull": mb_per_s(blob.size, pull_seconds),
        }
        if registry.name == "ours":
            figures |= {f"idle_rss_{name}": kib / 1024 for name, kib in idle_by_process.items()}
            figures |= {f"peak_rss_{name}": kib / 1024 for name, kib in peaks.items()}
        return figures


class RssSampler:
    """Sums VmRSS of all the registry's processes (children of children included) every 100 ms
    in a thread; ``peak_kib`` is the largest sum seen, one sample taken at start and at end,
    and ``peak_kib_by_process`` the largest figure seen of each process."""

    def __init__(self, registry: Registry, interval: float = 0.1) -> None:
        self.registry = registry
        self.interval = interval
        self.peak_kib = 0
        self.peak_kib_by_process: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        by_process = self.registry.rss_kib_by_process()
        self.peak_kib = max(self.peak_kib, sum(by_process.values()))
        for name, kib in by_process.items():
            self.peak_kib_by_process[name] = max(kib, self.peak_kib_by_process.get(name, 0))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class _Hostile:
    """Slow clients from many addresses (127.0.x.y): uploads whose body has sent one byte,
    and requests whose header lines trickle in, one line a second, never ending."""

    def __init__(self, endpoint: Endpoint, count: int) -> None:
        self.endpoint = endpoint
        self.count = count
        self.sockets: list[socket.socket] = []
        self.trickling: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _connect(self, i: int) -> socket.socket:
        source = f"127.0.{10 + i // 200}.{1 + i % 200}"
        return socket.create_connection(
            (self.endpoint.host, self.endpoint.port), timeout=10, source_address=(source, 0)
        )

    def __enter__(self) -> _Hostile:
        with Connection(self.endpoint) as connection:
            locations = [
                location_path(
                    connection.request("POST", "/v2/bench/hostile/blobs/uploads/")
                    .expect(202, "upload start")
                    .header("Location")
                )
                for _ in range(self.count)
            ]
        for i, location in enumerate(locations):
            sock = self._connect(i)
            sock.sendall(
                (
                    f"PATCH {location} HTTP/1.1\r\nHost: bench\r\nContent-Length: 100000000\r\n"
                    "Content-Type: application/octet-stream\r\n\r\nx"
                ).encode()
            )
            self.sockets.append(sock)
        for i in range(self.count):
            sock = self._connect(self.count + i)
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\n")
            self.trickling.append(sock)
        self._thread.start()
        time.sleep(1)  # let the servers take them all in
        return self

    def _trickle(self) -> None:
        line = 0
        while not self._stop.wait(1):
            line += 1
            for sock in self.trickling:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow-%d: v\r\n" % line)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets + self.trickling:
            sock.close()


class HostileLoad(Scenario):
    """Other clients' manifest reads and pulls while slow clients hold connections open: the
    latency and the throughput under attack, and their ratio to the same run's without it."""

    name = "hostile"
    metrics = (
        Metric("get_p99", "manifest GET p99 under attack", "ms", False),
        Metric("pull", "pull under attack", "MB/s", True),
        Metric("pull_kept", "pull kept (under attack / alone)", "x", True, compared=False),
    )

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"9 {sizes.hostile_connections} slow uploads + {sizes.hostile_connections} "
            "slow-header connections open"
        )
        self.blob: Blob | None = None
        self.manifest: dict[str, bytes] = {}

    def prepare(self, ctx: Context, registry: Registry) -> None:
        if self.blob is None:
            self.blob = ctx.data.blob(ctx.sizes.concurrent_size)
        with Connection(registry.endpoint) as connection:
            connection.push_blob("bench/hostile", ctx.data, self.blob)
            config, layer = push_base_blobs(connection, "bench/hostile")
            manifest = image_manifest(config, layer, "hostile")
            connection.put_manifest("bench/hostile", "latest", manifest)
            connection.download(f"/v2/bench/hostile/blobs/{self.blob.digest}", sha=True).check(
                self.blob, "warm-up pull (SHA-256)"
            )
        self.manifest[registry.name] = manifest

    def _pull(self, registry: Registry) -> float:
        blob = self.blob
        assert blob is not None
        path = f"/v2/bench/hostile/blobs/{blob.digest}"
        with Connection(registry.endpoint) as connection:
            started = time.perf_counter()
            for _ in range(4):
                connection.download(path).check(blob, "pull")
            return mb_per_s(blob.size * 4, time.perf_counter() - started)

    def _get_p99(self, registry: Registry) -> float:
        manifest = self.manifest[registry.name]
        result = load(
            registry.endpoint,
            "GET",
            "/v2/bench/hostile/manifests/latest",
            {"Accept": OCI_MANIFEST},
            sha256_digest(manifest),
            len(manifest),
            8,
            3.0,
        )
        if result.bad or result.errors or not result.requests:
            raise Failure(
                f"manifest GET under attack: {result.bad} wrong answers and {result.errors} "
                f"errors of {result.requests}; first: {result.first_problem}"
            )
        return percentile(result.latencies, 0.99) * 1000

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        alone = self._pull(registry)
        with ctx.timed("hostile"), _Hostile(registry.endpoint, ctx.sizes.hostile_connections):
            get_p99 = self._get_p99(registry)
            pull = self._pull(registry)
        return {"get_p99": get_p99, "pull": pull, "pull_kept": pull / alone}


MIRROR_NAMESPACE = "mirror"


@dataclass
class MirrorImage:
    name: str  # at the upstream
    manifest: bytes
    digest: str
    blobs: list[Blob]


class MirrorPull(Scenario):
    """Pulls through a mirror of an upstream registry on loopback (the reference registry):
    ours under its mirrored namespace, the reference in its proxy mode. Each repetition pulls
    images neither has cached: the time of a cold pull (manifest, then each blob in turn), of
    the same pull warm, and of 16 clients pulling one cold image at once."""

    name = "mirror"
    metrics = (
        Metric("cold", "cold pull", "MB/s", True),
        Metric("warm", "warm pull", "MB/s", True),
        Metric("crowd", "16 concurrent cold pulls", "MB/s", True),
    )
    upstream: Registry | None = None  # set by the runner, which starts them
    proxy: Registry | None = None

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"10 mirror: image of {sizes.mirror_layers} x {sizes.mirror_layer_size // MiB} MiB"
            " layers, pulled through"
        )
        self.images: dict[tuple[int, str], MirrorImage] = {}

    def _image(self, ctx: Context, rep: int, kind: str) -> MirrorImage:
        """The repetition's image at the upstream, pushed there once for both registries."""
        key = (rep, kind)
        if key not in self.images:
            assert self.upstream is not None
            name = f"bench/{kind}-{rep}"
            blobs = [
                ctx.data.blob(ctx.sizes.mirror_layer_size) for _ in range(ctx.sizes.mirror_layers)
            ]
            with Connection(self.upstream.endpoint) as connection:
                for blob in blobs:
                    connection.push_blob(name, ctx.data, blob)
                config = json.dumps({"architecture": "amd64", "os": "linux", "note": name}).encode()
                config_digest = connection.push_small_blob(name, config)
                manifest = json.dumps(
                    {
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
                                "digest": blob.digest,
                                "size": blob.size,
                            }
                            for blob in blobs
                        ],
                    }
                ).encode()
                connection.put_manifest(name, "v1", manifest)
            self.images[key] = MirrorImage(name, manifest, sha256_digest(manifest), blobs)
        return self.images[key]

    def _where(self, registry: Registry) -> tuple[Endpoint, str]:
        if registry.name == "ours":
            return registry.endpoint, f"{MIRROR_NAMESPACE}/"
        assert self.proxy is not None
        return self.proxy.endpoint, ""

    def prepare(self, ctx: Context, registry: Registry) -> None:
        """An untimed cold pull of an image of its own, checked with SHA-256, as the other
        scenarios warm up: what a process does once after it starts (ours imports its upstream
        client at its first pull through, a quarter of a second in each service) is not part
        of every cold pull, and the README gives it apart."""
        endpoint, prefix = self._where(registry)
        image = self._image(ctx, 0, "warmup")
        with Connection(endpoint) as connection:
            self._pull(connection, prefix + image.name, image, sha=True)

    @staticmethod
    def _pull(connection: Connection, repo: str, image: MirrorImage, sha: bool = False) -> None:
        answer = connection.request(
            "GET", f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}
        ).expect(200, f"manifest of {repo}")
        if sha256_digest(answer.body) != image.digest:
            raise Failure(f"{repo}: the manifest pulled through is not the upstream's")
        for blob in image.blobs:
            connection.download(f"/v2/{repo}/blobs/{blob.digest}", sha=sha).check(
                blob, f"blob of {repo}"
            )

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        endpoint, prefix = self._where(registry)
        single, crowd = self._image(ctx, rep, "single"), self._image(ctx, rep, "crowd")
        size = sum(blob.size for blob in single.blobs)
        timings = {}
        with Connection(endpoint) as connection:
            for label in ("cold", "warm"):
                started = time.perf_counter()
                with ctx.timed(label):
                    self._pull(connection, prefix + single.name, single)
                timings[label] = mb_per_s(size, time.perf_counter() - started)
        clients = 16
        connections = [Connection(endpoint) for _ in range(clients)]
        try:
            with ctx.timed("crowd"):
                elapsed = run_threads(
                    clients, lambda i: self._pull(connections[i], prefix + crowd.name, crowd)
                )
        finally:
            for connection in connections:
                connection.close()
        # Afterwards, untimed: what was cached is the upstream's, byte for byte.
        with Connection(endpoint) as connection:
            for blob in crowd.blobs:
                connection.download(
                    f"/v2/{prefix}{crowd.name}/blobs/{blob.digest}", sha=True
                ).check(blob, "cached blob (SHA-256)")
        crowd_size = sum(blob.size for blob in crowd.blobs) * clients
        return {**timings, "crowd": mb_per_s(crowd_size, elapsed)}


# An event's key: (the receiver's path, action, target.repository, target.digest, target.tag).
EventKey = tuple[str, str, str, str, str]


class EventReceiver:
    """A webhook endpoint on loopback, in this process: a ThreadingHTTPServer answering every
    POST 202 at once, which records for each event of the body (``{"events": [...]}``) when
    it arrived (``time.monotonic()`` and ``time.time()``, once the body is read), keyed by
    the request's path (one per registry), the action and the target's repository, digest and
    tag. Bodies that are not such JSON are counted, not recorded."""

    def __init__(self) -> None:
        self.arrivals: dict[EventKey, list[tuple[float, float]]] = {}
        self.requests = 0
        self.unreadable = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as both registries' clients expect

            def do_POST(self) -> None:
                body = self._body()
                arrived = time.monotonic(), time.time()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver._record(self.path, body, arrived)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def _record(self, path: str, body: bytes, arrived: tuple[float, float]) -> None:
        try:
            events = json.loads(body)["events"]
            keys = [
                (
                    path,
                    str(event.get("action", "")),
                    str(event["target"].get("repository", "")),
                    str(event["target"].get("digest", "")),
                    str(event["target"].get("tag", "")),
                )
                for event in events
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            with self._changed:
                self.requests += 1
                self.unreadable += 1
            return
        with self._changed:
            self.requests += 1
            for key in keys:
                self.arrivals.setdefault(key, []).append(arrived)
            self._changed.notify_all()

    def wait_for(self, keys: list[EventKey], deadline: float) -> None:
        """Until each of ``keys`` has arrived at least once, or ``time.monotonic()`` passes
        ``deadline``."""
        with self._changed:
            missing = [key for key in keys if key not in self.arrivals]
            while missing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(min(left, 0.5))
                missing = [key for key in missing if key not in self.arrivals]

    def arrived(self, key: EventKey) -> list[tuple[float, float]]:
        with self._changed:
            return list(self.arrivals.get(key, ()))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


NOTIFY_REPO = "bench/notify"


class NotifyDelivery(Scenario):
    """Webhook delivery under the manifest-PUT load: each registry, started for this scenario
    with an endpoint at the receiver (``/ours``, ``/reference``), takes distinct manifests PUT
    by tag over several connections; an event's latency is its first arrival at the receiver
    less the time its PUT's 201 was read (negative when the event came first). Then, for at
    most ``WAIT_SECONDS``, the events still on their way are waited for; a push acknowledged
    without its event by then is lost (counted, noted, not a failure)."""

    name = "notify"
    WAIT_SECONDS = 60.0
    metrics = (
        Metric("p50", "delivery latency p50", "ms", False),
        Metric("p99", "delivery latency p99", "ms", False),
        Metric("rate", "PUT throughput", "req/s", True),
        Metric("acked", "pushes acknowledged", "pushes", False, compared=False),
        Metric("received", "their events received (distinct)", "events", True, compared=False),
        Metric(
            "lost", f"lost (no event {WAIT_SECONDS:g} s after)", "events", False, compared=False
        ),
        Metric("duplicates", "duplicate events", "events", False, compared=False),
    )
    receiver: EventReceiver | None = None  # set by the runner, which starts it and the registries

    def __init__(self, sizes: Sizes) -> None:
        self.title = (
            f"11 webhook delivery under manifest PUT, {sizes.manifest_put_connections} "
            f"connections ({sizes.manifest_puts} distinct)"
        )
        self.base: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {}

    def prepare(self, ctx: Context, registry: Registry) -> None:
        with Connection(registry.endpoint) as connection:
            self.base[registry.name] = push_base_blobs(connection, NOTIFY_REPO)

    def run(self, ctx: Context, registry: Registry, rep: int) -> dict[str, float]:
        receiver = self.receiver
        assert receiver is not None
        config, layer = self.base[registry.name]
        items = [
            (f"r{rep}-{i}", image_manifest(config, layer, f"notify rep {rep} manifest {i}"))
            for i in range(ctx.sizes.manifest_puts)
        ]
        acknowledged: dict[str, float] = {}
        with ctx.timed("PUT"):
            started = time.perf_counter()
            put_manifests(
                registry.endpoint,
                NOTIFY_REPO,
                items,
                ctx.sizes.manifest_put_connections,
                acknowledged,
            )
            elapsed = time.perf_counter() - started
        keys = {
            tag: (f"/{registry.name}", "push", NOTIFY_REPO, sha256_digest(manifest), tag)
            for tag, manifest in items
        }
        with ctx.timed("events after the PUTs"):
            receiver.wait_for(list(keys.values()), time.monotonic() + self.WAIT_SECONDS)
        latencies = []
        lost = duplicates = 0
        for tag, key in keys.items():
            arrivals = receiver.arrived(key)
            if not arrivals:
                lost += 1
                continue
            duplicates += len(arrivals) - 1
            latencies.append((arrivals[0][0] - acknowledged[tag]) * 1000)
        if latencies and percentile(latencies, 0.50) < 0:
            ctx.note(
                f"{registry.name}: in {self.name}, most events arrived before their PUT's 201 was "
                "read (negative latency p50: it was sent before the answer was read); "
                "no ratio is shown for a negative median"
            )
        if lost:
            ctx.note(
                f"{registry.name}, notify run {rep + 1}: {lost} of {len(keys)} acknowledged "
                f"pushes had no event {self.WAIT_SECONDS:g} s after the load"
            )
        return {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "rate": len(items) / elapsed,
            "acked": float(len(acknowledged)),
            "received": float(len(latencies)),
            "lost": float(lost),
            "duplicates": float(duplicates),
        }


def all_scenarios(sizes: Sizes) -> list[Scenario]:
    from bench.web_pages import WebPages

    return [
        MonolithicPush(sizes),
        ChunkedPush(sizes),
        Pull(sizes),
        ConcurrentPull(sizes),
        ManifestPut(sizes),
        ManifestRead(sizes),
        TagListing(sizes),
        Memory(sizes),
        HostileLoad(sizes),
        MirrorPull(sizes),
        NotifyDelivery(sizes),
        WebPages(sizes),
    ]
