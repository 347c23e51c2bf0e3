"""The deployment files hold together: the Kubernetes base and overlays, docker-compose.yml, the
services' Dockerfiles and the Grafana dashboard. No cluster and no Docker engine here: the
manifests are rendered with `kubectl kustomize` (offline), validated against the Kubernetes API's
schemas (kubernetes-validate), and checked against each other and against the code: the commands
are those shared.processes builds, the variables are Settings fields, the probe paths are routes
the apps serve, each process runs its own service's image, the dashboard's metrics are metrics
something exports."""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from shared import mirrors, notifications, policies
from shared.processes import processes
from shared.settings import DATA_DIR, Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
# The oldest Kubernetes still in common use, and the kubectl this is rendered with.
KUBERNETES_VERSIONS = ("1.30.0", "1.32.0")

KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
# The prod overlay with the optional component that opens /metrics to Prometheus.
WITH_MONITORING = "prod+allow-monitoring"
MONITORING_COMPONENT = K8S / "components" / "allow-monitoring"
RENDERS = [*KUSTOMIZATIONS, WITH_MONITORING]
# The renders whose NetworkPolicies must be exactly the base's rules.
STRICT_NETWORK = list(KUSTOMIZATIONS)

HTTP_SERVICES = {  # Deployment: the module whose create_app() it runs
    "api-gateway": "api_gateway.app",
    "blob-service": "blob_service.app",
    "manifest-service": "manifest_service.app",
}
DEPLOYMENTS = {*HTTP_SERVICES, "janitor", "janitor-beat", "janitor-notifications", "flower"}
SERVICES = {*HTTP_SERVICES, "flower"}
FLOWER_PORT = 5555
FLOWER_PATHS = {"/healthcheck", "/metrics"}  # Flower's own routes the probes and scrapes use
MIGRATE_MODULE = "shared.migrate"
# One image per service folder, built by services/<folder>/Dockerfile: the process each image
# runs by default (its CMD), and the image each process runs (processes by their
# docker-compose.yml names; the Job registry-migrate is "migrate").
IMAGE_DEFAULTS = {
    "api-gateway": "api-gateway",
    "blob-service": "blob-service",
    "manifest-service": "manifest-service",
    "janitor": "janitor",
}
IMAGE_OF = {
    **{name: name for name in HTTP_SERVICES},
    "janitor": "janitor",
    "janitor-beat": "janitor",
    "janitor-notifications": "janitor",
    "flower": "janitor",
    "migrate": "janitor",
}
DOCKERFILES = {folder: ROOT / "services" / folder / "Dockerfile" for folder in IMAGE_DEFAULTS}
STORAGE_USERS = {"api-gateway", "blob-service", "janitor"}  # who opens a file:// storage
# Variables with no usable default in production: these, and every one whose default is a path
# under ./var, which is in the image's read-only working directory.
REQUIRED = {
    "REGISTRY_DATABASE_URL",
    "REGISTRY_BROKER_URL",
    "REGISTRY_STORAGE_URL",
    "REGISTRY_BLOB_SERVICE_URL",
    "REGISTRY_MANIFEST_SERVICE_URL",
} | {
    f"REGISTRY_{field.name.upper()}"
    for field in dataclasses.fields(Settings)
    if f"{DATA_DIR}/" in str(field.default)
}
SETTINGS = {f"REGISTRY_{field.name.upper()}" for field in dataclasses.fields(Settings)}
PLACEHOLDER = "CHANGE-ME"
INGRESS_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-body-size": "0",
    "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-buffering": "off",
}
INGRESS_TIMEOUTS = (
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
)

Doc = dict[str, Any]


# ---- rendering ----------------------------------------------------------------------------------


def _kustomize(path: Path) -> list[Doc]:
    assert Path(KUBECTL).exists(), "kubectl (with its kustomize, v5) is needed to render deploy/k8s"
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render(name: str) -> tuple[Doc, ...]:
    if name in KUSTOMIZATIONS:
        return tuple(_kustomize(KUSTOMIZATIONS[name]))
    assert name == WITH_MONITORING
    # kustomize takes relative paths only: a throwaway kustomization pointing back here.
    with tempfile.TemporaryDirectory() as tmp:
        overlay = os.path.relpath(KUSTOMIZATIONS["prod"], tmp)
        component = os.path.relpath(MONITORING_COMPONENT, tmp)
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            "namespace: registry-prod\n"
            f"resources: [{overlay}]\ncomponents: [{component}]\n"
        )
        return tuple(_kustomize(Path(tmp)))


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    """Deployments and Jobs: everything that runs a pod."""
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}


def selects(selector: Doc, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def selected(docs: tuple[Doc, ...], selector: Doc) -> set[str]:
    return {name for name, w in workloads(docs).items() if selects(selector, pod_labels(w))}


def container_ports(workload: Doc) -> dict[str | int, int]:
    """Every containerPort, by number and by name."""
    ports: dict[str | int, int] = {}
    for container in containers(workload):
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def main_container(workload: Doc) -> Doc:
    found: list[Doc] = pod_spec(workload)["containers"]
    assert len(found) == 1, f"{workload['metadata']['name']}: one container expected"
    return found[0]


def config_data(docs: tuple[Doc, ...], kind: str, name: str) -> dict[str, str]:
    """The keys of a ConfigMap or Secret, decoded. A Secret the overlay leaves out (prod creates
    it in the cluster) is the base's template: the keys it documents."""
    found = of_kind(docs, kind).get(name) or of_kind(render("base"), kind).get(name)
    assert found is not None, f"{kind} {name} is referenced but defined nowhere"
    data: dict[str, str] = {}
    if kind == "Secret":
        data |= {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}
        data |= found.get("stringData") or {}
    else:
        data |= found.get("data") or {}
    return data


def container_env(docs: tuple[Doc, ...], container: Doc) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= config_data(docs, "ConfigMap", source["configMapRef"]["name"])
        if "secretRef" in source:
            env |= config_data(docs, "Secret", source["secretRef"]["name"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    """The Settings a process gets with ``env`` (and no other REGISTRY_* variable)."""
    with mock.patch.dict(os.environ):
        for name in [name for name in os.environ if name.startswith("REGISTRY_")]:
            del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if k.startswith("REGISTRY_")})
        return Settings()


def expected_commands(settings: Settings) -> dict[str, list[str]]:
    """What shared.processes builds, as the image runs it (``python`` on its PATH), plus the two
    processes it does not start: Flower and the migration."""
    commands = {p.name: ["python", *p.argv[1:]] for p in processes(settings)}
    commands["migrate"] = ["python", "-m", MIGRATE_MODULE]
    return commands


def flower_command_ok(command: list[str], port: int) -> None:
    """Flower runs on the janitor's Celery app (the one shared.processes starts the worker of),
    on ``port``."""
    worker = next(p.argv for p in processes(settings_from({})) if p.name == "janitor")
    assert worker[1:3] == ["-m", "janitor"]  # python -m janitor worker: janitor.worker's app
    assert command[:6] == ["python", "-m", "celery", "-A", "janitor.worker", "flower"], command
    assert f"--port={port}" in command, command


def quantity(value: str | int | float) -> float:
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def sleep_seconds(hook: Doc) -> int:
    """The pause of a preStop hook: ``exec: sleep N`` (or the native ``sleep`` action)."""
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# ---- Kubernetes: schemas and inventory ----------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(name: str, version: str) -> None:
    docs = render(name)
    assert docs
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", RENDERS)
def test_the_registry_has_all_its_parts(name: str) -> None:
    docs = render(name)
    assert set(of_kind(docs, "Deployment")) == DEPLOYMENTS
    services = of_kind(docs, "Service")
    assert set(services) == SERVICES
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services.values())
    assert [p["port"] for p in services["flower"]["spec"]["ports"]] == [FLOWER_PORT]
    assert set(of_kind(docs, "Ingress")) == {"registry"}
    assert set(of_kind(docs, "ConfigMap")) == {
        "registry-config",
        "registry-mirrors",
        "registry-notifications",
        "registry-policies",
    }
    assert set(of_kind(docs, "Job")) == {"registry-migrate"}
    assert set(of_kind(docs, "PersistentVolumeClaim")) == {"registry-storage"}
    assert set(of_kind(docs, "PodDisruptionBudget")) == set(HTTP_SERVICES)
    if name != "dev":  # dev runs one replica of each, unscaled
        hpas = of_kind(docs, "HorizontalPodAutoscaler")
        assert set(hpas) == set(HTTP_SERVICES)
        assert all(h["apiVersion"] == "autoscaling/v2" for h in hpas.values())
    assert of_kind(docs, "NetworkPolicy")


@pytest.mark.parametrize("name", RENDERS)
def test_the_mirrors_file_is_valid_and_mounted_where_the_setting_names_it(name: str) -> None:
    docs = render(name)
    mirrors_file = PurePosixPath(
        of_kind(docs, "ConfigMap")["registry-config"]["data"]["REGISTRY_MIRRORS_FILE"]
    )
    document = yaml.safe_load(
        of_kind(docs, "ConfigMap")["registry-mirrors"]["data"][mirrors_file.name]
    )
    mirrors.parse(document)  # raises when the gateway and the services would refuse it
    for deployment in [*HTTP_SERVICES, "janitor"]:  # the janitor worker expires
        spec = pod_spec(of_kind(docs, "Deployment")[deployment])
        volumes = {v["name"]: v for v in spec["volumes"]}
        [container] = spec["containers"]
        mounted = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        assert mounted[str(mirrors_file.parent)]["configMap"]["name"] == "registry-mirrors", (
            deployment
        )


@pytest.mark.parametrize("name", RENDERS)
def test_the_notifications_file_is_valid_and_mounted_where_the_setting_names_it(
    name: str,
) -> None:
    docs = render(name)
    path = PurePosixPath(
        of_kind(docs, "ConfigMap")["registry-config"]["data"]["REGISTRY_NOTIFICATIONS_FILE"]
    )
    document = yaml.safe_load(
        of_kind(docs, "ConfigMap")["registry-notifications"]["data"][path.name]
    )
    notifications.parse(document)  # raises when the services would refuse it
    # The services record the events, the janitor worker dispatches them, the notifications
    # worker delivers them.
    for deployment in ("blob-service", "manifest-service", "janitor", "janitor-notifications"):
        spec = pod_spec(of_kind(docs, "Deployment")[deployment])
        volumes = {v["name"]: v for v in spec["volumes"]}
        [container] = spec["containers"]
        mounted = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        assert mounted[str(path.parent)]["configMap"]["name"] == "registry-notifications", (
            deployment
        )


@pytest.mark.parametrize("name", RENDERS)
def test_the_policies_file_is_valid_and_mounted_where_the_setting_names_it(name: str) -> None:
    docs = render(name)
    path = PurePosixPath(
        of_kind(docs, "ConfigMap")["registry-config"]["data"]["REGISTRY_POLICIES_FILE"]
    )
    document = yaml.safe_load(of_kind(docs, "ConfigMap")["registry-policies"]["data"][path.name])
    policies.parse(document)  # raises when the manifest service would refuse it
    # The manifest service enforces the rules; registry-admin, in the janitor's pod, lists them.
    for deployment in ("manifest-service", "janitor"):
        spec = pod_spec(of_kind(docs, "Deployment")[deployment])
        volumes = {v["name"]: v for v in spec["volumes"]}
        [container] = spec["containers"]
        mounted = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        assert mounted[str(path.parent)]["configMap"]["name"] == "registry-policies", deployment


@pytest.mark.parametrize("name", RENDERS)
def test_secrets_are_templates_never_real_values(name: str) -> None:
    for secret in of_kind(render(name), "Secret").values():
        assert not secret.get("data"), "base64 data in a committed Secret"
        assert set((secret.get("stringData") or {}).values()) <= {PLACEHOLDER}, secret


def test_prod_leaves_the_secret_to_the_cluster() -> None:
    # Applying prod must never overwrite the real Secret with the template.
    assert "registry-secrets" not in of_kind(render("prod"), "Secret")
    assert "registry-secrets" in of_kind(render("base"), "Secret")


# ---- Kubernetes: cross-references ---------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_each_deployment_selects_its_own_pods(name: str) -> None:
    docs = render(name)
    for deployment_name, deployment in of_kind(docs, "Deployment").items():
        selector = deployment["spec"]["selector"]
        assert selects(selector, pod_labels(deployment)), deployment_name
        assert selected(docs, selector) == {deployment_name}


def selects_service(service: Doc, workload: Doc) -> bool:
    # A Service's selector is a plain map: matchLabels semantics.
    return selects({"matchLabels": service["spec"]["selector"]}, pod_labels(workload))


@pytest.mark.parametrize("name", RENDERS)
def test_services_select_one_deployment_and_target_its_ports(name: str) -> None:
    docs = render(name)
    every_pod = workloads(docs)
    for service_name, service in of_kind(docs, "Service").items():
        assert service["spec"]["selector"], service_name
        matches = {w for w, workload in every_pod.items() if selects_service(service, workload)}
        assert matches == {service_name}, f"Service {service_name} selects {matches}"
        ports = container_ports(every_pod[service_name])
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, (service_name, port)


@pytest.mark.parametrize("name", RENDERS)
def test_the_ingress_leads_to_the_gateway_and_lets_large_pushes_through(name: str) -> None:
    docs = render(name)
    ingress = of_kind(docs, "Ingress")["registry"]
    annotations = ingress["metadata"].get("annotations", {})
    for key, value in INGRESS_ANNOTATIONS.items():
        assert annotations.get(key) == value, key
    for key in INGRESS_TIMEOUTS:
        assert int(annotations[key]) >= 600, key
    services = of_kind(docs, "Service")
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    # The Distribution API and the token endpoint; not /healthz, /readyz, /metrics.
    assert {path["path"] for path in paths} == {"/v2", "/auth"}
    for path in paths:
        assert path["pathType"] == "Prefix", path
        backend = path["backend"]["service"]
        assert backend["name"] == "api-gateway"
        port = backend["port"]
        service_ports = services["api-gateway"]["spec"]["ports"]
        names = {p["name"] for p in service_ports if "name" in p}
        assert port.get("name") in names or port.get("number") in {p["port"] for p in service_ports}


def test_prod_ingress_has_a_host_and_tls_for_it() -> None:
    ingress = of_kind(render("prod"), "Ingress")["registry"]
    hosts = {rule.get("host") for rule in ingress["spec"]["rules"]}
    assert None not in hosts
    tls = ingress["spec"]["tls"]
    assert all(entry.get("secretName") for entry in tls)
    assert hosts <= {host for entry in tls for host in entry["hosts"]}


@pytest.mark.parametrize("name", RENDERS)
def test_http_services_are_probed_on_healthz_and_readyz(name: str) -> None:
    docs = render(name)
    deployments = of_kind(docs, "Deployment")
    for deployment_name in HTTP_SERVICES:
        container = main_container(deployments[deployment_name])
        ports = container_ports(deployments[deployment_name])
        liveness, readiness = container["livenessProbe"], container["readinessProbe"]
        assert liveness["httpGet"]["path"] == "/healthz", deployment_name
        assert readiness["httpGet"]["path"] == "/readyz", deployment_name
        for probe in (liveness, readiness, container.get("startupProbe")):
            if probe is not None:
                assert "exec" not in probe
                assert probe["httpGet"]["port"] in ports, (deployment_name, probe)
    flower = main_container(deployments["flower"])
    for probe in (flower["livenessProbe"], flower["readinessProbe"]):
        assert probe["httpGet"]["path"] in FLOWER_PATHS
        assert probe["httpGet"]["port"] in container_ports(deployments["flower"])


@pytest.mark.parametrize("name", RENDERS)
def test_every_probe_port_is_a_container_port(name: str) -> None:
    for workload_name, workload in workloads(render(name)).items():
        ports = container_ports(workload)
        for container in containers(workload):
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = container.get(kind) or {}
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe:
                        assert probe[action]["port"] in ports, (workload_name, kind)


@pytest.mark.parametrize("name", RENDERS)
def test_prometheus_scrapes_the_metrics_ports(name: str) -> None:
    deployments = of_kind(render(name), "Deployment")
    for deployment_name in [*HTTP_SERVICES, "flower", "janitor"]:
        deployment = deployments[deployment_name]
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", deployment_name
        assert annotations.get("prometheus.io/path") == "/metrics", deployment_name
        assert int(annotations["prometheus.io/port"]) in container_ports(deployment).values()


@pytest.mark.parametrize("name", RENDERS)
def test_http_services_drain_before_they_stop(name: str) -> None:
    deployments = of_kind(render(name), "Deployment")
    for deployment_name in HTTP_SERVICES:
        deployment = deployments[deployment_name]
        container = main_container(deployment)
        command = container["command"]
        drain = int(command[command.index("--timeout-graceful-shutdown") + 1])
        pause = sleep_seconds(container["lifecycle"]["preStop"])
        assert pause >= 5, "the endpoint must be gone before SIGTERM"
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= pause + drain + 10, (deployment_name, grace, pause, drain)
        assert grace >= 60


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_is_locked_down_and_sized(name: str) -> None:
    for workload_name, workload in workloads(render(name)).items():
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, workload_name
        emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(workload):
            where = f"{workload_name}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in emptydirs, f"{where}: /tmp must be an emptyDir"
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{where}: {resource}"
                assert quantity(request) <= quantity(limit), f"{where}: {resource}"


@pytest.mark.parametrize("name", RENDERS)
def test_containers_get_only_real_settings_and_every_required_one(name: str) -> None:
    docs = render(name)
    config = config_data(docs, "ConfigMap", "registry-config")
    secret = config_data(docs, "Secret", "registry-secrets")
    assert not set(config) & set(secret), "a key in both: which one wins depends on the order"
    assert set(config) | set(secret) >= REQUIRED, REQUIRED - set(config) - set(secret)
    for workload_name, workload in workloads(docs).items():
        for container in containers(workload):
            env = container_env(docs, container)
            names = {n for n in env if n.startswith("REGISTRY_")}
            assert names <= SETTINGS, (workload_name, names - SETTINGS)
            assert names >= REQUIRED, (workload_name, REQUIRED - names)


def test_every_variable_named_in_the_deployment_files_is_a_setting() -> None:
    # Comments included: the commented alternatives (OSS, ...) must name real settings too.
    files = [ROOT / "docker-compose.yml", *DOCKERFILES.values(), *K8S.rglob("*.yaml")]
    for path in files:
        names = set(re.findall(r"\bREGISTRY_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
        assert names <= SETTINGS, (path.relative_to(ROOT), names - SETTINGS)


@pytest.mark.parametrize("name", RENDERS)
def test_service_urls_point_at_the_services(name: str) -> None:
    docs = render(name)
    settings = settings_from(config_data(docs, "ConfigMap", "registry-config"))
    services = of_kind(docs, "Service")
    for which in ("blob", "manifest"):
        url = urlsplit(settings.service_url(which))
        assert url.hostname in services, url
        assert url.port in [p["port"] for p in services[url.hostname]["spec"]["ports"]]


@pytest.mark.parametrize("name", RENDERS)
def test_file_storage_is_the_same_volume_wherever_it_is_opened(name: str) -> None:
    docs = render(name)
    claims = set(of_kind(docs, "PersistentVolumeClaim"))
    deployments = of_kind(docs, "Deployment")
    sources = set()
    for deployment_name in STORAGE_USERS:
        deployment = deployments[deployment_name]
        container = main_container(deployment)
        settings = settings_from(container_env(docs, container))
        url = urlsplit(settings.storage_url)
        if url.scheme != "file":
            continue
        if deployment_name == "api-gateway" and not settings.gateway_reads_storage:
            continue
        root = url.netloc + url.path
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == root]
        assert mounts, f"{deployment_name} opens {root} but mounts nothing there"
        if deployment_name != "api-gateway":  # the gateway only reads
            assert not mounts[0].get("readOnly"), deployment_name
        volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == mounts[0]["name"])
        sources.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(sources) <= 1 and sources <= claims, sources


@pytest.mark.parametrize("name", RENDERS)
def test_container_commands_are_those_shared_processes_builds(name: str) -> None:
    docs = render(name)
    for workload_name, workload in workloads(docs).items():
        container = main_container(workload)
        assert "args" not in container, workload_name
        command = container["command"]
        settings = settings_from(container_env(docs, container))
        if workload_name == "flower":
            flower_command_ok(command, container_ports(workload)["http"])
            continue
        process = "migrate" if workload_name == "registry-migrate" else workload_name
        assert command == expected_commands(settings)[process], workload_name
    beat = main_container(of_kind(docs, "Deployment")["janitor-beat"])
    schedule = settings_from(container_env(docs, beat)).beat_schedule_file
    writable = [m["mountPath"] for m in beat["volumeMounts"] if not m.get("readOnly")]
    assert any(schedule.startswith(f"{path}/") for path in writable), schedule


@pytest.mark.parametrize("name", RENDERS)
def test_autoscalers_and_budgets_target_existing_deployments(name: str) -> None:
    docs = render(name)
    deployments = of_kind(docs, "Deployment")
    for hpa_name, hpa in of_kind(docs, "HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment"), hpa_name
        assert target["name"] in deployments, hpa_name
        assert target["name"] in HTTP_SERVICES, "only the stateless HTTP services scale"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], hpa_name
        # The HPA owns the count: a replicas field would reset it at every apply.
        assert "replicas" not in deployments[target["name"]]["spec"], target["name"]
    for pdb_name, pdb in of_kind(docs, "PodDisruptionBudget").items():
        assert selected(docs, pdb["spec"]["selector"]) == {pdb_name}
        # maxUnavailable: a single replica (dev) must not block a node drain.
        assert pdb["spec"].get("maxUnavailable", 0) >= 1, pdb_name


@pytest.mark.parametrize("name", RENDERS)
def test_the_beat_is_one_and_replaced_not_rolled(name: str) -> None:
    docs = render(name)
    beat = of_kind(docs, "Deployment")["janitor-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    hpas = of_kind(docs, "HorizontalPodAutoscaler").values()
    targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas}
    assert "janitor-beat" not in targets
    assert of_kind(docs, "Deployment")["flower"]["spec"]["replicas"] == 1


# ---- Kubernetes: NetworkPolicies ----------------------------------------------------------------


def _peer_is_outside(peer: Doc) -> bool:
    """Whether a NetworkPolicy peer may be a pod of another namespace, or no pod at all."""
    return "namespaceSelector" in peer or "ipBlock" in peer


@pytest.mark.parametrize("name", RENDERS)
def test_network_policy_selectors_select_existing_pods(name: str) -> None:
    docs = render(name)
    for policy_name, policy in of_kind(docs, "NetworkPolicy").items():
        assert selected(docs, policy["spec"]["podSelector"]), policy_name
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if labels.get("app.kubernetes.io/name") == "registry":
                    assert selected(docs, peer["podSelector"]), (policy_name, peer)


def allowed_ingress(docs: tuple[Doc, ...], workload: str) -> list[Doc]:
    """The ingress rules of every NetworkPolicy that selects ``workload``'s pods."""
    labels = pod_labels(workloads(docs)[workload])
    rules: list[Doc] = []
    for policy in of_kind(docs, "NetworkPolicy").values():
        if selects(policy["spec"]["podSelector"], labels):
            assert "Ingress" in policy["spec"]["policyTypes"]
            rules += policy["spec"].get("ingress", [])
    return rules


@pytest.mark.parametrize("name", STRICT_NETWORK)
def test_only_the_gateway_is_reachable_from_outside_the_namespace(name: str) -> None:
    docs = render(name)
    every_pod = workloads(docs)
    policies = of_kind(docs, "NetworkPolicy").values()
    for workload_name, workload in every_pod.items():
        # Isolated: at least one policy selects it, so whatever no rule allows is denied.
        assert any(selects(p["spec"]["podSelector"], pod_labels(workload)) for p in policies)
        rules = allowed_ingress(docs, workload_name)
        # The services answer the gateway; the blob service also the manifest service (the web
        # interface reads image configurations from it).
        callers = {"blob-service": {"api-gateway", "manifest-service"}}
        if workload_name == "api-gateway":
            ports = {p["port"] for r in rules for p in r.get("ports", [])}
            assert ports == set(container_ports(workload).values())
            assert any("from" not in r for r in rules), "the Ingress controller must reach it"
        elif workload_name in ("blob-service", "manifest-service"):
            assert rules, workload_name
            for rule in rules:
                peers = rule.get("from")
                assert peers, f"{workload_name} open to all"
                for peer in peers:
                    assert not _peer_is_outside(peer), (workload_name, peer)
                    expected = callers.get(workload_name, {"api-gateway"})
                    assert selected(docs, peer["podSelector"]) <= expected, peer
        elif workload_name == "flower":
            assert rules
            for rule in rules:
                assert rule.get("from"), "flower open to all"
                assert not any(_peer_is_outside(peer) for peer in rule["from"])
        else:
            assert not rules, f"{workload_name} serves no one"


# ---- Kubernetes: overlays -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "namespace"),
    [("dev", "registry-dev"), ("prod", "registry-prod"), (WITH_MONITORING, "registry-prod")],
)
def test_overlays_live_in_their_own_namespace(name: str, namespace: str) -> None:
    docs = render(name)
    assert set(of_kind(docs, "Namespace")) == {namespace}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def _images(docs: tuple[Doc, ...]) -> set[str]:
    return {c["image"] for w in workloads(docs).values() for c in containers(w)}


def test_dev_runs_one_small_replica_of_each_tagged_dev() -> None:
    dev, base = render("dev"), render("base")
    assert {image.rsplit(":", 1)[1] for image in _images(dev)} == {"dev"}
    # Only the tag changes: the images built locally under the base's names.
    assert {image.rsplit(":", 1)[0] for image in _images(dev)} == {
        image.rsplit(":", 1)[0] for image in _images(base)
    }
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    for deployment_name, deployment in of_kind(dev, "Deployment").items():
        assert deployment["spec"]["replicas"] == 1, deployment_name
    base_workloads = workloads(base)
    for workload_name, workload in workloads(dev).items():
        base_containers = {c["name"]: c for c in containers(base_workloads[workload_name])}
        for container in containers(workload):
            for bound in ("requests", "limits"):
                for resource, value in container["resources"][bound].items():
                    base_value = base_containers[container["name"]]["resources"][bound][resource]
                    assert quantity(value) <= quantity(base_value), (workload_name, bound)


def test_prod_runs_more_replicas_with_autoscaling() -> None:
    prod, base = render("prod"), render("base")
    for image in _images(prod):
        # Never a short name (it means Docker Hub, where "registry" is another project's image)
        # nor the tag latest.
        repository, tag = image.rsplit(":", 1)
        host = repository.split("/", 1)[0]
        assert "/" in repository and ("." in host or ":" in host), image
        assert tag != "latest", image
    base_hpas = of_kind(base, "HorizontalPodAutoscaler")
    for hpa_name, hpa in of_kind(prod, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["minReplicas"] >= 3, hpa_name
        assert hpa["spec"]["minReplicas"] > base_hpas[hpa_name]["spec"]["minReplicas"]
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"], hpa_name
    janitor = of_kind(prod, "Deployment")["janitor"]
    assert janitor["spec"]["replicas"] > of_kind(base, "Deployment")["janitor"]["spec"]["replicas"]


# ---- the apps serve the paths the probes and scrapes use ----------------------------------------


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Embedded settings under ``tmp_path``, fresh caches, and the logging setup put back."""
    from shared.storage import get_storage

    for name in [name for name in os.environ if name.startswith("REGISTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REGISTRY_DATABASE_URL", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("REGISTRY_STORAGE_URL", f"file://{tmp_path / 'storage'}")
    monkeypatch.setenv("REGISTRY_BROKER_URL", f"filesystem://{tmp_path / 'broker'}")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    get_settings.cache_clear()
    get_storage.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()
        get_storage.cache_clear()
        root.handlers[:] = handlers
        root.setLevel(level)


def route_paths(routes: Sequence[Any], prefix: str = "") -> set[str]:
    """The paths of ``app.routes``, into mounted routers."""
    paths: set[str] = set()
    for route in routes:
        path = getattr(route, "path", None)
        nested = getattr(route, "routes", None)
        if isinstance(path, str):
            paths |= route_paths(nested, prefix + path) if nested else {prefix + path}
    return paths


def _probed_paths(deployment: Doc) -> set[str]:
    container = main_container(deployment)
    paths = {
        container[kind]["httpGet"]["path"]
        for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        if "httpGet" in container.get(kind, {})
    }
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    return paths | {annotations["prometheus.io/path"]}


@pytest.mark.usefixtures("isolated_settings")
@pytest.mark.parametrize("deployment_name", sorted(HTTP_SERVICES))
def test_probe_and_metrics_paths_are_routes_of_the_app(deployment_name: str) -> None:
    from starlette.applications import Starlette

    module = importlib.import_module(HTTP_SERVICES[deployment_name])
    app = module.create_app()
    assert isinstance(app, Starlette)
    routes = route_paths(app.routes)
    wanted = {"/healthz", "/readyz", "/metrics"}
    for name in KUSTOMIZATIONS:
        wanted |= _probed_paths(of_kind(render(name), "Deployment")[deployment_name])
    compose = _compose()["services"][deployment_name]["healthcheck"]["test"]
    image = _healthcheck(_final_stage(IMAGE_OF[deployment_name]))
    for check in (compose, image):
        wanted |= set(re.findall(r"http://127\.0\.0\.1:\d+(/[a-z]+)", " ".join(check)))
    assert wanted <= routes, f"{deployment_name} does not serve {sorted(wanted - routes)}"


def test_flower_serves_the_paths_its_probes_and_scrapes_use() -> None:
    from flower.urls import handlers

    # (pattern, handler, ...) tuples, and tornado URLSpecs (their regex ends with $).
    patterns = {
        h[0] if isinstance(h, tuple) else h.regex.pattern.removesuffix("$") for h in handlers
    }
    assert patterns >= FLOWER_PATHS
    for name in KUSTOMIZATIONS:
        assert _probed_paths(of_kind(render(name), "Deployment")["flower"]) <= FLOWER_PATHS


# ---- docker-compose.yml -------------------------------------------------------------------------

COMPOSE_SERVICES = {"mysql", "redis", "migrate", *DEPLOYMENTS}


@functools.cache
def _compose_cached() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def _compose() -> Doc:
    compose: Doc = yaml.safe_load(_compose_cached())
    return compose


def _compose_command(service: Doc) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _compose_port(service: Doc) -> int:
    command = _compose_command(service)
    for i, arg in enumerate(command):
        if arg == "--port":
            return int(command[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    raise AssertionError(f"no --port in {command}")


def test_compose_has_every_service_and_references_only_defined_ones() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == COMPOSE_SERVICES
    assert services["mysql"]["image"].startswith("mysql:8")
    assert services["redis"]["image"].startswith("redis:")
    volumes = set(compose.get("volumes") or {})
    for service_name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (service_name, dependency)
            assert condition["condition"] in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if condition["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{service_name} waits for {dependency} to be healthy, which has no check"
                )
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/")):
                assert source in volumes, (service_name, source)


def test_compose_starts_the_registry_after_its_migration() -> None:
    services = _compose()["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    for service_name in DEPLOYMENTS - {"flower"}:
        depends = services[service_name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", service_name
        assert depends["redis"]["condition"] == "service_healthy", service_name
    gateway = services["api-gateway"]["depends_on"]
    for backend in ("blob-service", "manifest-service"):
        assert gateway[backend]["condition"] == "service_healthy"


def test_compose_publishes_only_the_gateway_and_flower_on_loopback() -> None:
    services = _compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert published == {"api-gateway": ["5000:5000"], "flower": [f"127.0.0.1:{FLOWER_PORT}:5555"]}


def test_compose_commands_are_those_shared_processes_builds() -> None:
    services = _compose()["services"]
    for service_name in COMPOSE_SERVICES - {"mysql", "redis"}:
        service = services[service_name]
        command = _compose_command(service)
        settings = settings_from(service.get("environment") or {})
        if service_name == "flower":
            flower_command_ok(command, FLOWER_PORT)
            continue
        assert command == expected_commands(settings)[service_name], service_name


def test_compose_and_kubernetes_run_the_same_commands() -> None:
    services = _compose()["services"]
    deployments = workloads(render("base"))
    for service_name in COMPOSE_SERVICES - {"mysql", "redis"}:
        workload = "registry-migrate" if service_name == "migrate" else service_name
        kubernetes = main_container(deployments[workload])["command"]
        assert _compose_command(services[service_name]) == kubernetes, service_name


def test_compose_sets_only_real_settings_and_every_required_one() -> None:
    for service_name, service in _compose()["services"].items():
        if service_name in ("mysql", "redis"):
            continue
        names = {n for n in service.get("environment") or {} if n.startswith("REGISTRY_")}
        assert names <= SETTINGS, (service_name, names - SETTINGS)
        assert names >= REQUIRED, (service_name, REQUIRED - names)


def test_compose_http_services_check_their_own_healthz() -> None:
    services = _compose()["services"]
    for service_name in HTTP_SERVICES:
        service = services[service_name]
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], test
        assert "urllib.request.urlopen" in test[3]
        assert f"http://127.0.0.1:{_compose_port(service)}/healthz" in test[3], service_name
        # uvicorn drains for 30 s on SIGTERM; Compose must wait that long before SIGKILL.
        assert int(service["stop_grace_period"].rstrip("s")) > 30


def test_compose_mounts_the_storage_wherever_it_is_opened() -> None:
    services = _compose()["services"]
    sources = set()
    for service_name in STORAGE_USERS:
        service = services[service_name]
        settings = settings_from(service["environment"])
        url = urlsplit(settings.storage_url)
        assert url.scheme == "file"
        root = url.netloc + url.path
        mounts = [m.split(":") for m in service.get("volumes", [])]
        found = [m for m in mounts if m[1] == root]
        assert found, f"{service_name} opens {root} but mounts nothing there"
        sources.add(found[0][0])
    assert len(sources) == 1


def test_compose_beat_schedule_is_on_the_tmpfs() -> None:
    beat = _compose()["services"]["janitor-beat"]
    assert beat["read_only"] is True
    schedule = settings_from(beat["environment"]).beat_schedule_file
    assert any(schedule.startswith(f"{path}/") for path in beat["tmpfs"]), schedule


# ---- images: the services' Dockerfiles, and which process runs which ---------------------------

# Nothing that compiles belongs in a final stage (the builder compiles crcmod's C extension).
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|libc6-dev|python3-dev)\b")
SLIM_PYTHON = re.compile(r"python:3\.\d+(\.\d+)?-slim(-[a-z]+)?")
LOCK, DEV_LOCK = "requirements.lock", "requirements-dev.lock"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    flags: dict[str, str]  # --name=value before the arguments (COPY --from, HEALTHCHECK --timeout)
    value: str  # the arguments, continuation lines joined


@dataclass(frozen=True)
class Stage:
    base: str  # the FROM image, build arguments substituted
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def _logical_lines(text: str) -> list[str]:
    """Docker's reading: comment lines dropped (inside continuations too), a line ending with a
    backslash continued on the next."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        lines.append(current + line)
        current = ""
    assert not current, "the last instruction is continued into nothing"
    return lines


def _instruction(line: str) -> Instruction:
    keyword, _, rest = line.partition(" ")
    flags: dict[str, str] = {}
    rest = rest.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        name, _, value = flag[2:].partition("=")
        flags[name] = value
        rest = rest.strip()
    return Instruction(keyword.upper(), flags, rest)


@functools.cache
def _stages(folder: str) -> tuple[Stage, ...]:
    """The stages of services/<folder>/Dockerfile, in order."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILES[folder].read_text()):
        instruction = _instruction(line)
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: arguments[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), instruction
            stages.append(Stage(base, name, []))
        elif not stages:
            assert instruction.keyword == "ARG", f"{folder}: {instruction.keyword} before FROM"
            name, _, default = instruction.value.partition("=")
            arguments[name] = default
        else:
            stages[-1].instructions.append(instruction)
    assert stages, f"{folder}: no FROM"
    return tuple(stages)


def _final_stage(folder: str) -> Stage:
    return _stages(folder)[-1]


def _exec_form(instruction: Instruction) -> list[str]:
    """A CMD's JSON array (the exec form: the process gets SIGTERM itself, not a shell)."""
    command = json.loads(instruction.value)
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), instruction
    return command


def _healthcheck(stage: Stage) -> list[str]:
    """The stage's HEALTHCHECK command: the exec form's array, or the shell form's words."""
    kind, _, command = stage.last("HEALTHCHECK").value.partition(" ")
    assert kind == "CMD", "the check is disabled (HEALTHCHECK NONE)"
    if command.startswith("["):
        return _exec_form(Instruction("CMD", {}, command))
    return shlex.split(command)


def _shell_commands(run: Instruction) -> list[list[str]]:
    """The words of each command of a shell-form RUN (``a && b; c``: a, b and c)."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(run.value):
        if word in ("&&", "||", ";"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def _copies(stage: Stage) -> list[tuple[list[str], str, str | None]]:
    """(sources, destination, --from) of each COPY and ADD."""
    found = []
    for instruction in stage.instructions:
        if instruction.keyword in ("COPY", "ADD"):
            *sources, destination = shlex.split(instruction.value)
            found.append((sources, destination, instruction.flags.get("from")))
    return found


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        env |= dict(pair.split("=", 1) for pair in shlex.split(instruction.value))
    return env


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, duration
    return float(match.group(1)) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _option(command: Sequence[str], name: str) -> str:
    return command[command.index(name) + 1]


def _default_settings(process: str) -> Settings:
    """The settings the process gets in the Kubernetes base: what its image is made for."""
    base = render("base")
    workload = workloads(base)["registry-migrate" if process == "migrate" else process]
    return settings_from(container_env(base, main_container(workload)))


def test_each_service_has_its_own_dockerfile_and_there_is_no_other() -> None:
    folders = {path.name for path in (ROOT / "services").iterdir() if path.is_dir()}
    assert folders == set(IMAGE_DEFAULTS) == set(IMAGE_OF.values())
    # services/<name>/Dockerfile, and no other (the single image every process once shared
    # is gone: nothing builds it any more).
    found = set()
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d != "var"]
        found |= {Path(directory, file) for file in files if file == "Dockerfile"}
    assert found == set(DOCKERFILES.values())
    # Every process of the registry runs from one of the images.
    names = {
        p.name
        for beat in ("true", "false")
        for p in processes(
            settings_from(
                {"REGISTRY_BEAT_IN_WORKER": beat, "REGISTRY_NOTIFICATIONS_FILE": "n.yaml"}
            )
        )
    }
    assert set(IMAGE_OF) == names | {"flower", "migrate"}


@pytest.mark.parametrize("folder", sorted(IMAGE_DEFAULTS))
def test_dockerfile_is_multi_stage_with_no_build_tools_in_the_final_slim_stage(
    folder: str,
) -> None:
    stages = _stages(folder)
    assert len(stages) >= 2, f"{folder}: one stage"
    final, earlier = stages[-1], stages[:-1]
    assert SLIM_PYTHON.fullmatch(final.base), f"{folder}: final stage FROM {final.base}"
    # FROM an earlier stage, it would keep that stage's compiler.
    assert final.base not in {stage.name for stage in earlier}, folder
    for instruction in final.all("RUN"):
        assert not BUILD_TOOLS.search(instruction.value), f"{folder}: {instruction.value}"
    # The dependencies come from a builder stage, in the venv that is on the PATH.
    venvs = [(src, dst) for src, dst, stage in _copies(final) if stage]
    assert venvs, f"{folder}: the final stage copies nothing from a builder"
    builders = {stage.name for stage in earlier}
    for sources, destination in venvs:
        # At the same path: a venv's scripts name its interpreter by absolute path.
        assert sources == [destination], (folder, sources, destination)
    assert {stage for _, _, stage in _copies(final) if stage} <= builders, folder
    path = _env(final).get("PATH", "").split(":")
    assert path[0] in {f"{destination}/bin" for _, destination in venvs}, (folder, path)


@pytest.mark.parametrize("folder", sorted(IMAGE_DEFAULTS))
def test_dockerfile_installs_the_pinned_dependencies(folder: str) -> None:
    earlier = _stages(folder)[:-1]
    copied = {source for stage in earlier for sources, _, _ in _copies(stage) for source in sources}
    assert LOCK in copied, folder
    kinds = []
    for stage in earlier:
        for run in stage.all("RUN"):
            for command in _shell_commands(run):
                if "pip" not in command[:3] or "install" not in command:
                    continue
                words = command[command.index("install") + 1 :]
                locks = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-r"]
                targets = [w for w in words if not w.startswith("-") and w not in locks]
                # Either the lock, or the project itself without its dependencies: nothing
                # unpinned comes in.
                if locks:
                    assert locks == [LOCK] and not targets, (folder, command)
                    kinds.append("lock")
                else:
                    assert targets == ["."] and "--no-deps" in words, (folder, command)
                    kinds.append("project")
    assert sorted(kinds) == ["lock", "project"], (folder, kinds)


def test_the_images_pins_are_those_the_tests_run_on() -> None:
    def pins(name: str) -> dict[str, str]:
        text = (ROOT / name).read_text()
        return dict(re.findall(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)==(\S+)", text, re.MULTILINE))

    image, tests = pins(LOCK), pins(DEV_LOCK)
    assert image, LOCK
    different = {name: (v, tests.get(name)) for name, v in image.items() if tests.get(name) != v}
    assert not different, f"{LOCK} and {DEV_LOCK} disagree: {different}"


@pytest.mark.parametrize("folder", sorted(IMAGE_DEFAULTS))
def test_dockerfile_copies_shared_and_only_its_own_service(folder: str) -> None:
    own = f"services/{folder}"
    allowed = {"pyproject.toml", LOCK, "shared", own}
    copied: set[str] = set()
    for stage in _stages(folder):
        assert not stage.all("ADD"), f"{folder}: ADD (COPY says what it does)"
        for sources, _, from_stage in _copies(stage):
            if from_stage is None:
                copied |= {source.rstrip("/") for source in sources}
    assert copied == allowed, f"{folder}: copies {sorted(copied - allowed)}"


def _dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match, plus ``**`` for any number of folders)."""
    parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
    regex = "".join(
        {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        for part in parts
    )
    return re.compile(regex)


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not read here"
    compiled = [_dockerignore_pattern(pattern) for pattern in patterns]
    for folder in IMAGE_DEFAULTS:
        for stage in _stages(folder):
            for sources, _, from_stage in _copies(stage):
                for source in [] if from_stage else sources:
                    # Excluded when it, or a folder it is in, matches.
                    parts = source.strip("/").split("/")
                    for path in ("/".join(parts[:i]) for i in range(1, len(parts) + 1)):
                        hits = [p.pattern for p in compiled if p.fullmatch(path)]
                        assert not hits, f"{folder} copies {source}; .dockerignore: {hits}"
    # And the context leaves out the local state and the tests.
    for path in (".git", ".venv", "var", "tests", "services/janitor/janitor/__pycache__"):
        assert any(p.fullmatch(path) for p in compiled), path


@pytest.mark.parametrize("folder", sorted(IMAGE_DEFAULTS))
def test_dockerfile_runs_as_a_non_root_user(folder: str) -> None:
    final = _final_stage(folder)
    user = final.last("USER").value
    uid = user.split(":", 1)[0]
    # Numeric: Kubernetes can check runAsNonRoot against it with no runAsUser.
    assert uid.isdigit() and int(uid) != 0, f"{folder}: USER {user}"


@pytest.mark.parametrize("folder", sorted(IMAGE_DEFAULTS))
def test_dockerfile_command_is_the_one_shared_processes_builds(folder: str) -> None:
    final = _final_stage(folder)
    assert not final.all("ENTRYPOINT"), folder  # Kubernetes' command replaces it, Compose's not
    process = IMAGE_DEFAULTS[folder]
    command = _exec_form(final.last("CMD"))
    assert command == expected_commands(_default_settings(process))[process], folder
    if folder in HTTP_SERVICES:
        exposed = {word.split("/")[0] for i in final.all("EXPOSE") for word in i.value.split()}
        assert _option(command, "--port") in exposed, folder


@pytest.mark.parametrize("folder", sorted(HTTP_SERVICES))
def test_http_service_dockerfile_checks_its_own_healthz(folder: str) -> None:
    final = _final_stage(folder)
    port = _option(_exec_form(final.last("CMD")), "--port")
    check = _healthcheck(final)
    assert check[:2] == ["python", "-c"], check  # the image has no curl
    assert "urllib.request.urlopen" in check[2], check
    assert re.search(rf"'http://127\.0\.0\.1:{port}/healthz'", check[2]), (folder, check)
    # The request gives up before Docker kills the check.
    request_timeout = re.search(r"\btimeout=(\d+(?:\.\d+)?)\)", check[2])
    assert request_timeout, f"{folder}: the request has no timeout"
    assert float(request_timeout.group(1)) < _seconds(final.last("HEALTHCHECK").flags["timeout"])


def test_janitor_dockerfile_checks_that_its_worker_answers() -> None:
    final = _final_stage("janitor")
    command = _exec_form(final.last("CMD"))
    check = _healthcheck(final)
    # celery -A <the worker's app> inspect ping (python -m janitor runs janitor.worker's app),
    # addressed to the node the worker names itself (--hostname janitor@%h: %h is the host
    # name, $HOSTNAME in the container's shell).
    assert command[:4] == ["python", "-m", "janitor", "worker"], command
    celery = check.index("celery")
    assert check[celery + 1 : celery + 5] == ["-A", "janitor.worker", "inspect", "ping"], check
    node = _option(command, "--hostname").replace("%h", "$HOSTNAME")
    assert _option(check, "--destination") == node, check
    ping_timeout = float(_option(check, "--timeout"))
    assert ping_timeout < _seconds(final.last("HEALTHCHECK").flags["timeout"]), check


def _compose_images() -> dict[str, str]:
    """The image each registry service of docker-compose.yml runs."""
    services = _compose()["services"]
    return {name: services[name]["image"] for name in IMAGE_OF}


def _one_image_per_dockerfile(images: Mapping[str, str]) -> dict[str, str]:
    """``images`` (process: image) as folder: image, checking that the processes of one folder
    share one image and that no two folders share one."""
    by_folder: dict[str, set[str]] = {}
    for process, image in images.items():
        by_folder.setdefault(IMAGE_OF[process], set()).add(image)
    assert all(len(found) == 1 for found in by_folder.values()), by_folder
    single = {folder: found.pop() for folder, found in by_folder.items()}
    assert len(set(single.values())) == len(single), f"two Dockerfiles, one image: {single}"
    return single


def test_compose_builds_each_image_from_its_service_dockerfile() -> None:
    services = _compose()["services"]
    for name, folder in IMAGE_OF.items():
        service = services[name]
        build = service["build"]
        assert build == {"context": ".", "dockerfile": f"services/{folder}/Dockerfile"}, name
        assert service["pull_policy"] == "build", name  # a short name: never pulled
        assert "user" not in service, name  # the image's non-root user
        if IMAGE_DEFAULTS[folder] != name:
            # Not the image's own process: its HEALTHCHECK is not this process's.
            assert "healthcheck" in service, name
    assert set(_one_image_per_dockerfile(_compose_images())) == set(IMAGE_DEFAULTS)


@pytest.mark.parametrize("name", RENDERS)
def test_kubernetes_runs_each_process_on_its_services_image(name: str) -> None:
    docs = render(name)
    images: dict[str, str] = {}
    for workload_name, workload in workloads(docs).items():
        process = "migrate" if workload_name == "registry-migrate" else workload_name
        images[process] = main_container(workload)["image"]
        # The user the image runs as, which the pods assert.
        uid = _final_stage(IMAGE_OF[process]).last("USER").value.split(":", 1)[0]
        security = pod_spec(workload).get("securityContext", {})
        run_as = main_container(workload).get("securityContext", {}).get("runAsUser")
        assert str(run_as or security.get("runAsUser")) == uid, workload_name
    assert set(images) == set(IMAGE_OF)
    per_folder = _one_image_per_dockerfile(images)
    compose = _one_image_per_dockerfile(_compose_images())
    # One release: every image of a render carries the same tag.
    assert len({image.rsplit(":", 1)[1] for image in per_folder.values()}) == 1, per_folder
    for folder, image in per_folder.items():
        # The base runs the images docker-compose.yml builds; an overlay retags them or moves
        # them to another repository, but keeps each one's name.
        if name == "base":
            assert image == compose[folder], folder
        repository = image.rsplit(":", 1)[0]
        assert repository.rsplit("/", 1)[-1] == compose[folder].rsplit(":", 1)[0], folder


# ---- the Grafana dashboard ----------------------------------------------------------------------

DASHBOARD = ROOT / "deploy" / "grafana" / "registry.json"
DASHBOARD_METRICS = {
    "registry_http_requests_total",
    "registry_http_request_duration_seconds_bucket",
    "registry_http_request_bytes_total",
    "registry_http_response_bytes_total",
    "registry_uploads_in_progress",
    "registry_gc_bytes_reclaimed_total",
    "flower_events_total",
    "flower_task_runtime_seconds_bucket",
}
_METRIC = re.compile(r"\b((?:registry|flower)_[a-z_]+)\b")


def _panels(dashboard: Doc) -> Iterator[Doc]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _expressions(dashboard: Doc) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


@functools.cache
def _defined_metric_names() -> frozenset[str]:
    """Every metric name written in the registry's code and in Flower's: the string literals
    given to prometheus_client."""
    flower = importlib.util.find_spec("flower")
    assert flower is not None and flower.origin is not None
    sources = [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]
    sources += Path(flower.origin).parent.rglob("*.py")
    literal = re.compile(r"""["']((?:registry|flower)_[a-z_]+)["']""")
    return frozenset(name for path in sources for name in literal.findall(path.read_text()))


def _is_defined(name: str) -> bool:
    defined = _defined_metric_names()
    candidates = {name}
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix):
            candidates.add(name.removesuffix(suffix))
    if name.endswith("_total"):
        candidates.add(name)
    return bool(candidates & defined)


def test_the_dashboard_is_grafana_json_with_the_panels_asked_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = {name for expr in _expressions(dashboard) for name in _METRIC.findall(expr)}
    assert used >= DASHBOARD_METRICS, DASHBOARD_METRICS - used


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for expr in _expressions(dashboard):
        for name in _METRIC.findall(expr):
            assert _is_defined(name), f"{name} is exported by nothing (in {expr})"
        for quantile in re.findall(r"histogram_quantile\(([^,]+),\s*(.*)\)\s*$", expr):
            assert "_bucket" in quantile[1] and re.search(r"by \([^)]*\ble\b", quantile[1]), expr
