"""The registry under test, and the client steps of the spec's workflows, written once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from shared.db import make_engine
from shared.processes import Process
from shared.settings import Settings

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

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def storage_root(self) -> Path:
        return self.root / "storage"

    def stored_files(self) -> set[str]:
        return {
            str(p.relative_to(self.storage_root))
            for p in self.storage_root.rglob("*")
            if p.is_file()
        }

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = make_engine(self.settings.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(text(sql), params))
        finally:
            engine.dispose()

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
