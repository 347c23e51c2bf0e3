"""With ``REGISTRY_OSS_REDIRECT`` on, blob downloads are redirected to time-limited signed OSS
URLs (as the reference registry's redirect option does), so large pulls leave the registry's
processes out; the client gets the same bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import running_registry
from tests.registry import RegistryUnderTest, eventually


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    root = tmp_path_factory.mktemp("oss-redirect")
    with running_registry("oss", root, oss_redirect="true", promote_delay_seconds="0") as running:
        yield running


def test_a_blob_get_is_redirected_to_a_signed_oss_url(
    registry: RegistryUnderTest, repo: str
) -> None:
    data = os.urandom(200_000)
    digest = registry.push_blob(repo, data)
    hex_digest = digest.split(":")[1]

    def promoted() -> bool:
        keys = registry.query("SELECT storage_key FROM blobs WHERE digest = :d", d=digest)
        return keys == [(f"blobs/sha256/{hex_digest[:2]}/{hex_digest}/data",)]

    eventually(promoted, what="the blob moved to its own key")
    answer = registry.http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=False)
    assert answer.status_code == 307
    location = answer.headers["Location"]
    assert "Signature=" in location and "Expires=" in location
    assert answer.headers["Docker-Content-Digest"] == digest
    assert httpx.get(location).content == data
    # A client that follows redirects, as registry clients do, gets the blob.
    assert registry.http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True).content == data
    # HEAD is still answered by the registry.
    assert registry.http.head(f"/v2/{repo}/blobs/{digest}").headers["Content-Length"] == str(
        len(data)
    )
