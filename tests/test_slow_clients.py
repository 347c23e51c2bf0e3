"""No client can hold the gateway from the others: a connection that sends nothing, headers
that trickle and a body that stalls are cut off with a clear answer; one address holds a
bounded number of connections; and slow uploads, however many, never take the connections
reads need. (Behaviour only: the figures under load are in the benchmark.)"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_registry
from tests.registry import RegistryUnderTest, eventually, sha256

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0
CAP = 8


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("slow-clients"),
        client_header_timeout_seconds=str(HEADER_TIMEOUT),
        client_body_timeout_seconds=str(BODY_TIMEOUT),
        max_connections_per_client=str(CAP),
        request_timeout_seconds="3",
    ) as registry:
        yield registry


def connect(registry: RegistryUnderTest, source: str = "127.0.0.1") -> socket.socket:
    host, port = registry.host.split(":")
    return socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    try:
        while part := sock.recv(65536):
            answer += part
    except (ConnectionResetError, TimeoutError):
        pass
    return answer


def status_and_code(answer: bytes) -> tuple[int, str | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    errors = json.loads(body).get("errors") if body else None
    return status, errors[0]["code"] if errors else None


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(
    gateway: RegistryUnderTest,
) -> None:
    with connect(gateway) as sock:
        started = time.monotonic()
        answer = read_answer(sock)
        waited = time.monotonic() - started
    assert status_and_code(answer) == (408, "REQUEST_TIMEOUT")
    assert HEADER_TIMEOUT - 0.5 < waited < HEADER_TIMEOUT + 5


def test_headers_that_trickle_are_cut_off_while_other_clients_are_served(
    gateway: RegistryUnderTest,
) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        for i in range(40):  # a header line every 0.2 s, never the blank line that ends them
            try:
                sock.sendall(b"X-Slow-%d: v\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            assert gateway.http.get("/v2/").status_code == 200  # the others are served
            time.sleep(0.2)
            sock.settimeout(0.01)
            try:
                if sock.recv(65536, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
        sock.settimeout(10)
        answer = read_answer(sock)
        waited = time.monotonic() - started
    assert closed or status_and_code(answer) == (408, "REQUEST_TIMEOUT")
    assert waited < HEADER_TIMEOUT + 5


def test_an_upload_whose_body_stalls_is_cut_off_and_undone(
    gateway: RegistryUnderTest, repo: str
) -> None:
    start = gateway.http.post(f"/v2/{repo}/blobs/uploads/")
    location = start.headers["Location"]
    first = gateway.http.patch(location, content=b"x" * 10, headers={"Content-Range": "0-9"})
    assert first.status_code == 202
    with connect(gateway) as sock:
        sock.sendall(
            (
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                "Content-Range: 10-109\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + b"y" * 40
        )
        started = time.monotonic()
        read_answer(sock)  # the gateway closes the connection; no 202 comes
        waited = time.monotonic() - started
    assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 10
    # The stalled chunk left nothing: the upload is where it was, and free for the retry.
    eventually(
        lambda: (
            gateway.http.get(location).headers.get("Range") == "0-9"
            and not gateway.query(
                "SELECT writer FROM uploads WHERE uuid = :u AND writer IS NOT NULL",
                u=location.rsplit("/", 1)[1],
            )
        ),
        timeout=15,
        what="the stalled chunk undone",
    )
    retry = gateway.http.patch(location, content=b"z" * 100, headers={"Content-Range": "10-109"})
    assert retry.status_code == 202, retry.text
    done = gateway.http.put(location, params={"digest": sha256(b"x" * 10 + b"z" * 100)})
    assert done.status_code == 201, done.text


def test_one_address_holds_a_bounded_number_of_connections(gateway: RegistryUnderTest) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(connect(gateway, "127.0.0.7")) for _ in range(CAP)]
        time.sleep(0.2)
        with connect(gateway, "127.0.0.7") as over:
            assert status_and_code(read_answer(over)) == (429, "TOOMANYREQUESTS")
        # Another address is not affected, and the held connections still work.
        with httpx.Client(
            base_url=gateway.url, transport=httpx.HTTPTransport(local_address="127.0.0.8")
        ) as other:
            assert other.get("/v2/").status_code == 200
        held[0].sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_and_code(read_answer(held[0]))[0] == 200
    time.sleep(0.2)
    with httpx.Client(
        base_url=gateway.url, transport=httpx.HTTPTransport(local_address="127.0.0.7")
    ) as again:
        assert again.get("/v2/").status_code == 200  # the closed ones count no more


def test_slow_uploads_never_take_the_connections_reads_need(
    tmp_path: Path,
) -> None:
    # More slow uploads than the gateway keeps connections to a service in one pool (512),
    # from many addresses, each under the cap; then a read from another client.
    with running_registry("sqlite", tmp_path, client_body_timeout_seconds="60") as registry:
        repo = "test/slow-uploads"
        manifest = registry.push_image(repo, "v1")[1]
        locations = [
            registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"] for _ in range(520)
        ]
        with ExitStack() as stack:
            for i, location in enumerate(locations):
                sock = stack.enter_context(connect(registry, f"127.0.{1 + i // 100}.{2 + i % 100}"))
                sock.sendall(
                    (
                        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                        "Content-Type: application/octet-stream\r\n\r\n"
                    ).encode()
                    + b"s"
                )
            eventually(
                lambda: (
                    len(registry.query("SELECT uuid FROM uploads WHERE writer IS NOT NULL")) >= 510
                ),
                timeout=60,
                what="the slow uploads under way",
            )
            read = registry.http.get(
                f"/v2/{repo}/manifests/v1",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                timeout=10,
            )
            assert read.status_code == 200, read.text
            assert read.headers["Docker-Content-Digest"] == manifest
