"""``registry-admin``: the janitor's housekeeping, run by an operator, synchronously.

    registry-admin gc [--dry-run] [--grace 24h]
    registry-admin purge-uploads [--older-than 7d]
    registry-admin reconcile [--grace 1h]

Each command runs the same code as the janitor's task, against the configuration in the
environment (``REGISTRY_*``), under the same lease (so it never runs beside the janitor's own
sweep), with a progress bar and a summary of what was examined and freed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from collections.abc import Coroutine
from typing import Any

from tqdm import tqdm

from janitor import gc, leases, reconcile, uploads
from janitor.report import Report
from shared.settings import get_settings
from shared.storage import get_storage

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` or ``1w``."""
    match = re.fullmatch(r"(\d+)([smhdw]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 15m, 24h, 7d)")
    return dt.timedelta(seconds=int(match[1]) * _UNITS[match[2] or "s"])


def _run(name: str, work: Coroutine[Any, Any, Report], bar: tqdm) -> int:
    with leases.lease(name, dt.timedelta(hours=2)) as mine:
        if not mine:
            work.close()
            print(f"{name}: another janitor is running it now; try again later", file=sys.stderr)
            return 3
        report = asyncio.run(work)
    bar.close()
    print(report.summary())
    if report.dry_run and report.would_delete:
        for digest in report.would_delete:
            print(f"  would delete {digest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="registry-admin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gc_cmd = commands.add_parser(
        "gc", help="delete blobs (and by policy manifests) nothing references"
    )
    gc_cmd.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted, delete nothing"
    )
    gc_cmd.add_argument(
        "--grace",
        type=duration,
        default=dt.timedelta(seconds=settings.gc_grace_seconds),
        help="never collect what is younger than this (default: REGISTRY_GC_GRACE_SECONDS)",
    )
    gc_cmd.add_argument(
        "--untagged",
        action=argparse.BooleanOptionalAction,
        default=settings.gc_untagged_manifests,
        help="also collect manifests that no tag, index or subject refers to",
    )
    gc_cmd.add_argument("--limit", type=int, default=1_000_000, help="most reviews to take")
    purge = commands.add_parser("purge-uploads", help="delete uploads nobody finished")
    purge.add_argument(
        "--older-than",
        type=duration,
        default=dt.timedelta(seconds=settings.upload_purge_age_seconds),
    )
    rec = commands.add_parser("reconcile", help="finish interrupted work, delete orphaned objects")
    rec.add_argument(
        "--grace",
        type=duration,
        default=dt.timedelta(seconds=settings.reconcile_grace_seconds),
        help="objects younger than this are never called orphans",
    )
    args = parser.parse_args(argv)

    storage = get_storage()
    bar = tqdm(desc=args.command, unit=" items", file=sys.stderr)
    tick = lambda: bar.update(1)  # noqa: E731
    if args.command == "gc":
        work = gc.collect_garbage(
            storage,
            grace=args.grace,
            untagged_manifests=args.untagged,
            dry_run=args.dry_run,
            limit=args.limit,
            progress=tick,
        )
        return _run("collect_garbage", work, bar)
    if args.command == "purge-uploads":
        return _run(
            "purge_stale_uploads",
            uploads.purge_stale_uploads(storage, older_than=args.older_than, progress=tick),
            bar,
        )
    work = reconcile.reconcile(
        storage,
        grace=args.grace,
        promote_after=dt.timedelta(seconds=settings.promote_delay_seconds),
        gc_grace=dt.timedelta(seconds=settings.gc_grace_seconds),
        progress=tick,
    )
    return _run("reconcile", work, bar)


if __name__ == "__main__":
    sys.exit(main())
