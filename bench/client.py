"""The benchmark's HTTP client and its test data.

The client is the standard library's ``http.client`` (keep-alive, C-level socket reads), with
two shortcuts so that it costs little beside the servers on a small machine:

- request bodies of blobs are sent from the data file with ``socket.sendfile`` (``os.sendfile``
  underneath): the kernel copies page cache to the socket, nothing passes through Python;
- downloads are read into one reused buffer and counted, not hashed, so that a timed pull
  measures the server and not the client's hashing; each scenario's untimed warm-up pull is
  checked whole with its SHA-256, and every timed pull by its status and length.

Blob data is random bytes generated once per run into one temporary file. Each blob is a slice
of it at its own offset (a multiple of 1 MiB), so every blob pushed in a run is distinct.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
READ_BUFFER = MiB


class Failure(Exception):
    """A request failed or returned wrong data: the run exits non-zero."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Blob:
    """A slice of the data file: what a blob push sends and what a pull must return."""

    offset: int
    size: int
    digest: str  # sha256:...


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class DataFile:
    """Random bytes in a temporary file; ``blob(size)`` hands out distinct slices."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        chunk = 16 * MiB
        with open(path, "wb") as out:
            left = size
            while left:
                out.write(os.urandom(min(chunk, left)))
                left -= min(chunk, left)
        self._cursor = 0
        self._used: set[tuple[int, int]] = set()

    def blob(self, size: int) -> Blob:
        """A new slice of ``size`` bytes, at an offset no earlier slice of that size started
        at (so its digest is new), with its SHA-256."""
        if size > self.size:
            raise ValueError(f"a {size}-byte blob does not fit the {self.size}-byte data file")
        room = self.size - size
        offset = self._cursor % (room + 1)
        offset -= offset % 4096
        for _ in range(room // 4096 + 1):
            if (offset, size) not in self._used:
                break
            offset = (offset + 4096) % (room + 1)
            offset -= offset % 4096
        else:
            raise ValueError(f"no distinct {size}-byte slice is left in the data file")
        self._used.add((offset, size))
        # The next blob starts 1 MiB + 4 KiB later (wrapping): distinct slices for thousands.
        self._cursor = offset + MiB + 4096
        sha = hashlib.sha256()
        buffer = bytearray(4 * MiB)
        view = memoryview(buffer)
        with open(self.path, "rb") as source:
            source.seek(offset)
            left = size
            while left:
                n = source.readinto(view[: min(len(buffer), left)])
                if not n:
                    raise OSError("the data file is shorter than it should be")
                sha.update(view[:n])
                left -= n
        return Blob(offset, size, "sha256:" + sha.hexdigest())


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""

    def expect(self, status: int, what: str) -> Response:
        if self.status != status:
            raise Failure(f"{what}: status {self.status}, expected {status}: {self.body[:300]!r}")
        return self


@dataclass
class Download:
    status: int
    headers: http.client.HTTPMessage
    size: int
    digest: str | None  # sha256:..., when asked for
    error_body: bytes

    def check(self, blob: Blob, what: str) -> None:
        if self.status != 200:
            raise Failure(f"{what}: status {self.status}: {self.error_body[:300]!r}")
        if self.size != blob.size:
            raise Failure(f"{what}: {self.size} bytes, expected {blob.size}")
        if self.digest is not None and self.digest != blob.digest:
            raise Failure(f"{what}: digest {self.digest}, expected {blob.digest}")


def location_path(location: str) -> str:
    """The path and query of a ``Location`` header, absolute (the reference's) or not (ours)."""
    if not location:
        raise Failure("a response that should name a Location has none")
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, endpoint: Endpoint, timeout: float = 300) -> None:
        self.endpoint = endpoint
        self.http = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        try:
            self.http.request(method, path, body=body, headers=headers or {})
            response = self.http.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            raise Failure(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return Response(response.status, response.headers, data)

    def send_file(
        self,
        method: str,
        path: str,
        data: DataFile,
        offset: int,
        size: int,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """A request whose body is ``size`` bytes of the data file from ``offset``, sent with
        ``sendfile`` (no copy through Python)."""
        try:
            self.http.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                self.http.putheader(name, value)
            self.http.putheader("Content-Length", str(size))
            self.http.endheaders()
            sock = self.http.sock
            assert sock is not None
            with open(data.path, "rb") as source:
                sent = sock.sendfile(source, offset, size)
            if sent != size:
                raise Failure(f"{method} {path}: sent {sent} of {size} bytes")
            response = self.http.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            raise Failure(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return Response(response.status, response.headers, body)

    def download(self, path: str, *, sha: bool = False) -> Download:
        """GET ``path`` and read the body into one reused buffer, counting it (and computing
        its SHA-256 with ``sha``); the bytes are discarded. Without ``sha`` the client does no
        work per byte beyond receiving it, so that the server is what a timed pull measures."""
        try:
            self.http.request("GET", path)
            response = self.http.getresponse()
            if response.status != 200:
                return Download(response.status, response.headers, 0, None, response.read())
            buffer = bytearray(READ_BUFFER)
            view = memoryview(buffer)
            hasher = hashlib.sha256() if sha else None
            size = 0
            while True:
                n = response.readinto(view)
                if not n:
                    break
                if hasher is not None:
                    hasher.update(view[:n])
                size += n
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            raise Failure(f"GET {path}: {type(exc).__name__}: {exc}") from None
        digest = "sha256:" + hasher.hexdigest() if hasher is not None else None
        return Download(response.status, response.headers, size, digest, b"")

    # --- the registry steps the scenarios share -------------------------------------------

    def push_blob(self, repo: str, data: DataFile, blob: Blob) -> None:
        """POST then PUT with the whole blob as the body."""
        start = self.request("POST", f"/v2/{repo}/blobs/uploads/").expect(202, "upload start")
        done = self.send_file(
            "PUT",
            with_digest(location_path(start.header("Location")), blob.digest),
            data,
            blob.offset,
            blob.size,
            {"Content-Type": "application/octet-stream"},
        ).expect(201, f"PUT of a {blob.size}-byte blob")
        if done.header("Docker-Content-Digest") != blob.digest:
            raise Failure(
                f"PUT of blob {blob.digest} answered digest {done.header('Docker-Content-Digest')}"
            )

    def push_small_blob(self, repo: str, content: bytes) -> str:
        digest = sha256_digest(content)
        start = self.request("POST", f"/v2/{repo}/blobs/uploads/").expect(202, "upload start")
        self.request(
            "PUT",
            with_digest(location_path(start.header("Location")), digest),
            content,
            {"Content-Type": "application/octet-stream"},
        ).expect(201, "PUT of a small blob")
        return digest

    def check_blob(self, repo: str, blob: Blob) -> None:
        """HEAD the blob: it exists with its size and digest."""
        head = self.request("HEAD", f"/v2/{repo}/blobs/{blob.digest}").expect(200, "blob HEAD")
        if head.header("Content-Length") != str(blob.size):
            raise Failure(
                f"blob {blob.digest}: HEAD says {head.header('Content-Length')} bytes, "
                f"expected {blob.size}"
            )

    def put_manifest(self, repo: str, reference: str, manifest: bytes) -> None:
        response = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            manifest,
            {"Content-Type": OCI_MANIFEST},
        ).expect(201, f"manifest PUT {repo}:{reference}")
        expected = sha256_digest(manifest)
        if response.header("Docker-Content-Digest") != expected:
            raise Failure(
                f"manifest PUT {repo}:{reference} answered digest "
                f"{response.header('Docker-Content-Digest')!r}, expected {expected}"
            )


def with_digest(path: str, digest: str) -> str:
    return path + ("&" if "?" in path else "?") + f"digest={digest}"


def image_manifest(config: tuple[str, int], layer: tuple[str, int], note: str) -> bytes:
    """A small OCI image manifest over an existing config and layer; ``note`` (an annotation)
    makes it distinct."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer[0], "size": layer[1]}],
        "annotations": {"org.example.bench": note},
    }
    return json.dumps(document, separators=(",", ":")).encode()


# --- a closed-loop load generator on asyncio (uvloop when installed) ---------------------------


@dataclass
class LoadResult:
    requests: int
    good: int
    bad: int
    errors: int
    first_problem: str
    elapsed: float
    latencies: list[float]  # seconds, one per completed request


async def _load_worker(
    endpoint: Endpoint,
    request: bytes,
    method: str,
    expected: tuple[bytes, bytes],
    deadline: float,
    result: LoadResult,
) -> None:
    digest_line, length_line = expected
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while time.perf_counter() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            assert reader is not None
            started = time.perf_counter()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                body_ok = True
                if method == "GET":
                    length = int(length_line.split(b":")[1])
                    body_ok = len(await reader.readexactly(length)) == length
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                result.errors += 1
                if not result.first_problem:
                    result.first_problem = f"{type(exc).__name__}: {exc}"
                writer.close()
                writer = None
                continue
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            if (
                head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 "))
                and digest_line in lower
                and length_line in lower
                and body_ok
            ):
                result.good += 1
            else:
                result.bad += 1
                if not result.first_problem:
                    result.first_problem = head[:300].decode("latin-1")
            if b"\r\nconnection: close" in lower:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


def load(
    endpoint: Endpoint,
    method: str,
    path: str,
    headers: dict[str, str],
    expected_digest: str,
    expected_length: int,
    connections: int,
    duration: float,
) -> LoadResult:
    """``connections`` keep-alive connections each sending ``method path`` one after another
    for ``duration`` seconds; every response is checked for status 200, the manifest's
    ``Docker-Content-Digest`` and its ``Content-Length`` (and, for GET, that many body bytes)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    expected = (
        f"\r\ndocker-content-digest: {expected_digest}\r\n".encode(),
        f"\r\ncontent-length: {expected_length}\r\n".encode(),
    )
    result = LoadResult(0, 0, 0, 0, "", 0.0, [])

    async def main() -> None:
        started = time.perf_counter()
        deadline = started + duration
        workers = asyncio.gather(
            *(
                _load_worker(endpoint, request, method, expected, deadline, result)
                for _ in range(connections)
            )
        )
        try:
            # A server that stops answering must not hang the run.
            await asyncio.wait_for(workers, duration + 60)
        except TimeoutError:
            raise Failure(f"{method} {path}: no answer 60 s after the run's end") from None
        result.elapsed = time.perf_counter() - started

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main())
    return result
