"""Fixtures: the whole registry, started as real processes: on SQLite with the filesystem
broker, on MariaDB with Redis, and on SQLite with the filesystem broker and its storage on a
protocol-level OSS server (``tests/oss_server.py``). Every test that takes ``registry`` runs on
all three."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from shared import migrate
from shared.runner import start_all, stop_all
from shared.settings import Settings
from tests.docker_engine import DockerEngine
from tests.registry import (
    REDIS,
    RedisServer,
    RegistryUnderTest,
    create_mariadb_database,
    drop_mariadb_database,
    environment_with,
    free_ports,
    storage_under_test,
)


@contextmanager
def running_registry(
    backend: str, root: Path, broker_url: str | None = None, **overrides: str
) -> Iterator[RegistryUnderTest]:
    """A whole registry on ``backend`` ("sqlite": a SQLite file and the filesystem broker;
    "mariadb": a fresh MariaDB database and Redis; "oss": as "sqlite", with the storage on an
    OSS test server of its own), its data under ``root``. ``overrides`` are settings
    (``gc_grace_seconds="5"``); ``broker_url`` picks another broker."""
    with (
        storage_under_test("oss" if backend == "oss" else "file", root) as storage,
        _running_registry(backend, root, broker_url, storage.settings, overrides) as running,
    ):
        running.storage_path = storage.path
        running.oss = storage.oss
        yield running


@contextmanager
def _running_registry(
    backend: str,
    root: Path,
    broker_url: str | None,
    storage: dict[str, str],
    overrides: dict[str, str],
) -> Iterator[RegistryUnderTest]:
    database_name = f"registry_test_{uuid.uuid4().hex[:8]}"
    if backend in ("sqlite", "oss"):
        database_url = f"sqlite:///{root / 'registry.db'}"
        broker_url = broker_url or f"filesystem://{root / 'broker'}"
    else:
        database_url = create_mariadb_database(database_name)
        broker_url = broker_url or REDIS
    port, blob_port, manifest_port, janitor_metrics_port = free_ports(4)
    values = {
        "database_url": database_url,
        **storage,
        "broker_url": broker_url,
        # Every registry under test has its own queue, even on a shared Redis.
        "broker_queue": f"janitor-{uuid.uuid4().hex[:12]}",
        "gateway_port": str(port),
        "blob_service_port": str(blob_port),
        "manifest_service_port": str(manifest_port),
        "janitor_metrics_port": str(janitor_metrics_port),
        "log_level": "info",
        "beat_schedule_file": str(root / "celerybeat-schedule"),
        **overrides,
    }
    env = environment_with(values)
    settings = Settings(**values)
    migrate.upgrade(database_url)
    processes = start_all(settings, env=env, log_dir=root / "logs")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        yield RegistryUnderTest(backend, settings, client, root, processes, env)
    finally:
        client.close()
        stop_all(processes)
        if backend == "mariadb":
            drop_mariadb_database(database_name)


@contextmanager
def isolated_registry(backend: str, root: Path, **overrides: str) -> Iterator[RegistryUnderTest]:
    """``running_registry``; on MariaDB with a Redis of its own, so that nothing else done
    to the shared Redis (flushed or restarted by another test session) reaches this registry,
    and none of its events (those a killed worker held, say) stays behind there."""
    if backend != "mariadb":
        with running_registry(backend, root, **overrides) as registry:
            yield registry
        return
    with (
        RedisServer() as redis_server,
        running_registry(backend, root, broker_url=redis_server.url, **overrides) as registry,
    ):
        yield registry


BACKENDS = ("sqlite", "mariadb", "oss")


def registry_fixture(
    name: str,
    backends: tuple[str, ...] = BACKENDS,
    *,
    scope: Literal["session", "module", "function"] = "module",
    isolated: bool = False,
    **settings: str,
) -> Any:
    """A ``registry`` fixture of a test module's own, on each of ``backends``, with
    ``settings``; ``isolated``: with a Redis of its own on MariaDB (``isolated_registry``).
    Assign it to ``registry`` in the module."""

    @pytest.fixture(scope=scope, params=list(backends), name="registry")
    def fixture(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RegistryUnderTest]:
        backend: str = request.param
        root = tmp_path_factory.mktemp(f"{name}-{backend}")
        start = isolated_registry if isolated else running_registry
        with start(backend, root, **settings) as running:
            yield running

    return fixture


@pytest.fixture(scope="session", params=list(BACKENDS))
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    backend: str = request.param
    with running_registry(backend, tmp_path_factory.mktemp(f"registry-{backend}")) as running:
        yield running


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A fresh repository name for one test."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.lower()).strip("-")[:60]
    return f"test/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    """One dockerd for every test that drives the Docker engine; each test uses fresh
    repositories and images, and its own client configuration for its logins."""
    with DockerEngine(tmp_path_factory.mktemp("docker")) as engine:
        yield engine
