"""One writer at a time per upload, whichever process the requests reach: a request that
writes to an upload holds its writer lease in the database; another one meanwhile is answered
416 with the upload's current ``Range``; a writer that died holds the upload only until its
lease expires; a single-request upload cut short by its client leaves nothing behind."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blob_service import uploads
from tests.conftest import isolated_registry
from tests.registry import RegistryUnderTest, error_codes, eventually, sha256


@contextmanager
def chunk_in_flight(
    registry: RegistryUnderTest, location: str, first: int, chunk: bytes
) -> Iterator[socket.socket]:
    """A PATCH of ``chunk`` at ``first`` whose body is sent only in part: the request is
    being written until the caller sends the rest on the socket it is given."""
    host, port = registry.host.split(":")
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {registry.host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(chunk)}\r\n"
        f"Content-Range: {first}-{first + len(chunk) - 1}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + chunk[: len(chunk) // 2])
        yield sock


def answer_status(sock: socket.socket) -> tuple[int, str]:
    """The status and head of the answer on ``sock``."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        part = sock.recv(65536)
        if not part:
            break
        answer += part
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split()[1]), head


def writer_of(registry: RegistryUnderTest, upload_uuid: str) -> str | None:
    rows = registry.query("SELECT writer FROM uploads WHERE uuid = :u", u=upload_uuid)
    return rows[0][0] if rows else None


def start_with_first_chunk(registry: RegistryUnderTest, repo: str, data: bytes) -> str:
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    first = registry.http.patch(
        start.headers["Location"],
        content=data,
        headers={"Content-Range": f"0-{len(data) - 1}"},
    )
    assert first.status_code == 202, first.text
    return str(first.headers["Location"])


def test_a_chunk_sent_while_another_is_being_written_is_416_with_the_acknowledged_range(
    registry: RegistryUnderTest, repo: str
) -> None:
    head, winner, loser = os.urandom(10), os.urandom(100), os.urandom(100)
    location = start_with_first_chunk(registry, repo, head)
    upload_uuid = location.rsplit("/", 1)[1]
    with chunk_in_flight(registry, location, 10, winner) as sock:
        eventually(lambda: writer_of(registry, upload_uuid) is not None, what="the lease taken")
        refused = registry.http.patch(location, content=loser, headers={"Content-Range": "10-109"})
        assert refused.status_code == 416, refused.text
        assert error_codes(refused) == ["BLOB_UPLOAD_INVALID"]
        assert refused.headers["Range"] == "0-9"
        closing = registry.http.put(location, params={"digest": sha256(head + loser)})
        assert closing.status_code == 416, closing.text  # the closing PUT waits its turn too
        sock.sendall(winner[50:])
        status, answer = answer_status(sock)
        assert status == 202, answer
        assert "Range: 0-109" in answer or "range: 0-109" in answer
    assert writer_of(registry, upload_uuid) is None  # free again
    done = registry.http.put(location, params={"digest": sha256(head + winner)})
    assert done.status_code == 201, done.text
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(head + winner)}").content == head + winner


def test_a_cancelled_upload_refuses_the_chunk_that_was_being_written(
    registry: RegistryUnderTest, repo: str
) -> None:
    head, chunk = os.urandom(10), os.urandom(100)
    location = start_with_first_chunk(registry, repo, head)
    upload_uuid = location.rsplit("/", 1)[1]
    with chunk_in_flight(registry, location, 10, chunk) as sock:
        eventually(lambda: writer_of(registry, upload_uuid) is not None, what="the lease taken")
        assert registry.http.delete(location).status_code == 204
        sock.sendall(chunk[50:])
        status, answer = answer_status(sock)
        assert status == 404, answer
    assert registry.http.get(location).status_code == 404
    assert registry.query("SELECT uuid FROM uploads WHERE uuid = :u", u=upload_uuid) == []
    eventually(
        lambda: not any(upload_uuid in key for key in registry.stored_files()),
        what="the cancelled upload's data deleted",
    )


def test_a_single_post_cut_by_its_client_leaves_no_upload_behind(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = os.urandom(1000)
    host, port = registry.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST /v2/{repo}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\n"
                f"Host: {registry.host}\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data[:100]
        )
        eventually(
            lambda: bool(registry.query("SELECT uuid FROM uploads WHERE repository = :r", r=repo)),
            what="the upload started",
        )
    eventually(
        lambda: not registry.query("SELECT uuid FROM uploads WHERE repository = :r", r=repo),
        what="the upload ended with its request",
    )
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_an_upload_whose_writer_died_is_free_again_once_the_lease_expires(
    backend: str, tmp_path: Path
) -> None:
    lease = 9.0  # renewed every 3 s: it runs out between 6 and 9 s after the writer died
    with isolated_registry(backend, tmp_path, upload_lease_seconds=str(int(lease))) as registry:
        repo = "test/writer-died"
        head, lost, chunk = os.urandom(10), os.urandom(100), os.urandom(100)
        location = start_with_first_chunk(registry, repo, head)
        upload_uuid = location.rsplit("/", 1)[1]
        with chunk_in_flight(registry, location, 10, lost):
            eventually(lambda: writer_of(registry, upload_uuid) is not None, what="lease taken")
            registry.kill("blob-service")
            died = time.monotonic()
        registry.restart("blob-service")
        sent = time.monotonic()
        held = registry.http.patch(location, content=chunk, headers={"Content-Range": "10-109"})
        if sent + uploads.BUSY_WAIT_SECONDS < died + lease * 2 / 3:  # surely not expired yet
            assert held.status_code == 416, held.text
            assert held.headers["Range"] == "0-9"
        time.sleep(max(0.0, died + lease + 0.5 - time.monotonic()))
        taken = registry.http.patch(location, content=chunk, headers={"Content-Range": "10-109"})
        assert taken.status_code == 202, taken.text
        assert taken.headers["Range"] == "0-109"
        done = registry.http.put(location, params={"digest": sha256(head + chunk)})
        assert done.status_code == 201, done.text
        blob = registry.http.get(f"/v2/{repo}/blobs/{sha256(head + chunk)}")
        assert blob.content == head + chunk
