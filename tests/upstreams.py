"""Upstream registries for the mirror tests: Debian's ``docker-registry`` (CNCF Distribution) on
loopback, anonymous or behind htpasswd, its data in a folder of the test's; and a registry on
loopback that answers a fixed set of paths (to send bytes that do not match their digest)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import bcrypt
import httpx
import pytest

from tests.registry import free_port

BINARY = "docker-registry"


class ReferenceRegistry:
    """A running ``docker-registry``; :meth:`stop` and :meth:`start` it again on the same port
    and data (an upstream that goes away and comes back)."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        binary = shutil.which(BINARY) or f"/usr/bin/{BINARY}"
        if not Path(binary).exists():
            pytest.fail(
                f"{BINARY} is required for the mirror tests (install it with make services)"
            )
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.users = users or {}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }
        root.mkdir(parents=True, exist_ok=True)
        if self.users:
            htpasswd = root / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()}\n"
                    for user, password in self.users.items()
                )
            )
            config["auth"] = {"htpasswd": {"realm": "upstream", "path": str(htpasswd)}}
        self.config = root / "config.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.log = root / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # A clean environment: the reference registry reads REGISTRY_* variables too.
            self.process = subprocess.Popen(
                [self.binary, "serve", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin"},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"{BINARY} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        self.process = None

    def requests(self, method: str, path_part: str) -> int:
        """How many ``method`` requests whose path holds ``path_part`` its access log shows."""
        return sum(
            1
            for line in self.log.read_text(errors="replace").splitlines()
            if f'"{method} ' in line and path_part in line
        )


@contextmanager
def reference_registry(
    root: Path, users: dict[str, str] | None = None
) -> Iterator[ReferenceRegistry]:
    registry = ReferenceRegistry(root, users)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


class _FixedHandler(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}

    def _answer(self, body: bool) -> None:
        status, headers, content = self.answers.get(
            self.path.split("?", 1)[0], (404, {"Content-Type": "application/json"}, b"{}")
        )
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def fixed_registry(answers: dict[str, tuple[int, dict[str, str], bytes]]) -> Iterator[str]:
    """A registry on loopback answering ``answers`` (path: status, headers, body) and 404
    otherwise; its URL."""
    handler = type("Handler", (_FixedHandler,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
