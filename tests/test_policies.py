"""Immutable tags (``REGISTRY_POLICIES_FILE``): a tag a rule matches never moves to other bits
and is never deleted once pushed, through the API, skopeo or the web interface; pushing the
same manifest again is fine; a change of the file takes effect without a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import running_registry
from tests.images import single_image
from tests.registry import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryUnderTest,
    error_codes,
    eventually,
    sha256,
)
from tests.test_auth import make_skopeo
from tests.test_client_skopeo import SkopeoFailed

RULES = {
    "immutable_tags": [
        {"repositories": ["prod/*"], "tags": ["v*"]},
        {"repositories": ["*"], "regex": r"^\d+\.\d+\.\d+$"},
    ]
}


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
    refused = registry.push_manifest(name, "v1", _other_manifest(registry, name, b"second"))
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
    moved = registry.push_manifest(name, "latest", _other_manifest(registry, name, b"third"))
    assert moved.status_code == 201
    # The regular-expression rule holds in every repository; its near misses do not.
    elsewhere = _other_manifest(registry, repo, b"elsewhere")
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
    other = _other_manifest(registry, name, b"after")
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


def test_registry_admin_lists_the_rules(registry: RegistryUnderTest) -> None:
    listed = registry.admin("policies")
    assert listed.returncode == 0, listed.stderr
    assert "tags v* of prod/*" in listed.stdout
    assert "/^\\d+\\.\\d+\\.\\d+$/" in listed.stdout


def _other_manifest(registry: RegistryUnderTest, repo: str, layer: bytes) -> bytes:
    """A manifest not stored yet, whose blobs (a config and ``layer``) are in ``repo``."""
    config = b'{"architecture":"amd64","os":"linux"}'
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
    return json.dumps(manifest).encode()
