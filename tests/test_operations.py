"""What operators rely on, on the real processes: liveness and readiness probes, Prometheus
metrics, JSON logs carrying request ids, graceful shutdown, and ``make run``'s runner, which
supervises the processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared import users
from tests.conftest import running_registry
from tests.registry import (
    RegistryUnderTest,
    child_pids,
    environment_with,
    eventually,
    free_port,
    sha256,
)


def service_urls(registry: RegistryUnderTest) -> dict[str, str]:
    settings = registry.settings
    return {
        "api-gateway": registry.url,
        "blob-service": settings.service_url("blob"),
        "manifest-service": settings.service_url("manifest"),
    }


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in sample for key, wanted in labels.items()):
            total += float(value)
    return total


def test_every_http_service_is_live_and_ready(registry: RegistryUnderTest) -> None:
    for service, url in service_urls(registry).items():
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}, service
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, (service, ready.text)
        assert set(ready.json()["checks"].values()) == {"ok"}
        assert set(ready.json().get("advisory", {}).values()) <= {"ok"}, (service, ready.text)


def test_metrics_count_requests_by_route_and_bytes(registry: RegistryUnderTest, repo: str) -> None:
    data = os.urandom(300_000)
    digest = registry.push_blob(repo, data)
    before = httpx.get(f"{registry.url}/metrics").text
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data
    after = httpx.get(f"{registry.url}/metrics").text
    requests = "registry_http_requests_total"
    assert metric(
        after, requests, service="api-gateway", route="blob", method="GET", status="200"
    ) == (
        metric(before, requests, service="api-gateway", route="blob", method="GET", status="200")
        + 1
    )
    sent = "registry_http_response_bytes_total"
    assert metric(after, sent, service="api-gateway") - metric(
        before, sent, service="api-gateway"
    ) >= len(data)
    assert metric(after, "registry_http_request_duration_seconds_count", route="blob") >= 1
    blob_metrics = httpx.get(f"{registry.settings.service_url('blob')}/metrics").text
    assert metric(blob_metrics, "registry_http_request_bytes_total", service="blob-service") >= len(
        data
    )
    assert metric(blob_metrics, "registry_uploads_in_progress", service="blob-service") == 0
    # Routes are labelled by pattern, never by repository name.
    assert repo not in after and repo not in blob_metrics


def test_the_manifest_service_labels_reads_by_their_route(
    registry: RegistryUnderTest, repo: str
) -> None:
    registry.push_image(repo, "v1")
    url = f"{registry.settings.service_url('manifest')}/metrics"
    requests = "registry_http_requests_total"
    routes = {
        "manifest": "/v2/{name:path}/manifests/{reference}",
        "tags": "/v2/{name:path}/tags/list",
        "catalog": "/v2/_catalog",
    }

    def counts(text: str) -> dict[str, float]:
        labels = {"service": "manifest-service", "method": "GET", "status": "200"}
        return {
            name: metric(text, requests, route=route, **labels) for name, route in routes.items()
        }

    before = counts(httpx.get(url).text)
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 200
    assert registry.http.get(f"/v2/{repo}/tags/list").status_code == 200
    assert registry.http.get("/v2/_catalog").status_code == 200
    after_text = httpx.get(url).text
    assert counts(after_text) == {name: count + 1 for name, count in before.items()}
    assert repo not in after_text


def test_the_janitor_serves_task_metrics(registry: RegistryUnderTest, repo: str) -> None:
    registry.push_blob(repo, os.urandom(1000))
    url = f"http://127.0.0.1:{registry.settings.janitor_metrics_port}/metrics"

    def counted() -> bool:
        try:
            text = httpx.get(url).text
        except httpx.TransportError:
            return False
        return (
            metric(
                text,
                "registry_janitor_tasks_total",
                task="janitor.events.handle",
                outcome="success",
            )
            > 0
        )

    eventually(counted, what="janitor task metrics")


def test_logs_are_json_lines_with_the_request_id(registry: RegistryUnderTest, repo: str) -> None:
    request_id = f"rid-{os.urandom(4).hex()}"
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/", headers={"X-Request-Id": request_id})
    assert start.headers["X-Request-Id"] == request_id
    data = b"traced"
    done = registry.http.put(
        start.headers["Location"],
        params={"digest": sha256(data)},
        content=data,
        headers={"X-Request-Id": request_id},
    )
    assert done.status_code == 201
    generated = registry.http.get("/v2/").headers["X-Request-Id"]
    assert len(generated) >= 16

    def traced() -> bool:
        for line in registry.log("janitor").splitlines():
            if line.startswith("{") and json.loads(line).get("request_id") == request_id:
                return True
        return False

    eventually(traced, what="the janitor logging the request id of the event it handled")
    for process in ("api-gateway", "blob-service", "manifest-service", "janitor"):
        records = [
            json.loads(line) for line in registry.log(process).splitlines() if line.startswith("{")
        ]
        assert records, process
        assert all(
            {"time", "level", "logger", "message", "service", "request_id"} <= set(r)
            for r in records
        )


@pytest.fixture
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    with running_registry("sqlite", tmp_path_factory.mktemp("operations")) as running:
        yield running


def test_readiness_fails_when_a_service_behind_the_gateway_is_down(
    own_registry: RegistryUnderTest,
) -> None:
    manifest_service = own_registry.process("manifest-service")
    manifest_service.send_signal(signal.SIGSTOP)
    try:
        ready = httpx.get(f"{own_registry.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["manifest-service"].startswith("failing")
        assert httpx.get(f"{own_registry.url}/healthz").status_code == 200  # alive all the same
    finally:
        manifest_service.send_signal(signal.SIGCONT)
    eventually(
        lambda: httpx.get(f"{own_registry.url}/readyz", timeout=10).status_code == 200,
        what="ready again",
    )


def test_sigterm_lets_an_upload_in_flight_finish(
    own_registry: RegistryUnderTest, repo: str
) -> None:
    """A blob service told to stop (as Kubernetes does before replacing a pod) stops taking
    connections but finishes the upload it is receiving."""
    location = own_registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    chunks = [os.urandom(64 * 1024) for _ in range(20)]
    first_sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for i, chunk in enumerate(chunks):
            yield chunk
            if i == 0:
                first_sent.set()
            time.sleep(0.1)

    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        with httpx.Client(base_url=own_registry.url, timeout=60) as client:
            result["response"] = client.patch(location, content=slow_body())

    sender = threading.Thread(target=upload)
    sender.start()
    assert first_sent.wait(10)
    time.sleep(0.3)
    blob_service = own_registry.process("blob-service")
    blob_service.send_signal(signal.SIGTERM)
    sender.join(30)
    response = result["response"]
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{len(chunks) * 64 * 1024 - 1}"
    # Then it exits in order (uvicorn ends by re-raising the signal it handled).
    assert blob_service.wait(30) in (0, -signal.SIGTERM)
    assert "Finished server process" in own_registry.log("blob-service")


@dataclass
class Runner:
    popen: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def child(self, marker: str) -> int:
        """The pid of the runner's child whose command line holds ``marker``."""
        for pid in child_pids(self.popen.pid):
            with contextlib.suppress(FileNotFoundError):
                if (
                    marker
                    in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                ):
                    return pid
        raise LookupError(marker)


@contextmanager
def running_runner(root: Path, **values: str) -> Iterator[Runner]:
    """``python -m shared.runner`` (``make run``) on ports of its own, its data under ``root``,
    started as a script starts a background job (SIGINT ignored), until its banner."""
    ports = {name: free_port() for name in ("gateway", "blob", "manifest", "metrics")}
    settings = {
        "database_url": f"sqlite:///{root / 'registry.db'}",
        "storage_url": f"file://{root / 'storage'}",
        "broker_url": f"filesystem://{root / 'broker'}",
        "gateway_port": str(ports["gateway"]),
        "blob_service_port": str(ports["blob"]),
        "manifest_service_port": str(ports["manifest"]),
        "janitor_metrics_port": str(ports["metrics"]),
        "beat_schedule_file": str(root / "celerybeat-schedule"),
        **values,
    }
    env = environment_with(settings)
    log = root / "runner.log"
    with open(log, "wb") as output:
        popen = subprocess.Popen(
            [sys.executable, "-m", "shared.runner"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    runner = Runner(popen, log, ports)
    try:
        eventually(
            lambda: "Ctrl-C stops it" in runner.text() or popen.poll() is not None,
            timeout=60,
            what="the runner's banner",
        )
        yield runner
    finally:
        if popen.poll() is None:
            for pid in [*child_pids(popen.pid), popen.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            popen.wait()


def test_the_runner_starts_everything_and_stops_it_all_on_ctrl_c(tmp_path: Path) -> None:
    """``make run`` (``python -m shared.runner``): every process up, the gateway answering;
    Ctrl-C (SIGINT) stops them all, even when the runner was started from a script that
    left SIGINT ignored, as a shell does for a background job. The folders the configuration
    names are made first: beat's schedule file in a folder that does not exist yet runs. The
    janitor is one process (its beat a thread of its worker)."""
    schedule = tmp_path / "not" / "yet" / "celerybeat-schedule"
    with running_runner(tmp_path, beat_schedule_file=str(schedule)) as runner:
        assert runner.popen.poll() is None, runner.text()[-3000:]
        children = child_pids(runner.popen.pid)
        assert len(children) == 4  # gateway, two services, the janitor
        assert httpx.get(f"http://127.0.0.1:{runner.ports['gateway']}/v2/").status_code == 200
        assert schedule.parent.is_dir()
        eventually(lambda: any(schedule.parent.iterdir()), what="beat opening its schedule")
        assert runner.popen.poll() is None, runner.text()[-3000:]
        assert "starting it again" not in runner.text(), runner.text()[-3000:]
        assert set(children) <= set(child_pids(runner.popen.pid))
        runner.popen.send_signal(signal.SIGINT)
        assert runner.popen.wait(timeout=40) == 0
        eventually(lambda: not any(_alive(pid) for pid in children), what="every process gone")


def test_the_runner_starts_a_process_that_died_again_and_keeps_the_others(
    tmp_path: Path, repo: str
) -> None:
    """One crash stops nothing else: the process is started again (and logged), and a process
    that keeps failing is started again later each time, up to a cap; SIGTERM stops it all."""
    schedule = tmp_path / "beat" / "celerybeat-schedule"
    with running_runner(tmp_path, beat_schedule_file=str(schedule)) as runner:
        gateway = f"http://127.0.0.1:{runner.ports['gateway']}"
        others = {runner.child(m) for m in ("api_gateway.app", "manifest_service.app")}
        os.kill(runner.child("blob_service.app"), signal.SIGKILL)
        eventually(
            lambda: "blob-service was killed by SIGKILL" in runner.text(),
            what="the crash logged",
        )
        # The blob service is back: uploads work through the gateway again.
        eventually(
            lambda: httpx.post(f"{gateway}/v2/{repo}/blobs/uploads/").status_code == 202,
            what="the blob service started again",
        )

        # Beat (a thread of the janitor's worker) cannot start while a file is where its
        # schedule's folder should be, and the worker stops with it: each exit in a row waits
        # twice as long before the next start.
        os.kill(runner.child("-m janitor worker"), signal.SIGKILL)
        shutil.rmtree(schedule.parent)
        schedule.parent.write_bytes(b"in the way")
        eventually(
            lambda: (
                "janitor exited with status 1 after" in runner.text()
                and "starting it again in 4s" in runner.text()
            ),
            timeout=60,
            what="the janitor failing, started again after 1 s, 2 s, 4 s",
        )
        schedule.parent.unlink()
        schedule.parent.mkdir()
        eventually(lambda: schedule.parent.is_dir() and any(schedule.parent.iterdir()), what="beat")
        delays = [
            line.rsplit(" ", 1)[1]
            for line in runner.text().splitlines()
            if line.startswith("registry: janitor ") and "starting it again in" in line
        ]
        assert delays[:3] == ["1s", "2s", "4s"], delays

        assert runner.popen.poll() is None
        assert others <= set(child_pids(runner.popen.pid))  # nothing else was restarted
        assert httpx.get(f"{gateway}/v2/").status_code == 200
        runner.popen.send_signal(signal.SIGTERM)
        assert runner.popen.wait(timeout=40) == 0


def test_the_runner_makes_an_internal_secret_when_authentication_is_on(tmp_path: Path) -> None:
    """With authentication on and no secret, ``make run`` makes one for its processes: the
    services' ports answer the gateway only, and requests through the gateway still work."""
    password = "correct horse"
    users_file = tmp_path / "users.yaml"
    users.write_document(
        users_file,
        {
            "users": {"alice": {"password_hash": users.hash_password(password, 4)}},
            "grants": [{"repositories": ["*"], "users": ["alice"], "actions": ["pull", "push"]}],
        },
    )
    with running_runner(tmp_path, auth="htpasswd", auth_users_file=str(users_file)) as runner:
        assert runner.popen.poll() is None, runner.text()[-3000:]
        assert "made one for this run" in runner.text()
        for service in ("blob", "manifest"):
            direct = httpx.get(f"http://127.0.0.1:{runner.ports[service]}/v2/a/tags/list")
            assert direct.status_code == 401, (service, direct.text)
            assert direct.json()["errors"][0]["code"] == "UNAUTHORIZED"
        gateway = f"http://127.0.0.1:{runner.ports['gateway']}"
        through = httpx.post(f"{gateway}/v2/a/blobs/uploads/", auth=("alice", password))
        assert through.status_code == 202, through.text
        listed = httpx.get(f"{gateway}/v2/a/tags/list", auth=("alice", password))
        assert listed.status_code == 404 and listed.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        assert "REGISTRY_INTERNAL_SECRET=" not in runner.text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
