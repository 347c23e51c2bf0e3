"""Manifests and tag lists kept in the manifest service's memory (``shared.read_cache``), on
MariaDB with Redis as the broker: kept while nothing changed (counted as hits), read again
after every change (a new tag, a moved tag, a deleted tag, a manifest deleted by digest), and
read from the database, each change seen at once, while Redis is down. The same across two
replicas: tests/test_replicas.py."""

from __future__ import annotations

import time

import httpx
import pytest

from shared import read_cache
from tests.conftest import running_registry
from tests.registry import OCI_MANIFEST, RedisServer, RegistryUnderTest, sha256
from tests.test_operations import metric


def lookups(registry: RegistryUnderTest, kind: str, result: str) -> float:
    text = httpx.get(f"{registry.settings.service_url('manifest')}/metrics", timeout=10).text
    return metric(text, "registry_read_cache_total", kind=kind, result=result)


def test_reads_are_kept_and_follow_every_change_with_redis_down_or_up(
    tmp_path_factory: pytest.TempPathFactory, repo: str
) -> None:
    root = tmp_path_factory.mktemp("read-cache")
    with (
        RedisServer() as redis_server,
        running_registry("mariadb", root, broker_url=redis_server.url) as registry,
    ):
        one, _ = registry.push_image(repo, "one")
        other, _ = registry.push_image(repo, "other")

        def listed() -> list[str]:
            response = registry.http.get(f"/v2/{repo}/tags/list")
            assert response.status_code == 200, response.text
            names: list[str] = response.json()["tags"]
            return names

        def manifest(reference: str) -> bytes | int:
            response = registry.http.get(
                f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
            )
            return response.content if response.status_code == 200 else response.status_code

        def seen(tags: dict[str, bytes]) -> None:
            """The tag list, each tag's manifest, and each manifest by digest, twice."""
            for _ in range(2):
                assert listed() == sorted(tags)
                for tag, body in tags.items():
                    assert manifest(tag) == body, tag
                    assert manifest(sha256(body)) == body

        seen({"one": one, "other": other})
        hits = {kind: lookups(registry, kind, "hit") for kind in ("tags", "manifest")}
        seen({"one": one, "other": other})
        assert lookups(registry, "tags", "hit") == hits["tags"] + 2
        assert lookups(registry, "manifest", "hit") == hits["manifest"] + 8

        assert registry.push_manifest(repo, "two", one).status_code == 201
        seen({"one": one, "other": other, "two": one})
        assert registry.push_manifest(repo, "one", other).status_code == 201  # a move
        seen({"one": other, "other": other, "two": one})
        assert registry.http.delete(f"/v2/{repo}/manifests/two").status_code == 202
        assert manifest("two") == 404
        seen({"one": other, "other": other})
        assert registry.http.delete(f"/v2/{repo}/manifests/{sha256(other)}").status_code == 202
        assert manifest(sha256(other)) == 404
        assert manifest("one") == 404
        seen({})
        assert registry.push_manifest(repo, "three", one).status_code == 201
        seen({"three": one})

        redis_server.stop()
        unavailable = lookups(registry, "manifest", "unavailable")
        assert registry.push_manifest(repo, "four", other).status_code == 201
        seen({"three": one, "four": other})
        assert registry.push_manifest(repo, "three", other).status_code == 201
        seen({"three": other, "four": other})
        assert registry.http.delete(f"/v2/{repo}/manifests/three").status_code == 202
        seen({"four": other})
        assert lookups(registry, "manifest", "unavailable") > unavailable

        redis_server.start()
        time.sleep(read_cache.PAUSE_SECONDS)
        assert registry.push_manifest(repo, "five", one).status_code == 201
        seen({"five": one, "four": other})
        hits = {kind: lookups(registry, kind, "hit") for kind in ("tags", "manifest")}
        seen({"five": one, "four": other})
        assert lookups(registry, "tags", "hit") == hits["tags"] + 2
        assert lookups(registry, "manifest", "hit") == hits["manifest"] + 8
