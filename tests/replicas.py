"""The registry as it is deployed: two replicas of every process over one database, one broker
and one storage, behind a load balancer that picks a replica for every request.

``replicated_registry`` starts, on a fresh MariaDB database, a Redis of its own and one storage
(a folder, or an OSS test server), two of each: gateway, blob service, manifest service,
janitor worker (each with its own Celery hostname) and janitor beat (each with its own schedule
file); each replica has its own ports. HAProxy runs in front: one frontend for the public
address, balancing the gateways, and one per service, where the gateways find the services, so
any gateway's call may reach either replica of a service. ``option http-server-close`` closes
the connection to the replica after every answer, so each request on a client's keep-alive
connection is balanced again (round robin): the finest interleaving replicas can meet (a
Kubernetes Service balances connections; an ingress or a service mesh, requests).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from shared import migrate
from shared.processes import Process, processes
from shared.runner import start, stop_all, wait_until_up
from shared.settings import Settings
from tests.registry import (
    RedisServer,
    RegistryUnderTest,
    create_mariadb_database,
    drop_mariadb_database,
    environment_with,
    free_ports,
    janitor_client,
    storage_under_test,
)

HAPROXY = Path(os.environ.get("HAPROXY", "/usr/sbin/haproxy"))
REPLICAS = 2
# The processes that answer HTTP and sit behind a load balancer frontend.
BALANCED = {"api-gateway": "gateways", "blob-service": "blobs", "manifest-service": "manifests"}


@dataclass
class ReplicatedRegistry(RegistryUnderTest):
    """A ``RegistryUnderTest`` whose ``http`` goes through the load balancer. Processes are
    named ``<process>-<n>`` (``api-gateway-1``, ``janitor-2``): ``kill`` and ``restart`` take
    one replica, ``log`` reads one replica's output."""

    gateways: list[str] = field(default_factory=list)  # each gateway replica's own URL
    stats_url: str = ""  # HAProxy's statistics (CSV)
    janitor: Celery | None = None  # sends tasks to the janitor workers, as beat does

    def gateway(self, number: int, timeout: float = 60) -> httpx.Client:
        """A client of gateway replica ``number`` (1 or 2) alone, bypassing the balancer."""
        return httpx.Client(base_url=self.gateways[number - 1], timeout=timeout)

    def counter(self, name: str, metric: str, **labels: str) -> float:
        """The sum of ``metric``'s samples whose labels include ``labels``, from the metrics
        of process ``name`` (``api-gateway-1``, ``janitor-2``)."""
        if name.startswith("janitor-"):
            env = self.envs[name]
            host = env.get("REGISTRY_JANITOR_METRICS_HOST", "127.0.0.1")
            url = f"http://{host}:{env['REGISTRY_JANITOR_METRICS_PORT']}"
        else:
            found = next(process.url for process, _ in self.processes if process.name == name)
            assert found is not None, f"{name} answers no HTTP"
            url = found
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric and labels.items() <= sample.labels.items()
        )

    def balancer_stats(self) -> list[dict[str, str]]:
        """HAProxy's statistics, one row per frontend, backend and server."""
        text = httpx.get(f"{self.stats_url};csv", timeout=10).text.removeprefix("# ")
        return list(csv.DictReader(io.StringIO(text)))

    def send_janitor_task(self, name: str, **kwargs: Any) -> None:
        """Queue janitor task ``name`` (``janitor.collect_garbage``) for whichever worker
        takes it first, as beat does on schedule."""
        assert self.janitor is not None
        self.janitor.send_task(name, kwargs=kwargs)


def _replica(process: Process, number: int, settings: Settings) -> Process:
    argv = list(process.argv)
    if "--hostname" in argv:  # Celery workers: node names must differ
        argv[argv.index("--hostname") + 1] = f"{process.name}-{number}@%h"
    # Where this replica itself listens: a service's URL in the settings is the balancer's.
    own = {
        "blob-service": (settings.blob_service_host, settings.blob_service_port),
        "manifest-service": (settings.manifest_service_host, settings.manifest_service_port),
    }
    url = f"http://{own[process.name][0]}:{own[process.name][1]}" if process.name in own else None
    return replace(process, name=f"{process.name}-{number}", argv=argv, url=url or process.url)


def _haproxy_config(
    frontends: dict[str, int], servers: dict[str, list[tuple[str, str]]], stats_port: int
) -> str:
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    balance roundrobin",
        # Every request is balanced on its own, even on a kept-alive client connection.
        "    option http-server-close",
        # A replica that refuses the connection (killed, restarting): another one is tried.
        "    retries 3",
        "    option redispatch 1",
        "    timeout connect 5s",
        # Longer than any test's transfer, and than the gateway's pool keeps connections idle
        # (60 s), so that the balancer never closes one the gateway is about to use.
        "    timeout client 300s",
        "    timeout server 300s",
        "    timeout http-request 60s",
        "    timeout http-keep-alive 120s",
        "    timeout queue 30s",
        "listen stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
    ]
    for name, port in frontends.items():
        lines += [
            f"frontend {name}",
            f"    bind 127.0.0.1:{port}",
            f"    default_backend {name}",
            f"backend {name}",
            "    option httpchk GET /healthz",
            *(
                f"    server {server} {address} check inter 1s fall 2 rise 1"
                for server, address in servers[name]
            ),
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def replicated_registry(
    storage: str, root: Path, replicas: int = REPLICAS, **overrides: str
) -> Iterator[ReplicatedRegistry]:
    """``replicas`` of every process on one MariaDB database, one Redis and one ``storage``
    ("file" or "oss"), behind HAProxy, their data and logs under ``root``. ``overrides`` are
    settings of every replica (``gc_grace_seconds="2"``)."""
    if not (HAPROXY.is_file() and os.access(HAPROXY, os.X_OK)):
        raise RuntimeError(
            f"haproxy is required for the replica tests and was not found at {HAPROXY} "
            "(install it with `make services`, or point HAPROXY at the binary)"
        )
    database = f"registry_replicas_{uuid.uuid4().hex[:8]}"
    started: list[tuple[Process, subprocess.Popen[bytes]]] = []
    with ExitStack() as stack:
        stored = stack.enter_context(storage_under_test(storage, root))
        redis = stack.enter_context(RedisServer())
        database_url = create_mariadb_database(database)
        stack.callback(drop_mariadb_database, database)
        migrate.upgrade(database_url)
        # Every port at once: ports found free one call apart might be the same.
        ports = iter(free_ports(len(BALANCED) + 1 + 4 * replicas))
        front_ports = {front: next(ports) for front in BALANCED.values()}
        stats_port = next(ports)
        shared_values = {
            "database_url": database_url,
            **stored.settings,
            "broker_url": redis.url,
            "broker_queue": f"janitor-{uuid.uuid4().hex[:12]}",
            # The gateways reach the services through the balancer, like every client.
            "blob_service_url": f"http://127.0.0.1:{front_ports['blobs']}",
            "manifest_service_url": f"http://127.0.0.1:{front_ports['manifests']}",
            "log_level": "info",
            **overrides,
        }
        stack.callback(stop_all, started)
        envs: dict[str, dict[str, str]] = {}
        settings: list[Settings] = []
        for number in range(1, replicas + 1):
            values = {
                **shared_values,
                "gateway_port": str(next(ports)),
                "blob_service_port": str(next(ports)),
                "manifest_service_port": str(next(ports)),
                "janitor_metrics_port": str(next(ports)),
                "beat_schedule_file": str(root / f"celerybeat-schedule-{number}"),
                # As Kubernetes runs it: beat a process of its own, the worker's tasks in a
                # prefork child.
                "beat_in_worker": "false",
            }
            env = environment_with(values)
            settings.append(Settings(**values))
            for process in processes(settings[-1]):
                replica = _replica(process, number, settings[-1])
                envs[replica.name] = env
                started.append((replica, start(replica, env, root / "logs")))
        for process, popen in started:
            wait_until_up(process, popen)

        servers: dict[str, list[tuple[str, str]]] = {front: [] for front in BALANCED.values()}
        for process, _ in started:
            base = process.name.rsplit("-", 1)[0]
            if base in BALANCED and process.url is not None:
                servers[BALANCED[base]].append((process.name, process.url.removeprefix("http://")))
        config = root / "haproxy.cfg"
        config.write_text(_haproxy_config(front_ports, servers, stats_port))
        public = f"http://127.0.0.1:{front_ports['gateways']}"
        balancer = Process("haproxy", [str(HAPROXY), "-db", "-f", str(config)], public)
        started.append((balancer, start(balancer, dict(os.environ), root / "logs")))
        wait_until_up(balancer, started[-1][1])

        janitor = janitor_client(redis.url, shared_values["broker_queue"])
        stack.callback(janitor.close)
        client = stack.enter_context(httpx.Client(base_url=public, timeout=60))
        yield ReplicatedRegistry(
            backend=f"replicas-{storage}",
            settings=settings[0],
            http=client,
            root=root,
            processes=started,
            env=envs["api-gateway-1"],
            storage_path=stored.path,
            oss=stored.oss,
            envs=envs,
            gateways=[f"http://{s.gateway_host}:{s.gateway_port}" for s in settings],
            stats_url=f"http://127.0.0.1:{stats_port}/stats",
            janitor=janitor,
        )
