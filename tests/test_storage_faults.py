"""The registry with its storage on OSS (the test server of ``tests/oss_server.py``) when OSS
fails: the client is answered 503 ``UNAVAILABLE`` with ``Retry-After``, nothing is recorded, and
sending the request again works; the janitor's moves are retried until OSS answers; a download
that breaks midway is resumed by the driver, unseen by the client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from shared.reference import parse_digest
from shared.storage import keys
from shared.storage.oss import logical_key
from tests.conftest import running_registry
from tests.oss_server import OssTestServer
from tests.registry import RegistryUnderTest, error_codes, eventually, sha256


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    """A registry of this module's own on OSS: its faults touch no other test."""
    root = tmp_path_factory.mktemp("oss-faults")
    with running_registry("oss", root, promote_delay_seconds="0") as running:
        yield running


@pytest.fixture
def oss(registry: RegistryUnderTest) -> Iterator[OssTestServer]:
    assert registry.oss is not None
    registry.oss.clear_faults()
    yield registry.oss
    registry.oss.clear_faults()


def final_key(digest: str) -> str:
    return keys.blob_key(parse_digest(digest))


def stored(server: OssTestServer) -> set[str]:
    return {logical_key(k).removeprefix("storage/") for k in server.object_keys("registry")}


def test_a_chunk_oss_drops_is_answered_503_and_sent_again(
    registry: RegistryUnderTest, oss: OssTestServer, repo: str
) -> None:
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/")
    location, upload = start.headers["Location"], start.headers["Docker-Upload-UUID"]
    first, second = os.urandom(1000), os.urandom(200_000)
    patched = registry.http.patch(location, content=first, headers={"Content-Range": "0-999"})
    assert patched.status_code == 202
    # OSS drops the connection while the chunk streams to it.
    fault = oss.fail_next("PutObject", mode="drop", after_bytes=50_000, key=upload)
    headers = {"Content-Range": f"1000-{1000 + len(second) - 1}"}
    answer = registry.http.patch(location, content=second, headers=headers)
    assert fault.hits == 1
    assert answer.status_code == 503, answer.text
    assert error_codes(answer) == ["UNAVAILABLE"]
    assert answer.headers["Retry-After"] == "1"
    assert registry.http.get(location).headers["Range"] == "0-999"
    # The client sends the chunk again.
    assert registry.http.patch(location, content=second, headers=headers).status_code == 202
    data = first + second
    done = registry.http.put(location, params={"digest": sha256(data)})
    assert done.status_code == 201, done.text
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_a_monolithic_upload_while_oss_is_down_is_answered_503(
    registry: RegistryUnderTest, oss: OssTestServer, repo: str
) -> None:
    data = os.urandom(5000)
    oss.fail_next("ListObjectsV2", count=1000, status=503, code="ServiceUnavailable")
    answer = registry.http.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data
    )
    assert answer.status_code == 503, answer.text
    assert error_codes(answer) == ["UNAVAILABLE"]
    assert registry.http.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
    oss.clear_faults()
    assert registry.push_blob(repo, data) == sha256(data)
    assert registry.http.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data


def test_the_janitor_retries_a_move_until_oss_answers(
    registry: RegistryUnderTest, oss: OssTestServer, repo: str
) -> None:
    """CopyObject fails more often than the driver retries: the janitor's task fails, and
    Celery runs it again later. Meanwhile the blob is read from its upload's object."""
    data = os.urandom(3000)
    failing = oss.fail_next("CopyObject", count=7)
    digest = registry.push_blob(repo, data)
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data
    eventually(lambda: failing.hits == 7, timeout=60, what="the copies failing")

    def promoted() -> bool:
        rows = registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
        return bool(rows) and rows[0][0] == final_key(digest)

    eventually(promoted, timeout=90, what="the blob moved once OSS answered")
    eventually(lambda: final_key(digest) in stored(oss), what="the blob's object")
    eventually(registry.storage_matches_database, what="the upload's object discarded")
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data


def test_a_download_oss_cuts_midway_is_resumed(
    registry: RegistryUnderTest, oss: OssTestServer, repo: str
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = registry.push_blob(repo, data)
    eventually(
        lambda: (
            registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)[0][0]
            == final_key(digest)
        ),
        what="the blob moved",
    )
    cut = oss.fail_next("GetObject", count=2, mode="drop_body", after_bytes=1_500_000)
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}").content == data
    assert cut.hits == 2
    ranged = registry.http.get(
        f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1000000-2999999"}
    )
    assert ranged.status_code == 206 and ranged.content == data[1_000_000:3_000_000]


def test_pushes_go_on_while_the_janitor_waits_for_a_stalled_move(
    tmp_path_factory: pytest.TempPathFactory, repo: str
) -> None:
    """The janitor's moves hold no database lock: while OSS takes longer than the database's
    lock timeout to answer a move, other pushes (and a push of the very blob being moved) are
    answered as usual, never 503."""
    root = tmp_path_factory.mktemp("oss-stall")
    with running_registry(
        "oss", root, promote_delay_seconds="0", database_lock_timeout_seconds="2"
    ) as stalled:
        assert stalled.oss is not None
        stall = stalled.oss.fail_next("CopyObject", mode="slow", delay=8)
        data = os.urandom(5000)
        digest = stalled.push_blob(repo, data)
        eventually(lambda: stall.hits == 1, what="the janitor's move stalled")
        started = time.monotonic()
        pushed = 0
        while time.monotonic() - started < 6:  # well past the lock timeout, within the stall
            stalled.push_image(f"{repo}-{pushed}", "v1", [os.urandom(2000), os.urandom(3000)])
            assert stalled.push_blob(f"{repo}-same-{pushed}", data) == digest
            pushed += 1
        assert pushed >= 3
        eventually(
            lambda: (
                stalled.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
                == [(final_key(digest),)]
            ),
            what="the stalled move recorded",
        )
        assert stalled.http.get(f"/v2/{repo}/blobs/{digest}").content == data
        eventually(stalled.storage_matches_database, what="the uploads' objects discarded")
