"""The spec's push and pull workflows driven by the Docker engine itself: a private ``dockerd``
(tests/docker_engine.py) builds a two-layer image ``FROM scratch``, ``docker push``es it,
removes it and ``docker pull``s it back; anonymously, with HTTP Basic (``docker login`` against
the users file) and with bearer tokens from the gateway's own token endpoint. Docker must end
with the image it pushed (the same image ID), recorded under the manifest digest the registry
serves, and the registry must hold every blob that manifest names. A user without push is
refused and nothing of the refused push is stored."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

import tests.test_auth as auth_tests
from tests.docker_engine import DockerEngine
from tests.registry import DOCKER_MANIFEST, RegistryUnderTest, sha256
from tests.test_auth import Account, World, bearer, nothing_stored, token_for
from tests.test_client_podman import DOCKER_CONFIG, DOCKER_LAYER

pytestmark = pytest.mark.client

# The users, keys and registries of tests/test_auth.py (htpasswd and token mode, sqlite), started
# again for this module: alice pushes and pulls team-a/*, reader only pulls it.
world = auth_tests.world
basic_registry = auth_tests.basic_registry
token_registry = auth_tests.token_registry


def team_a_repository() -> str:
    return f"team-a/docker-{uuid.uuid4().hex[:8]}"


# --- what docker did, and what the registry holds -------------------------------------------


def push(engine: DockerEngine, image: str, config: Path | None = None) -> str:
    """``docker push``; returns the manifest digest docker reports (``<tag>: digest: ...``)."""
    output = engine.docker("push", image, config=config).stdout
    found = re.search(r": digest: (sha256:[0-9a-f]{64}) size: \d+", output)
    assert found, output
    return found.group(1)


def served_manifest(
    registry: RegistryUnderTest, repo: str, reference: str, headers: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """The manifest the registry serves to a client asking for Docker's schema 2, and its
    ``Docker-Content-Digest`` (checked against the bytes)."""
    response = registry.http.get(
        f"/v2/{repo}/manifests/{reference}", headers={**headers, "Accept": DOCKER_MANIFEST}
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    digest = response.headers["Docker-Content-Digest"]
    assert digest == sha256(response.content)
    manifest: dict[str, Any] = response.json()
    return digest, manifest


def assert_blobs_stored(
    registry: RegistryUnderTest, repo: str, manifest: dict[str, Any], headers: dict[str, str]
) -> None:
    """The config and every layer the manifest names are in the repository (HEAD: 200, with
    the digest and size the manifest gives)."""
    for descriptor in [manifest["config"], *manifest["layers"]]:
        response = registry.http.head(f"/v2/{repo}/blobs/{descriptor['digest']}", headers=headers)
        assert response.status_code == 200, descriptor
        assert response.headers["Docker-Content-Digest"] == descriptor["digest"]
        assert int(response.headers["Content-Length"]) == descriptor["size"]


def push_remove_and_pull(
    engine: DockerEngine,
    registry: RegistryUnderTest,
    repo: str,
    headers: dict[str, str],
    config: Path | None = None,
) -> str:
    """Build a two-layer image, push it as ``<repo>:v1``, remove it from the engine, pull it
    back; returns the manifest digest."""
    image = f"{registry.host}/{repo}:v1"
    image_id = engine.build_scratch_image(image)

    pushed_digest = push(engine, image, config)
    digest, manifest = served_manifest(registry, repo, "v1", headers)
    assert pushed_digest == digest
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert manifest["config"]["digest"] == image_id
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER] * 2
    assert_blobs_stored(registry, repo, manifest, headers)

    engine.docker("rmi", image)
    assert engine.docker("image", "inspect", image, check=False).returncode != 0

    engine.docker("pull", image, config=config)
    assert engine.image_id(image) == image_id
    assert engine.repo_digests(image) == [f"{registry.host}/{repo}@{digest}"]
    return digest


def login(
    engine: DockerEngine, registry: RegistryUnderTest, account: Account, config: Path
) -> None:
    result = engine.login(registry.host, account.name, account.password, config)
    assert result.returncode == 0, result.stderr
    assert "Login Succeeded" in result.stdout


def assert_wrong_password_refused(
    engine: DockerEngine, registry: RegistryUnderTest, account: Account, config: Path
) -> None:
    wrong = engine.login(registry.host, account.name, "not-the-password", config)
    assert wrong.returncode != 0, wrong.stdout
    assert "unauthorized" in wrong.stderr.lower(), wrong.stderr
    saved = config / "config.json"
    assert not saved.exists() or registry.host not in json.loads(saved.read_text())["auths"]


def assert_push_denied(engine: DockerEngine, image: str, config: Path) -> None:
    refused = engine.docker("push", image, config=config, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "denied" in refused.stdout + refused.stderr, (refused.stdout, refused.stderr)


# --- the workflows ------------------------------------------------------------------------


def test_docker_pushes_removes_and_pulls_back_an_image(
    registry: RegistryUnderTest, repo: str, docker_engine: DockerEngine
) -> None:
    """Anonymous: push a two-layer image, remove it, pull it back. Docker records the pulled
    image under the digest the registry serves for the tag, and has the image it pushed."""
    push_remove_and_pull(docker_engine, registry, repo, headers={})
    tags = registry.http.get(f"/v2/{repo}/tags/list")
    assert tags.json() == {"name": repo, "tags": ["v1"]}


def test_docker_logs_in_pushes_and_pulls_with_basic_auth(
    basic_registry: RegistryUnderTest, world: World, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """``docker login`` checks the password; the logged-in user pushes and pulls; a user who
    may only pull is denied a push, and nothing of it is stored."""
    registry, engine = basic_registry, docker_engine
    repo = team_a_repository()
    alice = tmp_path / "alice"

    # Without logging in: refused, nothing stored.
    anonymous_image = f"{registry.host}/{repo}:v1"
    engine.build_scratch_image(anonymous_image)
    refused = engine.docker("push", anonymous_image, config=tmp_path / "anonymous", check=False)
    assert refused.returncode != 0, refused.stdout
    assert "no basic auth credentials" in refused.stderr, refused.stderr
    assert nothing_stored(registry, repo)
    engine.docker("rmi", anonymous_image)

    assert_wrong_password_refused(engine, registry, world.alice, alice)
    login(engine, registry, world.alice, alice)
    digest = push_remove_and_pull(engine, registry, repo, world.alice.basic, alice)

    # The pull-only user pulls it, and can push it neither under a new tag (the manifest PUT
    # is refused) nor to a new repository (the upload is refused).
    reader = tmp_path / "reader"
    login(engine, registry, world.reader, reader)
    engine.docker("rmi", f"{registry.host}/{repo}:v1")
    engine.docker("pull", f"{registry.host}/{repo}:v1", config=reader)
    assert engine.repo_digests(f"{registry.host}/{repo}:v1") == [f"{registry.host}/{repo}@{digest}"]
    engine.docker("tag", f"{registry.host}/{repo}:v1", f"{registry.host}/{repo}:v2")
    assert_push_denied(engine, f"{registry.host}/{repo}:v2", reader)
    tags = registry.http.get(f"/v2/{repo}/tags/list", headers=world.alice.basic)
    assert tags.json()["tags"] == ["v1"]
    v2 = registry.http.head(f"/v2/{repo}/manifests/v2", headers=world.alice.basic)
    assert v2.status_code == 404

    other = team_a_repository()
    engine.build_scratch_image(f"{registry.host}/{other}:v1")
    assert_push_denied(engine, f"{registry.host}/{other}:v1", reader)
    assert nothing_stored(registry, other)


def test_docker_logs_in_pushes_and_pulls_with_tokens(
    token_registry: RegistryUnderTest, world: World, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """``docker login`` gets a refresh token from the gateway's token endpoint (the OAuth2
    password grant) and keeps it instead of the password; pushes and pulls run on the access
    tokens it is exchanged for. A user who may only pull is refused a push."""
    registry, engine = token_registry, docker_engine
    repo = team_a_repository()
    alice = tmp_path / "alice"

    assert_wrong_password_refused(engine, registry, world.alice, alice)
    login(engine, registry, world.alice, alice)
    # What docker keeps: the user name and the refresh token, not the password.
    saved = json.loads((alice / "config.json").read_text())["auths"][registry.host]
    assert base64.b64decode(saved["auth"]) == b"alice:", saved
    refresh = jwt.decode(saved["identitytoken"], options={"verify_signature": False})
    assert refresh["sub"] == "alice"

    headers = bearer(token_for(registry, world.alice, f"repository:{repo}:pull"))
    push_remove_and_pull(engine, registry, repo, headers, alice)

    reader = tmp_path / "reader"
    login(engine, registry, world.reader, reader)
    other = team_a_repository()
    engine.build_scratch_image(f"{registry.host}/{other}:v1")
    assert_push_denied(engine, f"{registry.host}/{other}:v1", reader)
    assert nothing_stored(registry, other)
