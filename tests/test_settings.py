"""Settings: each ``REGISTRY_*`` variable is read as its setting's type (README,
"Configuration"); a value that does not read stops the process, naming the variable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared import migrate
from shared.processes import processes
from shared.settings import Settings, SettingsError
from tests.registry import environment_with, eventually, free_ports


def test_each_variable_is_read_as_its_type_whatever_the_case_of_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRY_GATEWAY_PORT", " 6000 ")
    monkeypatch.setenv("registry_oss_redirect", "Yes")
    monkeypatch.setenv("REGISTRY_GATEWAY_READS_STORAGE", "off")
    monkeypatch.setenv("REGISTRY_STORAGE_SWEEP_RATE", "2.5")
    monkeypatch.setenv("REGISTRY_AUTH", "token")
    monkeypatch.setenv("REGISTRY_PUBLIC_URL", "https://registry.example.com")
    settings = Settings()
    assert settings.gateway_port == 6000
    assert settings.oss_redirect is True
    assert settings.gateway_reads_storage is False
    assert settings.storage_sweep_rate == 2.5
    assert settings.auth == "token"
    assert settings.public_url == "https://registry.example.com"
    assert settings.upload_lease_seconds == 30  # not set: the default


def test_values_given_in_code_come_before_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRY_GATEWAY_PORT", "6000")
    assert Settings(gateway_port="7000").gateway_port == 7000
    assert Settings(gateway_port=8000).gateway_port == 8000
    with pytest.raises(TypeError, match="no such setting: gateway_prot"):
        Settings(gateway_prot=7000)


def test_a_secret_is_kept_out_of_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_INTERNAL_SECRET", "hunter2-internal")
    settings = Settings(ui_session_secret="hunter2-session")
    assert settings.internal_secret.get_secret_value() == "hunter2-internal"
    assert settings.ui_session_secret.get_secret_value() == "hunter2-session"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("REGISTRY_GATEWAY_PORT", "abc", "must be a whole number, not 'abc'"),
        ("REGISTRY_GATEWAY_PORT", "", "must be a whole number, not ''"),
        ("REGISTRY_MAX_PAGE_SIZE", "1.5", "must be a whole number, not '1.5'"),
        ("REGISTRY_OSS_REDIRECT", "maybe", "must be true or false, not 'maybe'"),
        ("REGISTRY_STORAGE_SWEEP_RATE", "fast", "must be a number, not 'fast'"),
        ("REGISTRY_AUTH", "Token", "must be one of 'none', 'htpasswd', 'token', not 'Token'"),
    ],
)
def test_a_value_that_does_not_read_as_its_type_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("REGISTRY_JANITOR_METRICS_PORT", "-")
    with pytest.raises(SettingsError) as refused:
        Settings()
    message = str(refused.value)
    assert f"{variable} {said}" in message
    assert "REGISTRY_JANITOR_METRICS_PORT must be a whole number" in message  # every fault


def test_no_process_loads_a_validation_library_without_a_policies_or_notifications_file() -> None:
    """The settings, the events and the files' schemas are read without pydantic (about 11 MiB
    a process) until a policies or notifications file is there to check."""
    modules = ["api_gateway.app", "blob_service.app", "manifest_service.app", "janitor.tasks"]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'pydantic_core'}))\n"
        "from shared import notifications, policies\n"
        "policies.parse({'quotas': [{'repositories': ['a/*'], 'tags': 3}]})\n"
        "notifications.parse({'endpoints': [{'name': 'ci', 'url': 'http://ci.example'}]})\n"
        "print('pydantic' in sys.modules)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert ran.stdout.split() == ["[]", "True"]


def test_make_run_with_a_value_that_does_not_read_stops_with_one_line_naming_it(
    tmp_path: Path,
) -> None:
    env = environment_with(
        {"database_url": f"sqlite:///{tmp_path / 'registry.db'}", "gateway_port": "five thousand"}
    )
    ran = subprocess.run(
        [sys.executable, "-m", "shared.runner"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == [
        "registry: invalid settings: REGISTRY_GATEWAY_PORT must be a whole number, "
        "not 'five thousand'"
    ]
    assert not (tmp_path / "registry.db").exists()  # nothing was started or made


BROKEN_FILES = {
    "mirrors": (
        {"mirrors": {"hub": {"url": "ftp://registry-1.docker.io"}}},
        "mirrors.hub: url must be http(s)://host[:port], got 'ftp://registry-1.docker.io'",
        ["api-gateway", "blob-service", "manifest-service", "janitor"],
    ),
    "notifications": (
        {"endpoints": [{"name": "ci", "url": "ftp://ci.example"}]},
        "endpoints.0.url: Value error, an http(s) URL, not 'ftp://ci.example'",
        ["blob-service", "manifest-service", "janitor"],
    ),
    "policies": (
        {"quotas": [{"repositories": ["team/*"], "storage": "lots"}]},
        "quotas.0.storage: could not parse value and unit from byte string",
        ["manifest-service", "janitor"],
    ),
}


@pytest.mark.parametrize(
    ("kind", "name"),
    [(kind, name) for kind, (_, _, names) in BROKEN_FILES.items() for name in names],
)
def test_a_configuration_file_that_cannot_be_used_stops_each_process_that_reads_it_at_start(
    tmp_path: Path, kind: str, name: str
) -> None:
    """One line naming the variable and the fault, and no traceback: never a process that
    starts and then fails every request (or sweep) that needs the file."""
    document, fault, _ = BROKEN_FILES[kind]
    broken = tmp_path / f"{kind}.yaml"
    broken.write_text(json.dumps(document))
    gateway, blob, manifest = free_ports(3)
    values = {
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "storage_url": f"file://{tmp_path / 'storage'}",
        "broker_url": f"filesystem://{tmp_path / 'broker'}",
        "gateway_port": str(gateway),
        "blob_service_port": str(blob),
        "manifest_service_port": str(manifest),
        "janitor_metrics_port": "0",
        f"{kind}_file": str(broken),
    }
    environment = environment_with(values)
    process = next(p for p in processes(Settings(**values)) if p.name == name)
    ran = subprocess.run(
        process.argv, env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode != 0
    said = ran.stdout + ran.stderr
    assert f"REGISTRY_{kind.upper()}_FILE: {fault}" in said
    assert "Traceback" not in said


@pytest.mark.parametrize(
    ("role", "arguments", "ready"),
    [
        ("beat", ["beat", "--loglevel", "INFO"], "beat: Starting"),
        (
            "notifications worker",
            ["worker", "--loglevel", "INFO", "--takes", "notifications", "--concurrency", "1"],
            " ready.",
        ),
    ],
)
def test_beat_and_a_delivery_worker_start_without_the_files_they_do_not_read(
    tmp_path: Path, role: str, arguments: list[str], ready: str
) -> None:
    """As Kubernetes and Compose run them: the configuration names every file, and beat's
    container mounts none of them, a delivery worker's the notifications file alone."""
    values = {
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}",
        "broker_url": f"filesystem://{tmp_path / 'broker'}",
        "beat_in_worker": "false",
        "beat_schedule_file": str(tmp_path / "celerybeat-schedule"),
        "janitor_metrics_port": "0",
        "policies_file": str(tmp_path / "not-mounted" / "policies.yaml"),
        "mirrors_file": str(tmp_path / "not-mounted" / "mirrors.yaml"),
        "notifications_file": str(tmp_path / "notifications.yaml"),
    }
    if role == "beat":
        values["notifications_file"] = str(tmp_path / "not-mounted" / "notifications.yaml")
        arguments = [*arguments, "--schedule", values["beat_schedule_file"]]
    else:
        (tmp_path / "notifications.yaml").write_text("endpoints: []\n")
    migrate.upgrade(values["database_url"])
    environment = environment_with(values)
    log = tmp_path / f"{role}.log"
    with open(log, "wb") as output:
        popen = subprocess.Popen(
            [sys.executable, "-m", "janitor", *arguments],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(
            lambda: ready in log.read_text() or popen.poll() is not None,
            timeout=60,
            what=f"the {role} starting",
        )
        assert popen.poll() is None, log.read_text()[-2000:]
    finally:
        popen.terminate()
        popen.wait(timeout=60)
