"""Pulling and deleting blobs (OCI Distribution Spec, "Pulling blobs", "Deleting blobs"), with
the HTTP caching and range headers a registry's clients rely on."""

from __future__ import annotations

import os

import pytest

from tests.registry import RegistryUnderTest, error_codes, sha256

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
