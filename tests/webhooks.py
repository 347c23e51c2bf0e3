"""A webhook endpoint for the notification tests: a real HTTP server on loopback that records
what it gets and can be told to fail, stall or go away."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["events"]  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """A webhook endpoint: records every request it gets; while ``failing``, answers 503."""

    failing: bool = False
    stall: float = 0.0  # while set: wait up to this long, then close without answering
    arrived: list[bytes] = field(default_factory=list)  # every body, as it arrives
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> Receiver:
        """Listen (again: on its former port, once it has one)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.arrived.append(body)
                if receiver.stall:
                    # Took the event, and never answers: the sender sees a timeout, or dies.
                    started = time.monotonic()
                    while receiver.stall and time.monotonic() - started < receiver.stall:
                        time.sleep(0.05)
                    self.close_connection = True
                    return
                status = 503 if receiver.failing else 202
                with receiver.lock:
                    receiver.requests.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                        )
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        if self.server is not None:
            port = self.server.server_address[1]
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away: connections are refused until ``start()``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def delivered(self, path: str, repository: str | None = None) -> list[Received]:
        """The requests to ``path`` answered 2xx (about ``repository``), in arrival order."""
        with self.lock:
            found = [r for r in self.requests if r.path == path and r.answered < 300]
        if repository is None:
            return found
        return [r for r in found if repository_of(r) == repository]

    def refused(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path and r.answered >= 300]


def repository_of(received: Received) -> str:
    document = json.loads(received.body)
    if "events" in document:
        return str(document["events"][0]["target"]["repository"])
    return str(document["subject"])
