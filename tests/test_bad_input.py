"""Bad input of every shape gets the spec's error (right status, right code), never a 500 or a
stack trace, and never changes what is stored."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from tests.registry import RegistryUnderTest, error_codes, sha256


def raw_request(
    registry: RegistryUnderTest, request: bytes, *, close_after_send: bool = False
) -> bytes:
    """Send bytes exactly as given (httpx would normalise paths and lengths) and read the answer."""
    host, port = registry.host.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # The server may answer and close before it has read all of it: read the answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_spec_error(answer: bytes, status: int, code: str) -> None:
    got_status, headers, body = parse(answer)
    assert got_status == status, answer[:300]
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert json.loads(body)["errors"][0]["code"] == code
    assert b"Traceback" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../etc/passwd",
        "/v2/foo/../bar/tags/list",
        "/v2/foo/./bar/tags/list",
        "/v2/foo/%2e%2e/bar/tags/list",
        "/v2/foo/%2E%2E/bar/manifests/latest",
        "/v2/foo%2f..%2fbar/tags/list",
        "/v2//foo/tags/list",
        "/v2/foo//bar/tags/list",
        "/v2/foo\\bar/tags/list",
        "/v2/foo/..%5cbar/tags/list",
    ],
)
def test_path_traversal_is_400_name_invalid_never_a_redirect(
    registry: RegistryUnderTest, path: str
) -> None:
    answer = raw_request(
        registry, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert_spec_error(answer, 400, "NAME_INVALID")


@pytest.mark.parametrize(
    "name", ["Upper", "a" * 256, "-lead", "trail-", "a__b__", "a...b", "x/", "a/_b"]
)
def test_invalid_repository_names_are_400_name_invalid(
    registry: RegistryUnderTest, name: str
) -> None:
    for method, path in (
        ("GET", "tags/list"),
        ("POST", "blobs/uploads/"),
        ("GET", "manifests/latest"),
    ):
        response = registry.http.request(method, f"/v2/{name}/{path}")
        assert response.status_code == 400, (method, path)
        assert error_codes(response) == ["NAME_INVALID"]


def test_oversized_headers_are_431(registry: RegistryUnderTest) -> None:
    answer = raw_request(
        registry,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * 100_000
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert_spec_error(answer, 431, "HEADERS_TOO_LARGE")
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    answer = raw_request(
        registry, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n"
    )
    assert_spec_error(answer, 431, "HEADERS_TOO_LARGE")


def test_a_long_request_target_under_the_limit_reaches_the_routes(
    registry: RegistryUnderTest,
) -> None:
    answer = raw_request(
        registry,
        b"GET /v2/"
        + b"a" * 10_000
        + b"/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert_spec_error(answer, 400, "NAME_INVALID")


@pytest.mark.parametrize("length", [20_000, 70_000, 1_000_000])
def test_over_long_request_targets_are_414_in_the_spec_format(
    registry: RegistryUnderTest, length: int
) -> None:
    # Beyond 64 KiB uvicorn's own URL parser fails and would answer 400 in plain text.
    for target in (b"/v2/" + b"a" * length + b"/tags/list", b"/v2/_catalog?last=" + b"a" * length):
        answer = raw_request(
            registry, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert_spec_error(answer, 414, "URI_TOO_LONG")


@pytest.mark.parametrize(
    "target",
    [
        "/v2/ü/tags/list".encode(),
        b"/v2/a/\xff/tags/list",
        "/v2/a/manifests/ü".encode(),
        "/v2/_catalog?n=²".encode(),
        b"/v2/\x00/tags/list",
    ],
)
def test_raw_bytes_the_http_parser_refuses_get_400_in_the_spec_format(
    registry: RegistryUnderTest, target: bytes
) -> None:
    answer = raw_request(
        registry, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert_spec_error(answer, 400, "UNSUPPORTED")
    assert b"percent-encode" in answer


def test_a_malformed_request_gets_400_in_the_spec_format(registry: RegistryUnderTest) -> None:
    answer = raw_request(registry, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert_spec_error(answer, 400, "UNSUPPORTED")


@pytest.mark.parametrize(
    ("length", "body"),
    [
        ("\u00b2".encode(), b"x"),  # a digit to str.isdigit(), not to int()
        (b"1e3", b"x"),
        (b"-1", b"x"),
        (b"9" * 40, b"x"),
        (b"17000", b"a=" + b"b" * 16998),  # a form over 16 KiB
    ],
)
def test_form_posts_with_bad_or_large_lengths_are_refused(
    registry: RegistryUnderTest, length: bytes, body: bytes
) -> None:
    """The web interface's forms are read by the gateway itself: a Content-Length it cannot
    use is refused (by the HTTP parser or by the form's reader), never a 500."""
    answer = raw_request(
        registry,
        b"POST /ui/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: " + length + b"\r\nConnection: close\r\n\r\n" + body,
    )
    status, _, text = parse(answer)
    assert status in (400, 403), answer[:300]
    assert b"Traceback" not in text


def test_body_larger_than_declared_is_cut_at_the_declared_length(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = b"0123456789"
    request = (
        f"POST /v2/{repo}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 5\r\nConnection: close\r\n\r\n"
    ).encode() + data
    assert_spec_error(raw_request(registry, request), 400, "DIGEST_INVALID")
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(data[:5])}").status_code == 404


def test_body_shorter_than_declared_keeps_nothing(registry: RegistryUnderTest, repo: str) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.patch(location, content=b"a" * 100).status_code == 202
    request = (
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    ).encode() + b"b" * 400
    raw_request(registry, request, close_after_send=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the services notice the closed connection soon after
        status = registry.http.get(location)
        if status.headers["Range"] == "0-99" and _upload_file_size(registry, location) == 100:
            break
        time.sleep(0.2)
    assert status.headers["Range"] == "0-99"
    assert _upload_file_size(registry, location) == 100
    data = b"a" * 100 + b"c" * 10
    assert (
        registry.http.patch(
            location, content=b"c" * 10, headers={"Content-Range": "100-109"}
        ).status_code
        == 202
    )
    assert registry.http.put(location, params={"digest": sha256(data)}).status_code == 201
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def _upload_file_size(registry: RegistryUnderTest, location: str) -> int:
    path = registry.storage_root / "uploads" / location.rsplit("/", 1)[1] / "data"
    return path.stat().st_size


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-1", "items=0-1", "bytes=0-1,5-6"])
def test_ranges_the_server_does_not_serve_give_the_whole_blob(
    registry: RegistryUnderTest, repo: str, header: str
) -> None:
    digest = registry.push_blob(repo, b"0123456789")
    response = registry.http.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 200
    assert response.content == b"0123456789"


@pytest.mark.parametrize("content_range", ["abc", "5-1", "-5", "0-", "0-9999999999999999999999999"])
def test_malformed_content_range_is_refused_and_keeps_the_upload(
    registry: RegistryUnderTest, repo: str, content_range: str
) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.patch(location, content=b"x" * 10).status_code == 202
    response = registry.http.patch(
        location, content=b"y" * 5, headers={"Content-Range": content_range}
    )
    assert response.status_code in (400, 416)
    assert response.json()["errors"][0]["code"] in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID")
    assert registry.http.get(location).headers["Range"] == "0-9"


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256:",
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 65,
        "sha384:" + "a" * 96,
        "sha256:" + "g" * 64,
        "sha256:../../x",
    ],
)
def test_malformed_digests_on_upload_are_400(
    registry: RegistryUnderTest, repo: str, digest: str
) -> None:
    response = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=b"data"
    )
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_unknown_upload_uuid_is_404(registry: RegistryUnderTest, repo: str) -> None:
    for upload in ("no-such-upload", "00000000-0000-0000-0000-000000000000", "x" * 300):
        response = registry.http.get(f"/v2/{repo}/blobs/uploads/{upload}")
        assert response.status_code == 404
        assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_refused_manifest_changes_nothing(registry: RegistryUnderTest, repo: str) -> None:
    body, digest = registry.push_image(repo, "v1")
    for bad in (
        b"",
        b"null",
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
    ):
        response = registry.push_manifest(repo, "v1", bad)
        assert response.status_code == 400
    assert registry.http.get(f"/v2/{repo}/manifests/v1").content == body
    assert registry.http.head(f"/v2/{repo}/manifests/v1").headers["Docker-Content-Digest"] == digest


def test_deeply_nested_manifest_is_manifest_invalid(registry: RegistryUnderTest, repo: str) -> None:
    response = registry.push_manifest(repo, "deep", b"[" * 100_000)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]


def test_range_positions_of_thousands_of_digits(registry: RegistryUnderTest, repo: str) -> None:
    digest = registry.push_blob(repo, b"0123456789")
    whole = registry.http.get(
        f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-" + "9" * 3000}
    )
    assert whole.status_code == 206
    assert whole.content == b"0123456789"
    beyond = registry.http.get(
        f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=" + "9" * 3000 + "-"}
    )
    assert beyond.status_code == 416
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    chunk = registry.http.patch(
        location, content=b"x", headers={"Content-Range": "1" * 3000 + "-" + "2" * 3000}
    )
    assert chunk.status_code == 416


def test_no_request_logged_an_unhandled_error(registry: RegistryUnderTest) -> None:
    """Runs last in this module: none of the bad requests above reached the 500 handler."""
    for service in ("api-gateway", "blob-service", "manifest-service"):
        assert "unhandled error" not in registry.log(service), service
