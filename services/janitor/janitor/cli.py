"""``registry-admin``: the janitor's housekeeping, run by an operator, synchronously.

    registry-admin gc [--dry-run] [--grace 24h]
    registry-admin purge-uploads [--older-than 7d]
    registry-admin reconcile [--grace 1h] [--database-only] [--rate 1000] [--restart]
    registry-admin user add NAME [--password-stdin] [--catalog] [--grant 'team-a/*=pull,push']
    registry-admin user remove NAME
    registry-admin user list
    registry-admin mirrors list
    registry-admin mirrors expire [--namespace hub] [--older-than 7d]
    registry-admin mirrors purge NAMESPACE
    registry-admin notifications list
    registry-admin notifications replay ENDPOINT --since 2h [--until 2026-12-04T10:00]
    registry-admin policies
    registry-admin quota
    registry-admin retention [--dry-run]

Each housekeeping command runs the same code as the janitor's task, against the configuration
in the environment (``REGISTRY_*``), under the same lease (so it never runs beside the
janitor's own sweep), with a progress bar and a summary of what was examined and freed.

The ``mirrors`` commands show what each mirrored namespace keeps (repositories, tags,
manifests, the bytes of its blobs, when its tags were checked upstream), expire what has not
been pulled for the mirror's ``expire_seconds`` (or ``--older-than``) as the janitor does every
``REGISTRY_MIRROR_EXPIRY_INTERVAL_SECONDS``, or purge a namespace: its tags and manifests go
at once, its blobs at the next garbage collection after the grace period.

The ``notifications`` commands show each webhook endpoint's backlog (pending and parked
events, the oldest pending, the last delivery, the last error), and send an endpoint the events
recorded in a time range again (``--since``/``--until``: a time in UTC, or a duration ago).

The ``user`` commands edit the users file (``REGISTRY_AUTH_USERS_FILE``, or ``--file``) that
the gateway reloads on change: a password comes from a prompt (twice, not echoed) or from
standard input with ``--password-stdin``, and only its bcrypt hash is written.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tqdm import tqdm

from janitor import (
    gc,
    mirrors,
    notifications,
    reconcile,
    retention,
    runs,
    storage_sweep,
    uploads,
)
from janitor.report import Report
from shared import db, policies, users
from shared.models import utcnow
from shared.numbers import parse_duration
from shared.repositories import under_quota
from shared.settings import get_settings
from shared.storage import get_storage


def duration(text: str) -> dt.timedelta:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` or ``1w``."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run(name: str, work: Coroutine[Any, Any, Report], bar: tqdm) -> int:
    report = runs.run(name, work)
    if report is None:
        print(f"{name}: another janitor is running it now; try again later", file=sys.stderr)
        return 3
    bar.close()
    print(report.summary())
    if report.dry_run and report.would_delete:
        for digest in report.would_delete:
            print(f"  would delete {digest}")
    return 0


# --- users ----------------------------------------------------------------------------------


def _grant(text: str) -> tuple[str, list[str]]:
    """``PATTERN=ACTION,ACTION`` (``team-a/*=pull,push``)."""
    pattern, equals, actions = text.partition("=")
    listed = [a.strip() for a in actions.split(",") if a.strip()]
    if not equals or not pattern or not listed or not set(listed) <= set(users.ACTIONS):
        raise argparse.ArgumentTypeError(
            f"not a grant: {text!r} (try 'team-a/*=pull,push'; actions: {', '.join(users.ACTIONS)})"
        )
    return pattern, listed


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to prompt on: pass the password with --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ValueError("the passwords differ")
    return first


def _user_command(args: argparse.Namespace) -> int:
    path = Path(args.file or get_settings().auth_users_file)
    if not str(path) or str(path) == ".":
        print("registry-admin user: set REGISTRY_AUTH_USERS_FILE or pass --file", file=sys.stderr)
        return 2
    try:
        document = users.read_document(path)
        if args.user_command == "list":
            return _list_users(users.parse(document))
        names: dict[str, Any] = document.setdefault("users", {}) or {}
        document["users"] = names
        grants: list[Any] = document.setdefault("grants", []) or []
        document["grants"] = grants
        if args.user_command == "add":
            password = _read_password(args.password_stdin)
            entry: dict[str, Any] = {
                "password_hash": users.hash_password(password, args.rounds),
            }
            if args.catalog:
                entry["catalog"] = True
            existed = args.name in names
            names[args.name] = entry
            for pattern, actions in args.grant:
                grants.append({"repositories": [pattern], "users": [args.name], "actions": actions})
            users.write_document(path, document)
            print(f"{'updated' if existed else 'added'} user {args.name} in {path}")
            return 0
        if args.name not in names:
            print(f"registry-admin user: no user {args.name} in {path}", file=sys.stderr)
            return 1
        del names[args.name]
        kept = []
        for grant in grants:
            if isinstance(grant, dict) and isinstance(grant.get("users"), list):
                grant["users"] = [u for u in grant["users"] if u != args.name]
                if not grant["users"]:
                    del grant["users"]
                    if not grant.get("anonymous"):
                        continue
            kept.append(grant)
        document["grants"] = kept
        users.write_document(path, document)
        print(f"removed user {args.name} from {path}")
        return 0
    except (users.UsersFileError, ValueError, OSError) as exc:
        print(f"registry-admin user: {exc}", file=sys.stderr)
        return 1


def _list_users(store: users.UserStore) -> int:
    """Each user with what they are granted (never a hash), then the anonymous grants."""
    for name, user in sorted(store.users.items()):
        granted = [
            f"{','.join(g.patterns)}={','.join(a for a in users.ACTIONS if a in g.actions)}"
            for g in store.grants
            if g.applies_to(name)
        ]
        catalog = " catalog" if user.catalog else ""
        print(f"{name}{catalog}: {' '.join(granted) or '(no grants)'}")
    anonymous = [f"{','.join(g.patterns)}=pull" for g in store.grants if g.anonymous]
    if anonymous:
        print(f"(anonymous): {' '.join(anonymous)}")
    return 0


def _mirrors_command(args: argparse.Namespace) -> int:
    if args.mirror_command == "list":
        found = asyncio.run(mirrors.held())
        if not found:
            print("no mirrored namespace (REGISTRY_MIRRORS_FILE)")
        for held in found:
            checks = "no tag"
            if held.oldest_check and held.newest_check:
                checks = f"tags checked {held.oldest_check:%Y-%m-%d %H:%M}"
                checks += f" to {held.newest_check:%Y-%m-%d %H:%M}"
            print(
                f"{held.namespace}/ <- {held.url}: {held.repositories} repositories, "
                f"{held.tags} tags, {held.manifests} manifests, {held.blob_bytes} bytes; {checks}"
            )
        return 0
    namespace = args.namespace
    if namespace is not None and namespace not in mirrors.namespaces():
        print(f"{namespace!r} is not a mirrored namespace", file=sys.stderr)
        return 2
    older_than = dt.timedelta(0) if args.mirror_command == "purge" else args.older_than
    bar = tqdm(desc=f"mirrors {args.mirror_command}", unit=" repositories", file=sys.stderr)
    work = mirrors.expire(
        namespace=namespace, older_than=older_than, progress=lambda: bar.update(1)
    )
    return _run("expire_mirrors", work, bar)


def moment(text: str) -> dt.datetime:
    """A time in UTC (``2026-12-04T10:00``), or a duration ago (``2h``)."""
    try:
        return utcnow() - duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (try 2026-12-04T10:00 or 2h)"
        ) from None
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def _notifications_command(args: argparse.Namespace) -> int:
    if args.notifications_command == "replay":
        count = notifications.replay(args.endpoint, args.since, args.until)
        print(f"{count} events of {args.endpoint} will be sent again")
        return 0
    found = notifications.backlogs()
    if not found:
        print("no notification endpoint (REGISTRY_NOTIFICATIONS_FILE)")
    for backlog in found:
        state = "" if backlog.configured else " (no longer configured)"
        oldest = f", oldest {backlog.oldest_pending:%Y-%m-%d %H:%M:%S}" if backlog.pending else ""
        last = f"{backlog.last_delivered:%Y-%m-%d %H:%M:%S}" if backlog.last_delivered else "never"
        print(
            f"{backlog.endpoint}{state}: {backlog.pending} pending{oldest}, "
            f"{backlog.parked} parked; last delivered {last}; "
            f"last error: {backlog.last_error or 'none'}"
        )
    return 0


def _policies_command() -> int:
    path = get_settings().policies_file
    if not path:
        print("no policies file (REGISTRY_POLICIES_FILE): every tag may move and be deleted")
        return 0
    try:
        found = policies.load(Path(path))
    except policies.PoliciesFileError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    print(f"{path}:")
    if not (found.immutable_tags or found.quotas or found.retention):
        print("  no rules")
    for rule in found.immutable_tags:
        print(f"  immutable: {rule.describe()}")
    for quota in found.quotas:
        print(f"  quota: {quota.describe()}")
    for kept in found.retention:
        print(f"  retention: {kept.describe()}")
    return 0


def _quota_command() -> int:
    """Each repository under a quota: what it holds, against its limits."""
    if not policies.configured().quotas:
        print("no quotas (REGISTRY_POLICIES_FILE)")
        return 0
    with db.reading() as connection:
        found = under_quota(connection, policies.configured())
    for name, quota, held in found:
        storage = f" of {int(quota.storage)}" if quota.storage is not None else ""
        tags = f" of {quota.tags}" if quota.tags is not None else ""
        print(f"{name}: storage {held.storage}{storage} bytes, tags {held.tags}{tags}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-admin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gc_cmd = commands.add_parser(
        "gc", help="delete blobs (and by policy manifests) nothing references"
    )
    purge = commands.add_parser("purge-uploads", help="delete uploads nobody finished")
    rec = commands.add_parser("reconcile", help="finish interrupted work, delete orphaned objects")
    rec.add_argument(
        "--database-only",
        action="store_true",
        help="only what the database knows (overdue moves, deletions begun), as the hourly"
        " reconcile does: no walk of storage",
    )
    rec.add_argument(
        "--rate",
        type=float,
        help="objects a second the walk of storage lists at most (default:"
        " REGISTRY_STORAGE_SWEEP_RATE; 0: no limit)",
    )
    rec.add_argument(
        "--restart", action="store_true", help="walk storage from the start, not on from a walk"
    )
    for sweep, option, text, setting in (
        (gc_cmd, "--grace", "never collect what is younger than this", "GC_GRACE_SECONDS"),
        (purge, "--older-than", "uploads idle longer go", "UPLOAD_PURGE_AGE_SECONDS"),
        (rec, "--grace", "younger objects are never orphans", "RECONCILE_GRACE_SECONDS"),
    ):
        sweep.add_argument(option, type=duration, help=f"{text} (default: REGISTRY_{setting})")
    gc_cmd.add_argument(
        "--dry-run", action="store_true", help="report what would be deleted, delete nothing"
    )
    gc_cmd.add_argument(
        "--untagged",
        action=argparse.BooleanOptionalAction,
        help="also collect manifests that no tag, index or subject refers to (default:"
        " REGISTRY_GC_UNTAGGED_MANIFESTS)",
    )
    gc_cmd.add_argument("--limit", type=int, default=1_000_000, help="most reviews to take")
    gc_cmd.add_argument(
        "--full",
        action="store_true",
        help="first give every unreferenced blob without a review one (a walk of the whole"
        " blobs table, resumed where an interrupted one stopped); without it, only the reviews"
        " that changes recorded are read",
    )
    user = commands.add_parser("user", help="add, remove or list the users of the users file")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for command, text in (
        ("add", "add a user, or set an existing user's password"),
        ("remove", "remove a user and their grants"),
        ("list", "list the users and their grants"),
    ):
        sub = user_commands.add_parser(command, help=text)
        sub.add_argument("--file", help="the users file (default: REGISTRY_AUTH_USERS_FILE)")
        if command == "list":
            continue
        sub.add_argument("name")
        if command == "add":
            sub.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from standard input (one line) instead of a prompt",
            )
            sub.add_argument(
                "--catalog", action="store_true", help="the user may list /v2/_catalog"
            )
            sub.add_argument(
                "--grant",
                type=_grant,
                action="append",
                default=[],
                metavar="PATTERN=ACTIONS",
                help="grant actions on repositories matching a glob: 'team-a/*=pull,push'",
            )
            sub.add_argument("--rounds", type=int, default=12, help="bcrypt cost (default 12)")
    mirror = commands.add_parser("mirrors", help="what mirrored namespaces keep; expire, purge")
    mirror_commands = mirror.add_subparsers(dest="mirror_command", required=True)
    mirror_commands.add_parser("list", help="what each mirrored namespace keeps")
    expire = mirror_commands.add_parser("expire", help="expire what was not pulled for a while")
    expire.add_argument("--namespace", help="this mirrored namespace only")
    expire.add_argument(
        "--older-than", type=duration, help="not pulled for this long (default: the mirror's)"
    )
    purge_ns = mirror_commands.add_parser("purge", help="forget all a mirrored namespace keeps")
    purge_ns.add_argument("namespace")
    notify = commands.add_parser("notifications", help="webhook backlogs; replay events")
    notify_commands = notify.add_subparsers(dest="notifications_command", required=True)
    notify_commands.add_parser("list", help="each endpoint's backlog, last delivery and error")
    replay = notify_commands.add_parser("replay", help="send an endpoint's events again")
    replay.add_argument("endpoint")
    replay.add_argument("--since", type=moment, required=True, help="a UTC time, or 2h ago")
    replay.add_argument("--until", type=moment, help="a UTC time, or 10m ago (default: now)")
    commands.add_parser(
        "policies", help="the policies file's rules (immutable tags, quotas, retention)"
    )
    commands.add_parser("quota", help="what each repository under a quota holds")
    keep = commands.add_parser("retention", help="remove what the retention rules say goes")
    keep.add_argument("--dry-run", action="store_true", help="report what would go, remove nothing")
    args = parser.parse_args(argv)
    if args.command == "policies":
        return _policies_command()
    if args.command == "quota":
        return _quota_command()
    if args.command == "notifications":
        return _notifications_command(args)
    if args.command == "user":
        return _user_command(args)
    if args.command == "mirrors":
        return _mirrors_command(args)

    storage = get_storage()
    bar = tqdm(desc=args.command, unit=" items", file=sys.stderr)
    tick = lambda: bar.update(1)  # noqa: E731
    if args.command == "retention":
        return _run("retention", retention.apply(dry_run=args.dry_run, progress=tick), bar)
    if args.command == "gc":
        work = gc.collect_garbage(
            storage,
            grace=args.grace,
            untagged_manifests=args.untagged,
            dry_run=args.dry_run,
            limit=args.limit,
            progress=tick,
            full=args.full,
        )
        return _run("collect_garbage", work, bar)
    if args.command == "purge-uploads":
        return _run(
            "purge_stale_uploads",
            uploads.purge_stale_uploads(storage, older_than=args.older_than, progress=tick),
            bar,
        )
    work = reconcile.reconcile(storage, progress=tick)
    done = _run("reconcile", work, bar)
    if done or args.database_only:
        return done
    # Then the storage sweep, as the janitor runs it, but to the end: on from where the walk in
    # progress stopped, unless told to start again.
    if not args.restart and (where := storage_sweep.position()) is not None:
        print(f"sweep_storage: going on after {where[0]} (walked until {where[1]:%Y-%m-%d %H:%M})")
    bar = tqdm(desc="sweep_storage", unit=" objects", file=sys.stderr)
    walk = storage_sweep.sweep(
        storage,
        grace=args.grace,
        rate=args.rate,
        progress=lambda: bar.update(1),
        restart=args.restart,
    )
    return _run("sweep_storage", walk, bar)


if __name__ == "__main__":
    sys.exit(main())
