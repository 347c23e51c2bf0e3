"""What operators rely on, on the real processes: liveness and readiness probes, Prometheus
metrics, JSON logs carrying request ids, and graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_registry
from tests.registry import RegistryUnderTest, child_pids, eventually, free_port, sha256


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
    }

    def counts(text: str) -> dict[str, float]:
        labels = {"service": "manifest-service", "method": "GET", "status": "200"}
        return {
            name: metric(text, requests, route=route, **labels) for name, route in routes.items()
        }

    before = counts(httpx.get(url).text)
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 200
    assert registry.http.get(f"/v2/{repo}/tags/list").status_code == 200
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


def test_the_runner_starts_everything_and_stops_it_all_on_ctrl_c(tmp_path: Path) -> None:
    """``make run`` (``python -m shared.runner``): every process up, the gateway answering;
    Ctrl-C (SIGINT) stops them all, even when the runner was started from a script that
    left SIGINT ignored, as a shell does for a background job."""
    port, blob_port, manifest_port, metrics_port = (free_port() for _ in range(4))
    values = {
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "storage_url": f"file://{tmp_path / 'storage'}",
        "broker_url": f"filesystem://{tmp_path / 'broker'}",
        "gateway_port": str(port),
        "blob_service_port": str(blob_port),
        "manifest_service_port": str(manifest_port),
        "janitor_metrics_port": str(metrics_port),
        "beat_schedule_file": str(tmp_path / "celerybeat-schedule"),
    }
    env = {**os.environ, **{f"REGISTRY_{k.upper()}": v for k, v in values.items()}}
    with open(tmp_path / "runner.log", "wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "shared.runner"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        eventually(
            lambda: (
                b"Ctrl-C stops it" in (tmp_path / "runner.log").read_bytes()
                or runner.poll() is not None
            ),
            timeout=60,
            what="the runner's banner",
        )
        assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
        children = child_pids(runner.pid)
        assert len(children) >= 5  # gateway, two services, janitor worker and beat
        assert httpx.get(f"http://127.0.0.1:{port}/v2/").status_code == 200
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=40) == 0
        eventually(lambda: not any(_alive(pid) for pid in children), what="every process gone")
    finally:
        if runner.poll() is None:
            for pid in [*children, runner.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            runner.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
