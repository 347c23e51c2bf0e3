"""``make bench`` (``python -m bench.run``): this registry against the reference registry.

    python -m bench.run                      # every scenario, 3 repetitions
    python -m bench.run --quick              # smoke run: 1 repetition, small sizes
    python -m bench.run --scenarios pull,tags --repeat 5
    python -m bench.run --backend mariadb    # ours on MariaDB + Redis instead of SQLite

Both registries run at once, on loopback, their data in one temporary folder (removed at the
end unless ``--keep``). Each scenario runs on both, interleaved (ours, reference, ours, ...).
The table goes to stdout; the raw figures to bench/results/<timestamp>.json and a chart of the
ratios to bench/results/<timestamp>.png. The exit status is 1 when a request failed or
returned wrong data, and never because of timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import growth, report, servers
from bench.client import DataFile, Failure, MiB
from bench.scenarios import (
    MIRROR_NAMESPACE,
    Context,
    EventReceiver,
    MirrorPull,
    NotifyDelivery,
    Scenario,
    Sizes,
    Timing,
    all_scenarios,
)

RESULTS = Path(__file__).parent / "results"
GROWTH = "growth"  # not a scenario against the reference: bench.growth


def machine_facts() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_revision() -> str:
    root = Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" (uncommitted changes)" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [scenario.name for scenario in all_scenarios(Sizes.full())] + [GROWTH]
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark this registry against the reference registry (Distribution 2.8).",
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, small sizes")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repetitions of each scenario (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated, from: {','.join(names)} (default: all; {GROWTH}, which fills "
        "MariaDB with registries of 10,000 to 1,000,000 blobs, with --backend mariadb only)",
    )
    parser.add_argument(
        "--backend",
        choices=["sqlite", "mariadb"],
        default="sqlite",
        help="ours on the embedded defaults (SQLite, filesystem broker) or on MariaDB "
        "127.0.0.1:3306 (a fresh database) with Redis 127.0.0.1:6379/2",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary folder goes"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (data, logs)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    if args.scenarios is None:
        args.scenarios = ",".join(n for n in names if n != GROWTH or args.backend == "mariadb")
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown or not chosen:
        parser.error(f"unknown scenarios {unknown}; choose from {','.join(names)}")
    args.chosen = chosen
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def largest_blob(sizes: Sizes, chosen: list[str]) -> int:
    by_scenario = {
        "mono": sizes.mono_size,
        "chunked": sizes.chunked_size,
        "pull": sizes.pull_size,
        "pull16": sizes.concurrent_size,
        "memory": sizes.memory_size,
        "mirror": sizes.mirror_layer_size,
    }
    return max([by_scenario.get(name, 0) for name in chosen] + [MiB])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grown = 0
    if GROWTH in args.chosen:
        args.chosen.remove(GROWTH)
        root = Path(tempfile.mkdtemp(prefix="registry-growth-", dir=args.workdir))
        try:
            grown = growth.run(
                root,
                args.results,
                growth.QUICK_SIZES if args.quick else growth.SIZES,
                50 if args.quick else 200,
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if not args.chosen:
            return grown
    sizes = Sizes.quick() if args.quick else Sizes.full()
    scenarios = [s for s in all_scenarios(sizes) if s.name in args.chosen]
    facts = machine_facts()
    started_at = datetime.now()
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    revision = git_revision()
    print(
        f"machine: {facts['nproc']} CPUs ({facts['cpu_model']}), {facts['memory_gib']} GiB, "
        f"Linux {facts['kernel']}, Python {facts['python']}; load average {load_before[0]:.2f}\n"
        f"revision {revision}; backend {args.backend}; {args.repeat} repetition(s)"
        f"{'; quick sizes' if args.quick else ''}; scenarios {','.join(args.chosen)}",
        flush=True,
    )
    if "manifest-get" in args.chosen:
        servers.ensure_debian_package("wrk", "wrk")

    root = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=args.workdir))
    failures: list[str] = []
    values: dict[str, dict[str, list[dict[str, float]]]] = {}
    cpu: dict[str, dict[str, dict[str, Timing]]] = {}
    notes: list[str] = []
    anomalies: list[str] = []
    descriptions: dict[str, str] = {}
    load_max = load_before[0]
    registries: list[servers.Registry] = []
    helpers: list[servers.Registry] = []  # the mirror scenario's upstream and reference proxy
    wall_started = time.monotonic()
    try:
        data_size = largest_blob(sizes, args.chosen) + 64 * MiB
        print(f"writing {data_size // MiB} MiB of random data ...", flush=True)
        data = DataFile(root / "data.bin", data_size)
        (root / "ours").mkdir()
        (root / "reference").mkdir()
        mirror = next((s for s in scenarios if isinstance(s, MirrorPull)), None)
        mirrors_file = None
        if mirror is not None:
            # The upstream both mirrors pull from, started first: ours reads its URL at start.
            (root / "upstream").mkdir()
            mirror.upstream = servers.start_reference(root / "upstream", name="upstream")
            helpers.append(mirror.upstream)
            mirrors_file = root / "mirrors.json"
            document = {"mirrors": {MIRROR_NAMESPACE: {"url": mirror.upstream.endpoint.url}}}
            mirrors_file.write_text(json.dumps(document))
        registries.append(servers.start_ours(root / "ours", args.backend, mirrors_file))
        registries.append(servers.start_reference(root / "reference"))
        if mirror is not None:
            assert mirror.upstream is not None
            (root / "reference-proxy").mkdir()
            mirror.proxy = servers.start_reference(
                root / "reference-proxy", proxy_url=mirror.upstream.endpoint.url, name="proxy"
            )
            helpers.append(mirror.proxy)
        for registry in registries:
            descriptions[registry.name] = registry.description
            print(f"{registry.name}: {registry.description} at {registry.endpoint.url}", flush=True)
        ctx = Context(data, sizes)
        for scenario in scenarios:
            if isinstance(scenario, NotifyDelivery):
                run_notify(
                    scenario, ctx, root, args, values, cpu, failures, anomalies, descriptions
                )
            else:
                run_scenario(scenario, ctx, registries, args.repeat, values, cpu, failures)
            load_max = max(load_max, os.getloadavg()[0])
        notes = ctx.notes
        for registry in registries:
            for dead in registry.dead():
                failures.append(f"{registry.name}: {dead}")
            for line in registry.log_problems():
                anomalies.append(f"{registry.name} log: {line}")
    finally:
        for registry in [*registries, *helpers]:
            try:
                registry.stop()
            except Exception as exc:
                print(f"stopping {registry.name}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - wall_started
    load_after = os.getloadavg()

    table_rows = report.rows(scenarios, values)
    print()
    print(report.table(table_rows))
    print(
        "\nours/reference is the ratio of medians; ↑ higher is better, ↓ lower is better. "
        "MB/s = 10^6 bytes/s."
    )
    print("\nclient CPU time (the harness and wrk) during the timed parts:")
    print(report.cpu_table(scenarios, cpu))
    total_cpu = sum(
        t.cpu for per in cpu.values() for labels in per.values() for t in labels.values()
    )
    total_wall = sum(
        t.wall for per in cpu.values() for labels in per.values() for t in labels.values()
    )
    print(f"total: {total_cpu:.1f} s of client CPU over {total_wall:.1f} s of timed runs")
    print(
        f"\nrun took {elapsed:.0f} s; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after, at most {load_max:.2f} between scenarios "
        f"(above {facts['nproc']}: something else was busy, figures are noisier)"
    )
    for note in notes:
        print(f"note: {note}")
    for line in anomalies:
        print(f"anomaly: {line}")
    for failure in failures:
        print(f"FAILED: {failure}")

    payload = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "machine": facts,
        "revision": revision,
        "backend": args.backend,
        "repeat": args.repeat,
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "registries": descriptions,
        "load_average": {"before": load_before[0], "after": load_after[0], "max": load_max},
        "scenarios": {
            scenario.name: {
                "title": scenario.title,
                "metrics": {
                    m.key: {
                        "label": m.label,
                        "unit": m.unit,
                        "higher_is_better": m.higher_is_better,
                        "compared": m.compared,
                    }
                    for m in scenario.metrics
                },
                "runs": values.get(scenario.name, {}),
                "client_cpu": {
                    name: {label: t.__dict__ for label, t in labels.items()}
                    for name, labels in cpu.get(scenario.name, {}).items()
                },
            }
            for scenario in scenarios
        },
        "notes": notes,
        "anomalies": anomalies,
        "failures": failures,
    }
    json_path = args.results / f"{stamp}.json"
    report.write_json(json_path, payload)
    chart = report.write_chart(
        args.results / f"{stamp}.png",
        table_rows,
        f"ours ({args.backend}) / reference (Distribution 2.8), {stamp}, "
        f"{facts['nproc']} x {facts['cpu_model']}, {args.repeat} rep(s)",
    )
    print(f"\nraw figures: {json_path}")
    print(
        f"chart: {chart}"
        if chart
        else "chart: not written (no ratio to draw, or matplotlib is not installed)"
    )
    if failures:
        print(f"\n{len(failures)} failure(s): a request failed or returned wrong data")
        return 1
    return grown


def run_scenario(
    scenario: Scenario,
    ctx: Context,
    registries: list[servers.Registry],
    repeat: int,
    values: dict[str, dict[str, list[dict[str, float]]]],
    cpu: dict[str, dict[str, dict[str, Timing]]],
    failures: list[str],
) -> None:
    print(f"\n== {scenario.title}", flush=True)
    ready = []
    for registry in registries:
        try:
            scenario.prepare(ctx, registry)
            ready.append(registry)
        except Exception as exc:
            failures.append(f"{scenario.name} on {registry.name}, preparing: {describe(exc)}")
            print(f"   {registry.name}: preparation FAILED: {describe(exc)}", flush=True)
    for rep in range(repeat):
        for registry in ready:
            ctx.timings = {}
            try:
                result = scenario.run(ctx, registry, rep)
            except Exception as exc:
                failures.append(
                    f"{scenario.name} on {registry.name}, run {rep + 1}: {describe(exc)}"
                )
                print(f"   run {rep + 1} {registry.name}: FAILED: {describe(exc)}", flush=True)
                continue
            finally:
                spent = cpu.setdefault(scenario.name, {}).setdefault(registry.name, {})
                for label, timing in ctx.timings.items():
                    total = spent.setdefault(label, Timing())
                    total.wall += timing.wall
                    total.cpu += timing.cpu
            values.setdefault(scenario.name, {}).setdefault(registry.name, []).append(result)
            shown = ", ".join(
                f"{m.label} {report.number(result[m.key], m.unit)} {m.unit}"
                for m in scenario.metrics
                if m.key in result
            )
            print(f"   run {rep + 1} {registry.name:9} {shown}", flush=True)


def run_notify(
    scenario: NotifyDelivery,
    ctx: Context,
    root: Path,
    args: argparse.Namespace,
    values: dict[str, dict[str, list[dict[str, float]]]],
    cpu: dict[str, dict[str, dict[str, Timing]]],
    failures: list[str],
    anomalies: list[str],
    descriptions: dict[str, str],
) -> None:
    """The notify scenario on a pair of its own, started for it with a webhook endpoint at a
    receiver in this process and stopped after it: the other scenarios' registries send no
    events, whatever is chosen. On MariaDB, this ours has its own database and Redis database
    3 (the first one's broker is in 2)."""
    receiver = EventReceiver()
    scenario.receiver = receiver
    pair: list[servers.Registry] = []
    try:
        (root / "notify-ours").mkdir()
        (root / "notify-reference").mkdir()
        notifications_file = root / "notify-ours" / "notifications.json"
        endpoint = {"name": "bench", "url": f"{receiver.url}/ours", "actions": ["push"]}
        notifications_file.write_text(json.dumps({"endpoints": [endpoint]}))
        pair.append(
            servers.start_ours(
                root / "notify-ours",
                args.backend,
                notifications_file=notifications_file,
                redis_database=3,
            )
        )
        pair.append(
            servers.start_reference(
                root / "notify-reference", notifications_url=f"{receiver.url}/reference"
            )
        )
        for registry in pair:
            descriptions[f"{registry.name} ({scenario.name})"] = registry.description
            print(
                f"{registry.name} for {scenario.name}: {registry.description} "
                f"at {registry.endpoint.url}",
                flush=True,
            )
        run_scenario(scenario, ctx, pair, args.repeat, values, cpu, failures)
        for registry in pair:
            for dead in registry.dead():
                failures.append(f"{registry.name} ({scenario.name}): {dead}")
    except Exception as exc:
        failures.append(f"{scenario.name}, starting its registries: {describe(exc)}")
        print(f"   starting its registries FAILED: {describe(exc)}", flush=True)
    finally:
        for registry in pair:
            try:
                registry.stop()
            except Exception as exc:
                print(f"stopping {registry.name} ({scenario.name}): {exc}", file=sys.stderr)
            for line in registry.log_problems():
                anomalies.append(f"{registry.name} ({scenario.name}) log: {line}")
        receiver.close()
    if receiver.unreadable:
        ctx.note(
            f"{scenario.name}: {receiver.unreadable} of {receiver.requests} webhook requests "
            'had no readable {"events": [...]} body'
        )


def describe(exc: BaseException) -> str:
    if isinstance(exc, Failure):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


if __name__ == "__main__":
    sys.exit(main())
