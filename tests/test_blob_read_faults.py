"""A blob GET when the storage fails (OCI Distribution Spec, "Pulling blobs"): before the first
byte the client is answered 503 ``UNAVAILABLE`` with ``Retry-After`` and may simply ask again;
after it the connection is cut, so the client sees a broken transfer, never a complete-looking
200 with a short body. On the filesystem (which the gateway reads itself) and on OSS."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.reference import parse_digest
from shared.storage import keys
from tests.registry import RegistryUnderTest, error_codes, eventually

MiB = 1024 * 1024


@pytest.fixture
def stored(registry: RegistryUnderTest, repo: str) -> Iterator[tuple[str, bytes]]:
    """A blob of 64 MiB (more than the sockets between server and client hold), moved to its
    own key by the janitor."""
    data = os.urandom(64 * MiB)
    digest = registry.push_blob(repo, data)
    final = keys.blob_key(parse_digest(digest))
    eventually(
        lambda: (
            registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
            == [(final,)]
        ),
        what="the blob moved to its own key",
    )
    yield digest, data
    if registry.oss is not None:
        registry.oss.clear_faults()
    else:
        blob_file(registry, digest).write_bytes(data)  # as it was, for the tests after


def blob_file(registry: RegistryUnderTest, digest: str) -> Path:
    return registry.storage_root / keys.blob_key(parse_digest(digest))


def break_storage(registry: RegistryUnderTest, digest: str) -> None:
    """Make every read of the blob fail."""
    if registry.oss is not None:
        registry.oss.fail_next("GetObject", count=1000, key=digest.split(":")[1])
        return
    path = blob_file(registry, digest)
    path.rename(path.with_name("saved"))
    path.mkdir()  # reading a folder fails with EISDIR


def mend_storage(registry: RegistryUnderTest, digest: str) -> None:
    if registry.oss is not None:
        registry.oss.clear_faults()
        return
    path = blob_file(registry, digest)
    shutil.rmtree(path)
    path.with_name("saved").rename(path)


def cut_storage_midway(registry: RegistryUnderTest, digest: str, *, started: bool) -> None:
    """Make the bytes stop coming after the first few MiB: on OSS every download of the blob
    (set before the answer starts) breaks after 1 MiB; a file is cut to 8 MiB while it is
    being sent."""
    if registry.oss is not None and not started:
        registry.oss.fail_next(
            "GetObject", count=1000, mode="drop_body", after_bytes=MiB, key=digest.split(":")[1]
        )
    elif registry.oss is None and started:
        os.truncate(blob_file(registry, digest), 8 * MiB)


@pytest.mark.parametrize("registry", ["sqlite", "oss"], indirect=True)
def test_a_storage_failure_before_the_first_byte_is_503_and_the_retry_works(
    registry: RegistryUnderTest, repo: str, stored: tuple[str, bytes]
) -> None:
    digest, data = stored
    break_storage(registry, digest)
    answer = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert answer.status_code == 503, answer.text
    assert error_codes(answer) == ["UNAVAILABLE"]
    assert answer.headers["Retry-After"] == "1"
    ranged = registry.http.get(f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=10-20"})
    assert ranged.status_code == 503
    mend_storage(registry, digest)
    again = registry.http.get(f"/v2/{repo}/blobs/{digest}")
    assert again.status_code == 200 and again.content == data


@pytest.mark.parametrize("registry", ["sqlite", "oss"], indirect=True)
def test_a_storage_failure_after_the_first_byte_cuts_the_connection(
    registry: RegistryUnderTest, repo: str, stored: tuple[str, bytes]
) -> None:
    digest, data = stored
    received = bytearray()
    cut_storage_midway(registry, digest, started=False)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        registry.http.stream("GET", f"/v2/{repo}/blobs/{digest}") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["Content-Length"] == str(len(data))
        chunks = answer.iter_raw()
        received += next(chunks)  # the answer has started
        cut_storage_midway(registry, digest, started=True)
        for chunk in chunks:
            received += chunk
    assert 0 < len(received) < len(data)
    assert bytes(received) == data[: len(received)]
    # The gateway and the services go on serving.
    assert registry.http.get("/v2/").status_code == 200
