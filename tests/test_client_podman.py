"""The spec's push and pull workflows driven by podman: an OCI image layout (tests/images.py) is
pulled into podman's own storage, pushed to the registry, removed, and pulled back; a manifest
list is built with ``podman manifest`` and pushed with every image. podman stores layers
uncompressed and compresses them again to push, so a pushed layer's digest is podman's, not the
layout's: the tests assert on what podman really pushed, and that every layer still unpacks to
the ``diff_id`` in the config."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.images import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Layout,
    multi_arch_image,
    single_image,
)
from tests.podman import Podman, private_podman
from tests.registry import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, RegistryUnderTest, sha256

pytestmark = pytest.mark.client

REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT_ANY_MANIFEST = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture
def podman(registry: RegistryUnderTest, tmp_path: Path) -> Iterator[Podman]:
    with private_podman(tmp_path, [registry.host]) as podman:
        yield podman


# --- reading OCI image layouts and registry blobs --------------------------------------------


def tagged(layout: Layout, tag: str = "latest") -> dict[str, Any]:
    """The descriptor ``index.json`` names ``tag``."""
    index = json.loads((layout.path / "index.json").read_text())
    matches = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(matches) == 1, index
    return matches[0]  # type: ignore[no-any-return]


def layout_json(layout: Layout, digest: str) -> dict[str, Any]:
    return json.loads(layout.blobs[digest])  # type: ignore[no-any-return]


def layout_image(layout: Layout, manifest_digest: str) -> tuple[str, list[str]]:
    """The config digest and the ``diff_ids`` (uncompressed layer digests) of one image."""
    config_digest = layout_json(layout, manifest_digest)["config"]["digest"]
    return config_digest, layout_json(layout, config_digest)["rootfs"]["diff_ids"]


def registry_manifest(
    registry: RegistryUnderTest, repo: str, reference: str
) -> tuple[bytes, dict[str, Any]]:
    """The manifest ``reference`` names, checked against its Content-Type and digest."""
    response = registry.http.get(
        f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_ANY_MANIFEST}
    )
    assert response.status_code == 200, (reference, response.text)
    manifest = response.json()
    assert response.headers["Content-Type"] == manifest["mediaType"]
    assert response.headers["Docker-Content-Digest"] == sha256(response.content)
    return response.content, manifest


def registry_blob(registry: RegistryUnderTest, repo: str, descriptor: dict[str, Any]) -> bytes:
    response = registry.http.get(f"/v2/{repo}/blobs/{descriptor['digest']}")
    assert response.status_code == 200, (descriptor, response.text)
    assert response.headers["Docker-Content-Digest"] == descriptor["digest"]
    assert len(response.content) == descriptor["size"]
    assert sha256(response.content) == descriptor["digest"]
    return response.content


def assert_pushed_image(
    registry: RegistryUnderTest,
    repo: str,
    reference: str,
    image: Layout,
    config_digest: str,
    layer_type: str = OCI_LAYER,
) -> dict[str, Any]:
    """The registry holds the image podman pushed: its config, byte for byte the layout's, and
    layers that each unpack to the config's ``diff_id``. Returns the manifest."""
    _, manifest = registry_manifest(registry, repo, reference)
    assert manifest["config"]["digest"] == config_digest
    assert registry_blob(registry, repo, manifest["config"]) == image.blobs[config_digest]
    diff_ids = layout_json(image, config_digest)["rootfs"]["diff_ids"]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [layer_type] * len(diff_ids)
    unpacked = [
        sha256(gzip.decompress(registry_blob(registry, repo, layer)))
        for layer in manifest["layers"]
    ]
    assert unpacked == diff_ids
    return manifest


def mounted_blobs(debug_log: str, repo: str, source: str) -> set[str]:
    """The blobs podman asked the registry to mount into ``repo`` from ``source``."""
    found = re.findall(
        rf"POST \S+/v2/{repo}/blobs/uploads/\?from=(\S+?)&mount=(sha256%3A[0-9a-f]{{64}})",
        debug_log,
    )
    assert {unquote(origin) for origin, _ in found} <= {source}, found
    return {unquote(digest) for _, digest in found}


def uploaded_blobs(debug_log: str, repo: str) -> set[str]:
    """The blobs podman uploaded to ``repo`` (the digest of each upload's closing PUT)."""
    return {
        unquote(d)
        for d in re.findall(
            rf"PUT \S+/v2/{repo}/blobs/uploads/\S+\?digest=(sha256%3A[0-9a-f]{{64}})", debug_log
        )
    }


# --- the workflows ------------------------------------------------------------------------


def test_push_remove_and_pull_back_an_image(
    registry: RegistryUnderTest, repo: str, podman: Podman, tmp_path: Path
) -> None:
    """Pull a layout into podman, push it, remove every local image, pull it from the registry:
    podman sees the digest it pushed, the same image ID (the config digest) and layers."""
    image = single_image(tmp_path / "image")
    config_digest, diff_ids = layout_image(image, tagged(image)["digest"])
    assert len(diff_ids) == 3

    image_id = podman.pull(f"oci:{image.path}:latest")
    assert f"sha256:{image_id}" == config_digest
    podman.run("tag", image_id, "localhost/client-test:latest")

    remote = f"{registry.host}/{repo}"
    digest, _ = podman.push("localhost/client-test:latest", f"docker://{remote}:v1")
    body, manifest = registry_manifest(registry, repo, "v1")
    assert sha256(body) == digest
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    assert_pushed_image(registry, repo, digest, image, config_digest)
    tags = registry.http.get(f"/v2/{repo}/tags/list")
    assert tags.json() == {"name": repo, "tags": ["v1"]}

    podman.run("rmi", "--all", "--force")
    assert podman.images() == []

    assert podman.pull_remote(f"{remote}:v1") == image_id
    details = podman.inspect(f"{remote}:v1")
    assert details["Id"] == image_id
    assert details["Digest"] == digest
    assert details["RepoTags"] == [f"{remote}:v1"]
    assert details["RepoDigests"] == [f"{remote}@{digest}"]
    assert details["RootFS"]["Layers"] == diff_ids
    assert details["ManifestType"] == OCI_MANIFEST
    assert (details["Architecture"], details["Os"]) == ("amd64", "linux")
    assert details["Config"]["Cmd"] == ["/bin/sh"]
    [listed] = podman.images()
    assert listed["Digest"] == digest
    assert listed["Id"] == image_id

    listed_tags = json.loads(
        podman.run("search", "--list-tags", "--tls-verify=false", "--format", "json", remote).stdout
    )
    assert listed_tags == [{"Name": remote, "Tags": ["v1"]}]


def test_pull_by_digest_and_push_to_a_second_repository(
    registry: RegistryUnderTest, repo: str, podman: Podman, tmp_path: Path
) -> None:
    """An image pulled by digest and pushed to a second repository: podman remembers which
    compressed blobs the first one holds and mounts them (``POST ...?from=&mount=``), so the
    second manifest is the first one, byte for byte."""
    image = single_image(tmp_path / "image", layer_count=2, layer_size=100_000)
    config_digest, _ = layout_image(image, tagged(image)["digest"])
    image_id = podman.pull(f"oci:{image.path}:latest")
    remote = f"{registry.host}/{repo}"
    digest, _ = podman.push(image_id, f"docker://{remote}:v1")
    podman.run("rmi", "--all", "--force")

    assert podman.pull_remote(f"{remote}@{digest}") == image_id
    details = podman.inspect(f"{remote}@{digest}")
    assert details["Digest"] == digest
    assert details["RepoDigests"] == [f"{remote}@{digest}"]

    second = f"{repo}-second"
    second_digest, log = podman.push(
        f"{remote}@{digest}", f"docker://{registry.host}/{second}:v1", debug=True
    )
    assert second_digest == digest
    first_body, first_manifest = registry_manifest(registry, repo, digest)
    layers = {layer["digest"] for layer in first_manifest["layers"]}
    assert mounted_blobs(log, second, repo) == layers, log
    assert "mount OK" in log, log
    # podman 4.3 never asks to mount a config: it uploads it, and that upload must work.
    assert uploaded_blobs(log, second) <= {config_digest}, log
    second_body, _ = registry_manifest(registry, second, "v1")
    assert second_body == first_body
    assert_pushed_image(registry, second, "v1", image, config_digest)


def test_push_an_image_in_docker_format(
    registry: RegistryUnderTest, repo: str, podman: Podman, tmp_path: Path
) -> None:
    """``podman push --format v2s2`` converts the image to Docker's schema 2 media types (what
    ``docker push`` sends); the registry serves it back as such, and podman pulls it."""
    image = single_image(tmp_path / "image", layer_count=2, layer_size=50_000)
    config_digest, diff_ids = layout_image(image, tagged(image)["digest"])
    image_id = podman.pull(f"oci:{image.path}:latest")

    remote = f"{registry.host}/{repo}"
    digest, _ = podman.push(image_id, f"docker://{remote}:docker", "--format", "v2s2")
    body, manifest = registry_manifest(registry, repo, "docker")
    assert sha256(body) == digest
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert_pushed_image(registry, repo, "docker", image, config_digest, layer_type=DOCKER_LAYER)

    podman.run("rmi", "--all", "--force")
    assert podman.pull_remote(f"{remote}:docker") == image_id
    details = podman.inspect(f"{remote}:docker")
    assert details["Digest"] == digest
    assert details["ManifestType"] == DOCKER_MANIFEST
    assert details["RootFS"]["Layers"] == diff_ids


def test_push_and_pull_a_manifest_list(
    registry: RegistryUnderTest, repo: str, podman: Podman, tmp_path: Path
) -> None:
    """``podman manifest create`` and ``add --all`` of a two-platform layout, then
    ``manifest push --all``: the registry holds the list and both images exactly as the layout
    has them, and a pull for each architecture resolves through the list."""
    image = multi_arch_image(tmp_path / "image")
    layout_index = layout_json(image, tagged(image)["digest"])
    children = {m["platform"]["architecture"]: m for m in layout_index["manifests"]}
    assert set(children) == {"amd64", "arm64"}

    podman.run("manifest", "create", "localhost/client-test-list:latest")
    podman.run("manifest", "add", "--all", "localhost/client-test-list:latest",
               f"oci:{image.path}:latest")  # fmt: skip
    local = json.loads(
        podman.run("manifest", "inspect", "localhost/client-test-list:latest").stdout
    )
    assert {m["digest"] for m in local["manifests"]} == {m["digest"] for m in children.values()}

    remote = f"{registry.host}/{repo}"
    digest_file = podman.home / "tmp" / "list-digest"
    podman.run("manifest", "push", "--all", "--tls-verify=false", "--digestfile",
               str(digest_file), "localhost/client-test-list:latest",
               f"docker://{remote}:multi")  # fmt: skip
    list_digest = digest_file.read_text().strip()

    # podman's local list is a Docker manifest list; with OCI images in it, it pushes an OCI
    # index of the same entries.
    body, pushed = registry_manifest(registry, repo, "multi")
    assert sha256(body) == list_digest
    assert pushed["mediaType"] == OCI_INDEX
    assert [
        (m["digest"], m["size"], m["mediaType"], m["platform"]) for m in pushed["manifests"]
    ] == [(m["digest"], m["size"], m["mediaType"], m["platform"]) for m in children.values()]
    for child in children.values():
        child_body, child_manifest = registry_manifest(registry, repo, child["digest"])
        assert child_body == image.blobs[child["digest"]]
        for descriptor in [child_manifest["config"], *child_manifest["layers"]]:
            assert registry_blob(registry, repo, descriptor) == image.blobs[descriptor["digest"]]

    remote_list = json.loads(podman.run("manifest", "inspect", f"{remote}:multi").stdout)
    assert [(m["digest"], m["platform"]["architecture"]) for m in remote_list["manifests"]] == [
        (m["digest"], arch) for arch, m in children.items()
    ]

    podman.run("rmi", "--all", "--force")
    for arch, child in children.items():
        config_digest, diff_ids = layout_image(image, child["digest"])
        image_id = podman.pull_remote(f"{remote}:multi", "--arch", arch)
        assert f"sha256:{image_id}" == config_digest
        details = podman.inspect(image_id)
        assert details["Architecture"] == arch
        assert details["RootFS"]["Layers"] == diff_ids
        assert set(details["RepoDigests"]) == {
            f"{remote}@{child['digest']}",
            f"{remote}@{list_digest}",
        }
