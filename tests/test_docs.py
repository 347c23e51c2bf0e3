"""The README's configuration table and the deployment files name exactly the settings the
code reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {f"REGISTRY_{field.name.upper()}" for field in dataclasses.fields(Settings)}


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = {
        name
        for line in readme.splitlines()
        if line.startswith("| `REGISTRY_")
        for name in re.findall(r"`(REGISTRY_[A-Z_]+)`", line.split("|")[1])
    }
    assert table == SETTINGS


def _environment_names() -> set[str]:
    names: set[str] = set()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names |= set(compose["x-registry-env"])
    for path in (ROOT / "deploy" / "k8s").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") in ("ConfigMap", "Secret"):
                names |= set(document.get("data") or {}) | set(document.get("stringData") or {})
    return {name for name in names if name.startswith("REGISTRY_")}


def test_deployment_files_set_only_real_settings() -> None:
    assert _environment_names() <= SETTINGS
