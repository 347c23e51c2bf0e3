"""The registry under test, and the client steps of the spec's workflows, written once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pymysql
from celery import Celery
from sqlalchemy import make_url, text

from shared.db import forget_engine, make_engine
from shared.events import broker_options
from shared.notifications import forget_file as forget_notifications_file
from shared.policies import forget_file as forget_policies_file
from shared.processes import Process
from shared.runner import start, wait_until_up
from shared.settings import ENV_PREFIX, Settings, get_settings
from shared.storage import get_storage
from shared.storage.oss import logical_key
from tests.oss_server import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, OssTestServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class RegistryUnderTest:
    backend: str
    settings: Settings
    http: httpx.Client
    root: Path
    processes: list[tuple[Process, subprocess.Popen[bytes]]]
    env: dict[str, str]
    # Where the stored objects are, when not in <root>/storage: the OSS test server's folder.
    storage_path: Path | None = None
    oss: OssTestServer | None = None  # the OSS test server the storage is on (to inject faults)
    # The environment of each process that does not run with ``env`` (replicas: each has its
    # own ports), by process name.
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def storage_root(self) -> Path:
        return self.storage_path or self.root / "storage"

    def stored_files(self) -> set[str]:
        """The keys of the stored objects. The OSS driver stores the chunks of an upload as
        segment objects beside the upload's object: they count as that one object."""
        # os.walk passes over folders deleted while it walks (the janitor works meanwhile);
        # Path.rglob raises FileNotFoundError on them.
        return {
            logical_key(Path(folder, name).relative_to(self.storage_root).as_posix())
            for folder, _, names in os.walk(self.storage_root)
            for name in names
        }

    def query(self, sql: str, **params: Any) -> list[Any]:
        # A read-only engine: on SQLite a plain one would take the write lock (BEGIN IMMEDIATE)
        # for every poll and compete with the janitor for it.
        engine = make_engine(self.settings.database_url)
        try:
            with engine.execution_options(readonly=True).connect() as connection:
                return list(connection.execute(text(sql), params))
        finally:
            engine.dispose()

    def execute(self, sql: str, **params: Any) -> None:
        """Change rows as a test needs them (times moved back, a review lost), in a
        transaction of its own."""
        engine = make_engine(self.settings.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(text(sql), params)
        finally:
            engine.dispose()

    def storage_matches_database(self) -> bool:
        """Storage holds exactly the objects the database says it does: each blob's object
        (where its row says it is) and the data of uploads in progress; nothing else."""
        blobs = {key for (key,) in self.query("SELECT storage_key FROM blobs")}
        uploads = {key for (key,) in self.query("SELECT storage_key FROM uploads")}
        stored = self.stored_files()
        return blobs <= stored and stored <= blobs | uploads

    def storage_difference(self) -> str:
        blobs = {key for (key,) in self.query("SELECT storage_key FROM blobs")}
        uploads = {key for (key,) in self.query("SELECT storage_key FROM uploads")}
        stored = self.stored_files()
        return (
            f"rows without objects: {sorted(blobs - stored)}; "
            f"objects without rows: {sorted(stored - blobs - uploads)}"
        )

    @contextmanager
    def configured(self) -> Iterator[None]:
        """Run code of this process against this registry's database and storage, as the
        janitor's own code does (settings come from the environment)."""
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("REGISTRY_")})
        _clear_cached_configuration()
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            _clear_cached_configuration()

    def admin(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``registry-admin`` against this registry, as an operator would."""
        return subprocess.run(
            [sys.executable, "-m", "janitor.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(popen for process, popen in self.processes if process.name == name)

    def kill(self, name: str) -> None:
        """Kill process ``name`` and its children with SIGKILL, as a crash would: nothing of
        theirs runs after (the Celery worker's prefork children included)."""
        popen = self.process(name)
        if popen.poll() is not None:
            return
        popen.send_signal(signal.SIGSTOP)  # so that it forks no new child meanwhile
        for child in child_pids(popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        popen.kill()
        popen.wait()

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start process ``name`` again (after it died or was killed): the same command and
        environment, its output appended to its log."""
        index = next(i for i, (process, _) in enumerate(self.processes) if process.name == name)
        process, old = self.processes[index]
        if old.poll() is None:
            raise RuntimeError(f"{name} is still running")
        popen = start(process, self.envs.get(name, self.env), self.root / "logs")
        self.processes[index] = (process, popen)
        wait_until_up(process, popen)
        return popen

    def log(self, process: str) -> str:
        return (self.root / "logs" / f"{process}.log").read_text(errors="replace")

    # --- the client steps of the spec's workflows ---------------------------------------

    def push_blob(self, repo: str, data: bytes) -> str:
        """POST then PUT with the whole blob (the spec's "POST then PUT")."""
        start = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        digest = sha256(data)
        done = self.http.put(
            start.headers["Location"],
            params={"digest": digest},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def push_manifest(
        self,
        repo: str,
        reference: str,
        manifest: dict[str, Any] | bytes,
        media_type: str = OCI_MANIFEST,
    ) -> httpx.Response:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        return self.http.put(
            f"/v2/{repo}/manifests/{reference}", content=body, headers={"Content-Type": media_type}
        )

    def push_image(
        self, repo: str, reference: str, layers: list[bytes] | None = None, **extra: Any
    ) -> tuple[bytes, str]:
        """Push a config, the layers and a manifest; returns the manifest bytes and digest."""
        layers = layers if layers is not None else [b"layer one", b"layer two"]
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": self.push_blob(repo, config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": self.push_blob(repo, layer), "size": len(layer)}
                for layer in layers
            ],
            **extra,
        }
        body = json.dumps(manifest, indent=3).encode()
        response = self.push_manifest(repo, reference, body)
        assert response.status_code == 201, response.text
        return body, sha256(body)


def janitor_client(broker_url: str, queue: str) -> Celery:
    """A Celery client that queues janitor tasks as beat does (close it after)."""
    client = Celery("registry-tests")
    client.conf.update(task_serializer="json", **broker_options(broker_url, queue))
    return client


@dataclass
class StorageUnderTest:
    settings: dict[str, str]  # the storage settings (``storage_url``, OSS credentials)
    path: Path | None  # where the stored objects are, when not in <root>/storage
    oss: OssTestServer | None  # the OSS test server the storage is on


@contextmanager
def storage_under_test(kind: str, root: Path) -> Iterator[StorageUnderTest]:
    """The storage of a registry under test: a folder (``file``) or, for ``oss``, an OSS test
    server of its own, under ``root``."""
    if kind != "oss":
        yield StorageUnderTest({"storage_url": f"file://{root / 'storage'}"}, None, None)
        return
    with OssTestServer(root / "oss") as oss:
        settings = {
            "storage_url": f"oss://registry/storage?endpoint={oss.endpoint}",
            "oss_access_key_id": DEFAULT_KEY_ID,
            "oss_access_key_secret": DEFAULT_KEY_SECRET,
        }
        # The server keeps each object as a file: tests look at them as on a filesystem.
        yield StorageUnderTest(settings, oss.bucket_path("registry") / "storage", oss)


def _clear_cached_configuration() -> None:
    get_settings.cache_clear()
    forget_notifications_file()
    forget_policies_file()
    forget_engine()
    get_storage.cache_clear()


def environment_with(values: Mapping[str, str]) -> dict[str, str]:
    """The environment of a process configured by ``values`` (settings by name) alone, as
    ``Settings(**values)`` is: this one's, without its own ``REGISTRY_*`` variables (one set
    in the shell that runs the tests would otherwise reach the processes and not the test)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return environment | {f"{ENV_PREFIX}{k.upper()}": v for k, v in values.items()}


def error_codes(response: httpx.Response) -> list[str]:
    """The spec's error codes in an error response body."""
    return [error["code"] for error in response.json()["errors"]]


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Wait for work the janitor does after a request has been answered."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (its direct children)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def _ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (and ``bind(..., 0)``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on loopback now, chosen below the kernel's range for
    outgoing connections: a port from that range (what binding port 0 gives) can be taken as
    the local end of any connection some process opens before the server binds it, and the
    server then fails to start."""
    ephemeral = _ephemeral_ports()
    candidates = range(20000, ephemeral.start) if ephemeral.start > 21000 else range(1024, 20000)
    ports: list[int] = []
    while len(ports) < count:
        port = random.choice(candidates)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def free_port() -> int:
    return free_ports(1)[0]


# The MariaDB server and Redis the tests use (``make services`` starts them).
MARIADB = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/1")


def mariadb_server() -> pymysql.Connection[Any]:
    """A connection to the MariaDB server as its administrator (no database chosen)."""
    url = make_url(MARIADB)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )


def create_mariadb_database(name: str) -> str:
    """A new, empty database ``name`` (utf8mb4, binary collation); returns its URL."""
    connection = mariadb_server()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        connection.close()
    return f"{MARIADB}/{name}?charset=utf8mb4"


def drop_mariadb_database(name: str) -> None:
    connection = mariadb_server()
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        connection.close()


@contextmanager
def mariadb_database(prefix: str) -> Iterator[str]:
    """The URL of a new MariaDB database, dropped at the end."""
    name = f"{prefix}_{os.urandom(4).hex()}"
    try:
        yield create_mariadb_database(name)
    finally:
        drop_mariadb_database(name)


class RedisServer:
    """A ``redis-server`` of a test's own, without persistence, that the test may stop and
    start again on the same port (a broker outage); its queues are nobody else's."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
