"""The policies file (``REGISTRY_POLICIES_FILE``). Immutable tags: a tag a rule matches never
moves to other bits and is never deleted once pushed, through the API or skopeo; pushing the
same manifest again is fine; a change of the file takes effect without a restart. Quotas: the
push that would take a repository past its storage or tag limit is refused, concurrent pushes
never take it past, and deletes make room."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import running_registry
from tests.images import single_image
from tests.registry import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryUnderTest,
    error_codes,
    eventually,
    sha256,
)
from tests.test_auth import make_skopeo
from tests.test_client_skopeo import SkopeoFailed
from tests.webhooks import Receiver

RULES = {
    "immutable_tags": [
        {"repositories": ["prod/*"], "tags": ["v*"]},
        {"repositories": ["*"], "regex": r"^\d+\.\d+\.\d+$"},
    ],
    "quotas": [
        {"repositories": ["quota/*"], "storage": 4000, "tags": 3},
        {"repositories": ["burst/*"], "storage": "4 KB"},
    ],
}
PUSHES = 24  # at once, in the quota test
CONFIG = b'{"architecture":"amd64","os":"linux"}'  # what _other_manifest pushes as its config


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    root = tmp_path_factory.mktemp(f"policies-{request.param}")
    policies = root / "policies.yaml"
    policies.write_text(json.dumps(RULES))
    with running_registry(request.param, root, policies_file=str(policies)) as running:
        yield running


def policies_file(registry: RegistryUnderTest) -> Path:
    return Path(registry.settings.policies_file)


def test_an_immutable_tag_is_never_moved_but_takes_the_same_manifest_again(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"prod/{repo}"
    first, first_digest = registry.push_image(name, "v1", layers=[b"first"])
    refused = registry.push_manifest(name, "v1", other_manifest(registry, name, b"second"))
    assert refused.status_code == 403
    assert error_codes(refused) == ["DENIED"]
    message = refused.json()["errors"][0]["detail"]
    assert "immutable" in message and "v1" in message and "prod/*" in message
    # Nothing of the refused push is stored: neither the tag's move nor the new manifest.
    current = registry.http.get(f"/v2/{name}/manifests/v1", headers={"Accept": "*/*"})
    assert current.headers["Docker-Content-Digest"] == first_digest
    refused_digest = sha256(refused.request.content)
    assert registry.http.head(f"/v2/{name}/manifests/{refused_digest}").status_code == 404
    # The same manifest again: accepted.
    again = registry.push_manifest(name, "v1", first)
    assert again.status_code == 201
    # Tags no rule matches move freely, in the same repository.
    assert registry.push_manifest(name, "latest", first).status_code == 201
    moved = registry.push_manifest(name, "latest", other_manifest(registry, name, b"third"))
    assert moved.status_code == 201
    # The regular-expression rule holds in every repository; its near misses do not.
    elsewhere = other_manifest(registry, repo, b"elsewhere")
    registry.push_image(repo, "1.2.3", layers=[b"semver"])
    assert registry.push_manifest(repo, "1.2.3", elsewhere).status_code == 403
    registry.push_image(repo, "1.2.3-rc1", layers=[b"rc"])
    assert registry.push_manifest(repo, "1.2.3-rc1", elsewhere).status_code == 201


def test_an_immutable_tag_and_its_manifest_are_never_deleted(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"prod/{repo}"
    _, digest = registry.push_image(name, "v2", layers=[b"kept"])
    registry.push_manifest(name, "also", registry.http.get(f"/v2/{name}/manifests/v2").content)
    for reference in ("v2", digest):
        refused = registry.http.delete(f"/v2/{name}/manifests/{reference}")
        assert refused.status_code == 403, reference
        assert error_codes(refused) == ["DENIED"]
    # Its other, mutable tag may go; the manifest stays, under v2.
    assert registry.http.delete(f"/v2/{name}/manifests/also").status_code == 202
    assert registry.http.get(f"/v2/{name}/tags/list").json()["tags"] == ["v2"]
    assert registry.http.head(f"/v2/{name}/manifests/{digest}").status_code == 200


def test_a_manifest_of_an_index_an_immutable_tag_names_is_never_deleted(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"prod/{repo}"
    amd, amd_digest = registry.push_image(name, "amd64-build", layers=[b"amd64"])
    arm, arm_digest = registry.push_image(name, "arm64-build", layers=[b"arm64"])
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body), "platform": platform}
            for body, digest, platform in (
                (amd, amd_digest, {"architecture": "amd64", "os": "linux"}),
                (arm, arm_digest, {"architecture": "arm64", "os": "linux"}),
            )
        ],
    }
    assert registry.push_manifest(name, "v4", index, OCI_INDEX).status_code == 201
    refused = registry.http.delete(f"/v2/{name}/manifests/{arm_digest}")
    assert refused.status_code == 403
    assert error_codes(refused) == ["DENIED"]
    assert "v4" in refused.json()["errors"][0]["detail"]
    assert registry.http.head(f"/v2/{name}/manifests/{arm_digest}").status_code == 200
    # An index no immutable tag names lets its manifests go.
    assert registry.push_manifest(name, "latest", index, OCI_INDEX).status_code == 201
    other = f"{repo}-mutable"
    _, mutable_digest = registry.push_image(other, "x", layers=[b"mutable"])
    loose = {**index, "manifests": [{**index["manifests"][0], "digest": mutable_digest}]}
    loose["manifests"][0]["size"] = len(
        registry.http.get(f"/v2/{other}/manifests/x", headers={"Accept": "*/*"}).content
    )
    assert registry.push_manifest(other, "multi", loose, OCI_INDEX).status_code == 201
    assert registry.http.delete(f"/v2/{other}/manifests/{mutable_digest}").status_code == 202


def test_skopeo_cannot_overwrite_an_immutable_tag(
    registry: RegistryUnderTest, repo: str, tmp_path: Path
) -> None:
    skopeo = make_skopeo(tmp_path / "skopeo")
    target = f"docker://{registry.host}/prod/{repo}:v3"
    pushed, _ = skopeo.push(single_image(tmp_path / "one", layer_count=1), target)
    with pytest.raises(SkopeoFailed, match=r"(?i)denied"):
        skopeo.push(single_image(tmp_path / "two", layer_count=1), target)
    current = registry.http.head(
        f"/v2/prod/{repo}/manifests/v3",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert current.headers["Docker-Content-Digest"] == pushed


def test_a_change_of_the_policies_file_takes_effect_without_a_restart(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"prod/{repo}"
    before, _ = registry.push_image(name, "v9", layers=[b"before"])
    other = other_manifest(registry, name, b"after")
    assert registry.push_manifest(name, "v9", other).status_code == 403
    path = policies_file(registry)
    path.write_text(json.dumps({"immutable_tags": []}))
    try:
        eventually(
            lambda: registry.push_manifest(name, "v9", other).status_code == 201,
            timeout=10,
            what="the rule lifted",
        )
    finally:
        path.write_text(json.dumps(RULES))
    probes = iter(range(1000))

    def refused_again() -> bool:
        tag = f"v-probe-{next(probes)}"  # a fresh tag each time: a probe moves nothing kept
        assert registry.push_manifest(name, tag, before).status_code == 201
        return registry.push_manifest(name, tag, other).status_code == 403

    eventually(refused_again, timeout=10, what="the rule back")


# --- quotas -----------------------------------------------------------------------------------


def test_a_push_past_the_storage_quota_is_refused_and_shared_blobs_count_once(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"quota/{repo}"
    first = other_manifest(registry, name, b"a" * 1500)
    assert registry.push_manifest(name, "one", first).status_code == 201
    # The same blobs under another manifest add nothing: accepted.
    same_blobs = other_manifest(registry, name, b"a" * 1500, note="again")
    assert registry.push_manifest(name, "two", same_blobs).status_code == 201
    # A new 3,000-byte layer would take it to 4,537 bytes (config 37, 1,500, 3,000).
    big = other_manifest(registry, name, b"b" * 3000)
    refused = registry.push_manifest(name, sha256(big), big)
    assert refused.status_code == 403 and error_codes(refused) == ["DENIED"]
    detail = refused.json()["errors"][0]["detail"]
    assert "quota" in detail and "storage would be 4537 bytes (now 1537)" in detail
    assert registry.http.head(f"/v2/{name}/manifests/{sha256(big)}").status_code == 404
    # Room made by deleting what held the first layer: the big one goes in.
    for tag in ("one", "two"):
        assert registry.http.delete(f"/v2/{name}/manifests/{tag}").status_code == 202
    for manifest in (first, same_blobs):
        assert registry.http.delete(f"/v2/{name}/manifests/{sha256(manifest)}").status_code == 202
    assert registry.push_manifest(name, sha256(big), big).status_code == 201


def test_a_new_tag_past_the_tag_quota_is_refused_a_moved_one_is_not(
    registry: RegistryUnderTest, repo: str
) -> None:
    name = f"quota/{repo}"
    manifest = other_manifest(registry, name, b"tags")
    other = other_manifest(registry, name, b"tags", note="other")
    for tag in ("t1", "t2", "t3"):
        assert registry.push_manifest(name, tag, manifest).status_code == 201
    refused = registry.push_manifest(name, "t4", manifest)
    assert refused.status_code == 403 and "tags would be 4 (now 3)" in refused.text
    assert registry.push_manifest(name, "t3", other).status_code == 201  # moved: no new tag
    assert registry.push_manifest(name, "t3", other).status_code == 201  # again: nothing new


def test_concurrent_pushes_never_take_a_repository_past_its_quota(
    registry: RegistryUnderTest, repo: str
) -> None:
    """Pushes at once, each adding a 1,000-byte layer to a 4,000-byte quota (the config, 37
    bytes, shared): exactly three fit, whatever the order."""
    name = f"burst/{repo}"
    manifests = [other_manifest(registry, name, bytes([i]) * 1000) for i in range(PUSHES)]
    with ThreadPoolExecutor(PUSHES) as pool:
        answers = list(
            pool.map(
                lambda item: (
                    httpx.put(
                        f"{registry.url}/v2/{name}/manifests/m{item[0]}",
                        content=item[1],
                        headers={"Content-Type": OCI_MANIFEST},
                        timeout=60,
                    ).status_code
                ),
                enumerate(manifests),
            )
        )
    assert sorted(answers) == [201] * 3 + [403] * (PUSHES - 3), answers
    listed = registry.admin("quota")
    assert f"{name}: storage 3037 of 4000 bytes, tags 3" in listed.stdout, listed.stdout
    # The janitor's metrics say the same, read from the database at each scrape.
    port = registry.settings.janitor_metrics_port
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for line in (
        f'registry_quota_storage_bytes{{repository="{name}"}} 3037.0',
        f'registry_quota_storage_limit_bytes{{repository="{name}"}} 4000.0',
        f'registry_quota_tags{{repository="{name}"}} 3.0',
    ):
        assert line in scraped, line


def test_registry_admin_lists_the_rules(registry: RegistryUnderTest) -> None:
    listed = registry.admin("policies")
    assert listed.returncode == 0, listed.stderr
    assert "tags v* of prod/*" in listed.stdout
    assert "quota: storage 3.9KiB, 3 tags for each of quota/*" in listed.stdout
    assert "/^\\d+\\.\\d+\\.\\d+$/" in listed.stdout


def other_manifest(
    registry: RegistryUnderTest, repo: str, layer: bytes, note: str | None = None
) -> bytes:
    """A manifest not stored yet, whose blobs (a config and ``layer``) are in ``repo``;
    ``note`` (an annotation) makes one of the same blobs distinct."""
    config = CONFIG
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": registry.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": OCI_LAYER, "digest": registry.push_blob(repo, layer), "size": len(layer)}
        ],
    }
    if note is not None:
        manifest["annotations"] = {"org.example.note": note}
    return json.dumps(manifest).encode()


def test_refusals_are_announced_as_deny_events(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An endpoint that lists ``deny`` is told of each refusal: the repository, the tag, why,
    and the refused request's id."""
    root = tmp_path_factory.mktemp("policies-events")
    (root / "policies.yaml").write_text(json.dumps(RULES))
    receiver = Receiver().start()
    endpoint = {"name": "audit", "url": receiver.url("/audit"), "actions": ["deny"]}
    (root / "notifications.yaml").write_text(json.dumps({"endpoints": [endpoint]}))
    try:
        with running_registry(
            "sqlite",
            root,
            policies_file=str(root / "policies.yaml"),
            notifications_file=str(root / "notifications.yaml"),
            notifications_poll_seconds="0.5",
        ) as running:
            running.push_image("prod/app", "v1", layers=[b"announced"])
            moved = running.push_manifest(
                "prod/app", "v1", other_manifest(running, "prod/app", b"moved")
            )
            assert moved.status_code == 403
            deleted = running.http.delete("/v2/prod/app/manifests/v1")
            assert deleted.status_code == 403
            eventually(lambda: len(receiver.delivered("/audit")) >= 2, what="two deny events")
            events = [e for r in receiver.delivered("/audit") for e in r.events]
            assert [e["action"] for e in events] == ["deny", "deny"]
            for event, answer, verb in zip(
                events, (moved, deleted), ("moved", "deleted"), strict=True
            ):
                assert event["target"]["repository"] == "prod/app"
                assert event["target"]["tag"] == "v1"
                assert "immutable" in event["reason"] and verb in event["reason"]
                assert event["request"]["id"] == answer.headers["X-Request-Id"]
    finally:
        receiver.stop()
