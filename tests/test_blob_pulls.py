"""Pulling and deleting blobs (OCI Distribution Spec, "Pulling blobs", "Deleting blobs"), with
the HTTP caching and range headers a registry's clients rely on."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from tests.registry import RegistryUnderTest, error_codes, eventually, sha256
from tests.test_operations import metric

BLOB = os.urandom(10_000)


@pytest.fixture
def blob(registry: RegistryUnderTest, repo: str) -> str:
    return registry.push_blob(repo, BLOB)


def test_head_describes_the_blob_without_a_body(
    registry: RegistryUnderTest, repo: str, blob: str
) -> None:
    response = registry.http.head(f"/v2/{repo}/blobs/{blob}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(BLOB))
    assert response.headers["Docker-Content-Digest"] == blob
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{blob}"'
    assert "max-age=31536000" in response.headers["Cache-Control"]
    assert response.content == b""


def test_get_returns_the_exact_bytes(registry: RegistryUnderTest, repo: str, blob: str) -> None:
    response = registry.http.get(f"/v2/{repo}/blobs/{blob}")
    assert response.status_code == 200
    assert response.content == BLOB
    assert response.headers["Content-Length"] == str(len(BLOB))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Docker-Content-Digest"] == blob


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, 9999),
        ("bytes=-25", 9975, 9999),
        ("bytes=9990-20000", 9990, 9999),
    ],
)
def test_range_requests_are_answered_with_206(
    registry: RegistryUnderTest, repo: str, blob: str, header: str, start: int, end: int
) -> None:
    response = registry.http.get(f"/v2/{repo}/blobs/{blob}", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.content == BLOB[start : end + 1]


def test_unsatisfiable_range_is_416(registry: RegistryUnderTest, repo: str, blob: str) -> None:
    response = registry.http.get(f"/v2/{repo}/blobs/{blob}", headers={"Range": "bytes=10000-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(BLOB)}"


def test_unknown_blob_is_404_blob_unknown(registry: RegistryUnderTest, repo: str) -> None:
    digest = sha256(b"hello world")
    response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]
    head = registry.http.head(f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 404
    assert head.content == b""


def test_invalid_digest_is_400_digest_invalid(registry: RegistryUnderTest, repo: str) -> None:
    for digest in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "G" * 64, "nonsense"):
        response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 400, digest
        assert error_codes(response) == ["DIGEST_INVALID"]


def test_delete_removes_the_blob_from_the_repository(
    registry: RegistryUnderTest, repo: str, blob: str
) -> None:
    response = registry.http.delete(f"/v2/{repo}/blobs/{blob}")
    assert response.status_code == 202
    assert registry.http.get(f"/v2/{repo}/blobs/{blob}").status_code == 404
    again = registry.http.delete(f"/v2/{repo}/blobs/{blob}")
    assert again.status_code == 404
    assert error_codes(again) == ["BLOB_UNKNOWN"]


def test_a_deleted_blob_can_be_pushed_again(
    registry: RegistryUnderTest, repo: str, blob: str
) -> None:
    assert registry.http.delete(f"/v2/{repo}/blobs/{blob}").status_code == 202
    assert registry.push_blob(repo, BLOB) == blob
    assert registry.http.get(f"/v2/{repo}/blobs/{blob}").content == BLOB


# --- Large blobs: the gateway's kernel sends the bytes (sendfile), at the client's pace ----

MiB = 1024 * 1024
LARGE = 48 * MiB  # more than the sockets between the gateway and a client hold
# Where the gateway reads the storage itself: files on its machine.
on_local_files = pytest.mark.parametrize("registry", ["sqlite", "mariadb"], indirect=True)


@pytest.fixture
def large(registry: RegistryUnderTest, repo: str) -> tuple[str, bytes]:
    data = os.urandom(LARGE)
    return registry.push_blob(repo, data), data


def sendfile_bytes(registry: RegistryUnderTest) -> float:
    return metric(
        httpx.get(f"{registry.url}/metrics").text, "registry_gateway_sendfile_bytes_total"
    )


def raw_get(registry: RegistryUnderTest, path: str, receive_buffer: int = 0) -> socket.socket:
    """A connection that has sent ``GET path`` and read nothing yet (with a small receive
    buffer, the gateway finds the socket full at once)."""
    connection = socket.socket()
    if receive_buffer:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    connection.settimeout(30)
    address = httpx.URL(registry.url)
    connection.connect((address.host, address.port or 80))
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {registry.host}\r\n\r\n".encode())
    return connection


def read_answer(connection: socket.socket, pause_every: int = 0) -> tuple[bytes, bytes]:
    """The head and the body of one answer (by its Content-Length), sleeping 10 ms after
    every ``pause_every`` bytes of the body when asked."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, "the connection closed before the answer's head"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    parts = [body]
    have = len(body)
    since_pause = 0
    while have < length:
        chunk = connection.recv(min(65536, length - have))
        assert chunk, f"the connection closed after {have} of {length} bytes"
        parts.append(chunk)
        have += len(chunk)
        since_pause += len(chunk)
        if pause_every and since_pause >= pause_every:
            since_pause = 0
            time.sleep(0.01)
    return head, b"".join(parts)


@on_local_files
def test_a_large_blob_is_sent_by_the_kernel(
    registry: RegistryUnderTest, repo: str, large: tuple[str, bytes]
) -> None:
    digest, data = large
    before = sendfile_bytes(registry)
    response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert response.status_code == 200
    assert sha256(response.content) == digest
    ranged = registry.http.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert ranged.status_code == 206
    assert ranged.content == data[1000:]
    assert sendfile_bytes(registry) - before == 2 * LARGE - 1000


@on_local_files
def test_a_slow_reader_gets_every_byte_and_others_are_served_meanwhile(
    registry: RegistryUnderTest, repo: str, large: tuple[str, bytes]
) -> None:
    digest, data = large
    connection = raw_get(registry, f"/v2/{repo}/blobs/{digest}", receive_buffer=65536)
    with connection:
        time.sleep(0.5)  # the gateway's socket is full: it waits for this client
        assert registry.http.get("/v2/").status_code == 200
        assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data
        head, body = read_answer(connection, pause_every=4 * MiB)
    assert head.startswith(b"HTTP/1.1 200")
    assert sha256(body) == digest


@on_local_files
def test_a_blob_the_page_cache_does_not_hold_is_sent_whole(
    registry: RegistryUnderTest, repo: str, large: tuple[str, bytes]
) -> None:
    digest, data = large

    def key() -> str:
        [(stored,)] = registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
        return str(stored)

    # The janitor moves a pushed blob from its upload's key; the file to drop is the last one.
    eventually(lambda: not key().startswith("uploads/"), what="the blob at its final key")
    with open(registry.storage_root / key(), "rb") as file:  # read from the disk again
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert response.content == data


@on_local_files
def test_a_client_gone_midway_leaves_no_file_open(
    registry: RegistryUnderTest, repo: str, large: tuple[str, bytes]
) -> None:
    digest, data = large
    gateway = registry.process("api-gateway").pid

    def open_blob_files() -> int:
        opened = 0
        for fd in os.listdir(f"/proc/{gateway}/fd"):
            try:
                target = os.readlink(f"/proc/{gateway}/fd/{fd}")
            except FileNotFoundError:  # closed since the listing
                continue
            opened += target.startswith(str(registry.storage_root))
        return opened

    connection = raw_get(registry, f"/v2/{repo}/blobs/{digest}", receive_buffer=65536)
    with connection:
        assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        eventually(lambda: open_blob_files() >= 1, what="the gateway sending the file")
    eventually(lambda: open_blob_files() == 0, what="the gateway closing the file")
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data
