"""Starting and stopping the two registries, on loopback only, their data in a temporary folder.

- ``ours``: this registry's processes, started as ``make run`` starts them
  (``shared.runner.start_all``), on free ports, with the embedded defaults (a SQLite file, a
  storage folder, the filesystem broker) or, with ``--backend mariadb``, a fresh MariaDB
  database on 127.0.0.1:3306 and Redis database 2 on 127.0.0.1:6379.
- ``reference``: Debian's ``docker-registry`` (CNCF Distribution 2.8), filesystem storage,
  deletes enabled, installed with apt-get when missing.

Either can be given a webhook endpoint (ours through a notifications file, the reference in
its configuration's ``notifications``), for the scenario that measures event delivery.

Both log at a level that writes nothing per request (uvicorn runs with ``--no-access-log``; the
reference with its access log off and level ``warn``), so neither pays for request logging.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.client import Endpoint

LOOPBACK = "127.0.0.1"
MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
REDIS_SERVER = "redis://127.0.0.1:6379"
REDIS_URL = f"{REDIS_SERVER}/2"
PROBLEM_MARKERS = ("Traceback", "ERROR", "CRITICAL", "level=error", "level=fatal", "panic:")
# What the slow-client scenario makes happen on purpose: clients gone in the middle of a body.
EXPECTED_MARKERS = ("client disconnected",)


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((LOOPBACK, 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def ensure_debian_package(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    print(f"{binary} is missing: installing Debian's {package}", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", package],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    found = shutil.which(binary) or (
        f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None
    )
    if not found:
        raise RuntimeError(f"installing {package} did not bring {binary}")
    return found


def rss_kib(pid: int) -> int:
    """The resident set (VmRSS) of ``pid`` in KiB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every process under them (from the parent ids in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    queue = list(roots)
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def _wait_for_v2(url: str, popen: subprocess.Popen[bytes], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with status {popen.returncode}")
        try:
            if httpx.get(f"{url}/v2/", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer at {url}/v2/ within {timeout}s")


def _log_problems(paths: list[Path], limit: int) -> list[str]:
    problems: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if any(m in line for m in PROBLEM_MARKERS) and not any(
                m in line for m in EXPECTED_MARKERS
            ):
                problems.append(f"{path.name}: {line.strip()[:400]}")
    if len(problems) > limit:
        problems = [*problems[:limit], f"... and {len(problems) - limit} more lines"]
    return problems


@dataclass
class Registry:
    """A running registry: where it listens, its processes, its logs."""

    name: str  # "ours" or "reference"
    description: str
    endpoint: Endpoint
    root: Path
    popens: list[tuple[str, subprocess.Popen[bytes]]]
    log_paths: list[Path]
    stop: Callable[[], None]

    def pids(self) -> list[int]:
        """Every process of this registry, children of its processes included."""
        return descendants([p.pid for _, p in self.popens if p.poll() is None])

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def rss_kib_by_process(self) -> dict[str, int]:
        """The resident set of each of this registry's processes (its children included)."""
        return {
            name: sum(rss_kib(pid) for pid in descendants([popen.pid]))
            for name, popen in self.popens
            if popen.poll() is None
        }

    def dead(self) -> list[str]:
        return [
            f"{name} exited with status {p.returncode}"
            for name, p in self.popens
            if p.poll() is not None
        ]

    def log_problems(self, limit: int = 20) -> list[str]:
        return _log_problems(self.log_paths, limit)


def start_reference(
    root: Path,
    proxy_url: str | None = None,
    name: str = "reference",
    notifications_url: str | None = None,
) -> Registry:
    """The reference registry; with ``proxy_url``, in its proxy mode (a pull-through cache of
    the registry there, which refuses pushes); with ``notifications_url``, sending its events
    there (pushes only, like the endpoint ours is given: pulls are ignored)."""
    binary = ensure_debian_package("docker-registry", "docker-registry")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    (port,) = free_ports(1)
    storage = root / "storage"
    storage.mkdir(parents=True)
    # JSON is YAML: no quoting rules to get wrong.
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"{LOOPBACK}:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if proxy_url is not None:
        config["proxy"] = {"remoteurl": proxy_url}
    if notifications_url is not None:
        # Distribution 2.8 wants name, url, timeout, threshold and backoff (headers: none).
        webhook = {
            "name": "bench",
            "url": notifications_url,
            "headers": {},
            "timeout": "5s",
            "threshold": 5,
            "backoff": "1s",
            "ignore": {"actions": ["pull"]},
        }
        config["notifications"] = {"endpoints": [webhook]}
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = root / "reference.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT
        )
    endpoint = Endpoint(LOOPBACK, port)
    try:
        _wait_for_v2(endpoint.url, popen, "docker-registry")
    except BaseException:
        popen.kill()
        popen.wait()
        raise

    def stop() -> None:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    return Registry(
        name,
        f"docker-registry {version.stdout.strip().split()[-1] if version.stdout else '?'} "
        "(filesystem storage, in-memory blob descriptor cache"
        + (f", proxy of {proxy_url}" if proxy_url else "")
        + (f", webhooks to {notifications_url}" if notifications_url else "")
        + ")",
        endpoint,
        root,
        [("docker-registry", popen)],
        [log_path],
        stop,
    )


def _mariadb_database() -> tuple[str, str]:
    import pymysql

    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    try:
        connection = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="")
    except pymysql.err.OperationalError as exc:
        raise RuntimeError(
            f"no MariaDB on {MARIADB_HOST}:{MARIADB_PORT} as root without a password "
            f"({exc}); `make services` starts one"
        ) from None
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    connection.close()
    return name, f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}?charset=utf8mb4"


def _drop_mariadb_database(name: str) -> None:
    import pymysql

    connection = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    connection.close()


def start_ours(
    root: Path,
    backend: str,
    mirrors_file: Path | None = None,
    notifications_file: Path | None = None,
    redis_database: int = 2,
    database_url: str | None = None,
) -> Registry:
    """This registry; with ``mirrors_file`` and ``notifications_file``, those settings. On
    MariaDB, its Redis database is ``redis_database`` (emptied first): a second instance
    running beside the first needs its own, or the two would share their broker queues; and
    its database a fresh one, or ``database_url`` (left as it is when the registry stops)."""
    from shared import migrate
    from shared.runner import start_all, stop_all
    from shared.settings import Settings

    database_name = None
    if backend == "sqlite":
        database_url = f"sqlite:///{root / 'registry.db'}"
        broker_url = f"filesystem://{root / 'broker'}"
        description = "this registry (SQLite, filesystem storage, filesystem broker)"
    elif backend == "mariadb":
        import redis

        redis_url = f"{REDIS_SERVER}/{redis_database}"
        if database_url is None:
            database_name, database_url = _mariadb_database()
        try:
            redis.Redis.from_url(redis_url).flushdb()
        except redis.RedisError as exc:
            if database_name:
                _drop_mariadb_database(database_name)
            raise RuntimeError(
                f"no Redis at {redis_url} ({exc}); `make services` starts one"
            ) from None
        broker_url = redis_url
        description = "this registry (MariaDB, filesystem storage, Redis broker)"
    else:
        raise ValueError(backend)
    port, blob_port, manifest_port = free_ports(3)
    values = {
        "database_url": database_url,
        "storage_url": f"file://{root / 'storage'}",
        "broker_url": broker_url,
        "gateway_host": LOOPBACK,
        "gateway_port": str(port),
        "blob_service_host": LOOPBACK,
        "blob_service_port": str(blob_port),
        "manifest_service_host": LOOPBACK,
        "manifest_service_port": str(manifest_port),
        "beat_schedule_file": str(root / "celerybeat-schedule"),
        "log_level": "info",
    }
    if mirrors_file is not None:
        values["mirrors_file"] = str(mirrors_file)
    if notifications_file is not None:
        values["notifications_file"] = str(notifications_file)
        description = description[:-1] + ", webhooks as the notifications file says)"
    env = {**os.environ, **{f"REGISTRY_{k.upper()}": v for k, v in values.items()}}
    settings = Settings(**values)
    log_dir = root / "logs"
    try:
        migrate.upgrade(database_url)
        started = start_all(settings, env=env, log_dir=log_dir)
    except BaseException:
        if database_name:
            _drop_mariadb_database(database_name)
        raise

    def stop() -> None:
        stop_all(started)
        if database_name:
            _drop_mariadb_database(database_name)

    return Registry(
        "ours",
        description,
        Endpoint(LOOPBACK, port),
        root,
        [(process.name, popen) for process, popen in started],
        [log_dir / f"{process.name}.log" for process, _ in started],
        stop,
    )
