"""Authentication, authorization and hardening at the gateway, against whole registries of real
processes: HTTP Basic against a users file (``REGISTRY_AUTH=htpasswd``), bearer tokens from
the gateway's own token endpoint and from an external issuer (``REGISTRY_AUTH=token``), the
internal secret between the gateway and the services, and the rate and upload limits.

skopeo and podman log in, push and pull; then every refusal is tried: no credentials, wrong
ones, a pull-only user pushing, a user of one repository reading another (blobs by digest
included), a cross-repository mount from a repository the user cannot read, and forged,
expired, early, mis-addressed, mis-scoped and unsigned tokens. Each refusal is the spec's
error, and nothing a refused request touched is stored.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared import users
from shared.internal_auth import SECRET_HEADER
from shared.processes import processes
from shared.settings import Settings
from tests.conftest import running_registry
from tests.images import Layout, single_image
from tests.podman import Podman, private_podman
from tests.registry import (
    OCI_MANIFEST,
    RegistryUnderTest,
    environment_with,
    error_codes,
    free_port,
    sha256,
)
from tests.test_client_skopeo import SKOPEO, Skopeo, tagged

SERVICE = "registry.test"
ISSUER = "test-issuer"


# --- users, keys and the registries under test ------------------------------------------------


@dataclass
class Account:
    name: str
    password: str

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.name}:{self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@dataclass
class World:
    """The accounts, keys and files both registries share."""

    root: Path
    users_file: Path
    alice: Account  # pull, push, delete on team-a/*; push and pull on public/*; the catalog
    reader: Account  # pull on team-a/*
    bob: Account  # pull and push on team-b/*
    issuer_key: ec.EllipticCurvePrivateKey  # the gateway's own token key
    external_key: rsa.RSAPrivateKey  # an external issuer the gateway trusts
    attacker_key: rsa.RSAPrivateKey  # trusted by nobody
    internal_secret: str

    @property
    def accounts(self) -> list[Account]:
        return [self.alice, self.reader, self.bob]


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _account(name: str) -> Account:
    return Account(name, f"pw-{secrets.token_urlsafe(12)}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("auth-world")
    alice, reader, bob = _account("alice"), _account("reader"), _account("bob")
    document = {
        "users": {
            "alice": {"password_hash": users.hash_password(alice.password, 4), "catalog": True},
            "reader": {"password_hash": users.hash_password(reader.password, 4)},
            "bob": {"password_hash": users.hash_password(bob.password, 4)},
        },
        "grants": [
            {
                "repositories": ["team-a/*"],
                "users": ["alice"],
                "actions": ["pull", "push", "delete"],
            },
            {"repositories": ["team-a/*"], "users": ["reader"], "actions": ["pull"]},
            {"repositories": ["team-b/*"], "users": ["bob"], "actions": ["pull", "push"]},
            {"repositories": ["public/*"], "users": ["alice"], "actions": ["pull", "push"]},
            {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
        ],
    }
    users_file = root / "users.yaml"
    users.write_document(users_file, document)
    world = World(
        root,
        users_file,
        alice,
        reader,
        bob,
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        secrets.token_urlsafe(24),
    )
    (root / "issuer.pem").write_bytes(_pem(world.issuer_key))
    (root / "external.pub.pem").write_bytes(_public_pem(world.external_key))
    return world


@pytest.fixture(scope="module")
def basic_registry(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("registry-htpasswd"),
        auth="htpasswd",
        auth_users_file=str(world.users_file),
        auth_realm="Test Registry",
        internal_secret=world.internal_secret,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("registry-token"),
        auth="token",
        auth_users_file=str(world.users_file),
        auth_service=SERVICE,
        auth_token_issuer=ISSUER,
        auth_token_private_key_file=str(world.root / "issuer.pem"),
        auth_token_public_key_file=str(world.root / "external.pub.pem"),
        auth_token_ttl_seconds="120",
        internal_secret=world.internal_secret,
    ) as running:
        yield running


def _name(prefix: str) -> str:
    return f"{prefix}/app-{uuid.uuid4().hex[:8]}"


def assert_error(
    response: httpx.Response, status: int, code: str, challenge: str | None = None
) -> None:
    assert response.status_code == status, response.text
    assert error_codes(response) == [code], response.text
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    if challenge is not None:
        assert response.headers["WWW-Authenticate"].startswith(challenge), response.headers
    else:
        assert "WWW-Authenticate" not in response.headers


def repository_rows(registry: RegistryUnderTest, name: str) -> dict[str, list[Any]]:
    """What the database holds for repository ``name``."""
    return {
        "repository": registry.query("SELECT id FROM repositories WHERE name = :n", n=name),
        "blobs": registry.query(
            "SELECT rb.* FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id"
            " WHERE r.name = :n",
            n=name,
        ),
        "manifests": registry.query(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
            " WHERE r.name = :n",
            n=name,
        ),
        "uploads": registry.query("SELECT uuid FROM uploads WHERE repository = :n", n=name),
    }


def nothing_stored(registry: RegistryUnderTest, name: str) -> bool:
    return not any(repository_rows(registry, name).values())


def push_as(registry: RegistryUnderTest, repo: str, headers: dict[str, str], data: bytes) -> str:
    start = registry.http.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
    assert start.status_code == 202, start.text
    digest = sha256(data)
    done = registry.http.put(
        start.headers["Location"], params={"digest": digest}, content=data, headers=headers
    )
    assert done.status_code == 201, done.text
    return digest


def push_image_as(
    registry: RegistryUnderTest, repo: str, headers: dict[str, str], tag: str = "v1"
) -> tuple[str, str, str]:
    """A config, one layer and a manifest; returns the layer, config and manifest digests."""
    layer = secrets.token_bytes(2048)
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    layer_digest = push_as(registry, repo, headers, layer)
    config_digest = push_as(registry, repo, headers, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    put = registry.http.put(
        f"/v2/{repo}/manifests/{tag}",
        content=manifest,
        headers={**headers, "Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    return layer_digest, config_digest, sha256(manifest)


# --- the real clients, with private configuration (as tests/test_client_*.py) ---------------


def make_skopeo(home: Path) -> Skopeo:
    if not (SKOPEO.is_file() and os.access(SKOPEO, os.X_OK)):
        pytest.fail(f"skopeo is required for the auth tests and was not found at {SKOPEO}")
    for folder in ("registries.d", "tmp", "config", "data", "run"):
        (home / folder).mkdir(parents=True)
    (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (home / "registries.conf").write_text("unqualified-search-registries = []\n")
    (home / "auth.json").write_text(json.dumps({"auths": {}}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "TMPDIR": str(home / "tmp"),
        "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        "_CONTAINERS_ROOTLESS_UID": "65534",
    }
    return Skopeo(home, env)


def skopeo_login(
    skopeo: Skopeo, registry: RegistryUnderTest, account: Account, password: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``skopeo login`` with the password on standard input (never on the command line)."""
    command = [
        *skopeo.base_command,
        "login",
        "--tls-verify=false",
        "--authfile",
        str(skopeo.home / "auth.json"),
        "--username",
        account.name,
        "--password-stdin",
        registry.host,
    ]
    secret = account.password if password is None else password
    return subprocess.run(
        command, env=skopeo.env, input=secret.encode() + b"\n", capture_output=True, timeout=60
    )


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman with private storage and configuration; each test trusts its registry when it
    logs in."""
    with private_podman(tmp_path) as podman:
        yield podman


def podman_login(
    podman: Podman, registry: RegistryUnderTest, account: Account, password: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    podman.trust(registry.host)
    command = [
        *podman.base_command,
        "login",
        "--tls-verify=false",
        "--username",
        account.name,
        "--password-stdin",
        registry.host,
    ]
    secret = account.password if password is None else password
    return subprocess.run(
        command, env=podman.env, input=secret.encode() + b"\n", capture_output=True, timeout=60
    )


def skopeo_push_pull(
    skopeo: Skopeo, registry: RegistryUnderTest, image: Layout, repo: str, tmp_path: Path
) -> None:
    """Push ``image``, inspect it, pull it back: every digest is the pushed one."""
    remote = f"docker://{registry.host}/{repo}:v1"
    digest, _ = skopeo.push(image, remote)
    assert digest == tagged(image.path)["digest"]
    assert skopeo.inspect(remote, "--raw").stdout == image.blobs[digest]
    pulled = skopeo.pull(remote, tmp_path / f"pulled-{uuid.uuid4().hex[:6]}")
    assert tagged(pulled)["digest"] == digest


def podman_push_pull(podman: Podman, registry: RegistryUnderTest, image: Layout, repo: str) -> str:
    image_id = podman.pull(f"oci:{image.path}:latest")
    remote = f"{registry.host}/{repo}"
    digest, _ = podman.push(image_id, f"docker://{remote}:v1")
    podman.run("rmi", "--all", "--force")
    assert podman.pull_remote(f"{remote}:v1") == image_id
    assert podman.inspect(f"{remote}:v1")["Digest"] == digest
    return digest


# --- configuration: nothing changes unless configured ------------------------------------------


def test_the_default_gateway_builds_no_auth_or_limits() -> None:
    """With the defaults the gateway has no guard, no limits and no internal header, and its
    routes are the ping, the version check and the forwarding route."""
    from api_gateway import auth, limits
    from api_gateway.routes import v2
    from shared.internal_auth import gateway_headers

    settings = Settings()
    assert settings.auth == "none"
    setup = auth.configure(settings)
    assert setup.guard is None and setup.issuer is None
    assert limits.request_limits(settings) is None
    assert gateway_headers(settings) == []
    routes = v2.build_routes(
        setup.guard, limits.request_limits(settings), gateway_headers(settings)
    )
    assert {getattr(route, "name", None) for route in routes} == {
        "ping",
        "api_version",
        "to_service",
    }


def test_every_route_and_method_has_an_access_rule() -> None:
    """A new route or method in routing.ROUTES fails here until auth.RULES says what it needs
    (and in the meantime the gateway refuses it)."""
    from api_gateway import auth, routing

    expected = {
        ("catalog", "GET"): "registry:catalog:*",
        ("upload start", "POST"): "repository:r:pull,push",
        ("upload", "GET"): "repository:r:pull,push",
        ("upload", "PATCH"): "repository:r:pull,push",
        ("upload", "PUT"): "repository:r:pull,push",
        ("upload", "DELETE"): "repository:r:pull,push",
        ("blob", "GET"): "repository:r:pull",
        ("blob", "HEAD"): "repository:r:pull",
        ("blob", "DELETE"): "repository:r:delete",
        ("manifest", "GET"): "repository:r:pull",
        ("manifest", "HEAD"): "repository:r:pull",
        ("manifest", "PUT"): "repository:r:pull,push",
        ("manifest", "DELETE"): "repository:r:delete",
        ("tags", "GET"): "repository:r:pull",
        ("referrers", "GET"): "repository:r:pull",
    }
    seen = {}
    for route in routing.ROUTES:
        for method in route.methods:
            name = None if route.name == "catalog" else "r"
            seen[(route.name, method)] = auth.need(routing.Match(route, "/", name), method).scope
    assert seen == expected


def test_the_users_file_is_checked_and_globs_match_whole_names() -> None:
    hashed = users.hash_password("secret-password", 4)
    store = users.parse(
        {
            "users": {"alice": {"password_hash": hashed}, "bob": {"password_hash": hashed}},
            "grants": [
                {"repositories": ["team-a/*"], "users": ["alice"], "actions": ["pull", "push"]},
                {"repositories": ["lib?"], "users": ["*"], "actions": ["pull"]},
                {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
            ],
        }
    )
    assert store.actions("alice", "team-a/app") == {"pull", "push"}
    assert store.actions("alice", "team-a/deep/app") == {"pull", "push"}  # "*" crosses "/"
    assert store.actions("alice", "team-ab/app") == set()
    assert store.actions("alice", "x/team-a/app") == set()
    assert store.actions("bob", "team-a/app") == set()
    assert store.actions("bob", "lib1") == {"pull"} and store.actions("bob", "lib12") == set()
    assert store.actions(None, "lib1") == set()  # "*" is every user who logged in, not anyone
    assert store.actions(None, "public/x") == {"pull"}
    assert store.access("alice", "registry", "catalog") == set()
    assert users.check_password(store.users["alice"], b"secret-password")
    assert not users.check_password(store.users["alice"], b"secret-passwordx")
    assert not users.check_password(None, b"secret-password")
    assert not users.check_password(store.users["alice"], b"x" * 100)
    invalid = [
        {"users": {"alice": {"password_hash": "plain text"}}},
        {"users": {"alice": {"password_hash": hashed, "admin": True}}},
        {"users": {"bad name": {"password_hash": hashed}}},
        {"grants": [{"repositories": ["*"], "anonymous": True, "actions": ["push"]}]},
        {"grants": [{"repositories": ["*"], "users": ["ghost"], "actions": ["pull"]}]},
        {"grants": [{"repositories": ["*"], "actions": ["pull"]}]},
        {"grants": [{"repositories": ["*"], "users": ["*"], "actions": ["admin"]}]},
        {"extra": 1},
        ["not", "a", "mapping"],
    ]
    for document in invalid:
        with pytest.raises(users.UsersFileError) as raised:
            users.parse(document)
        assert hashed not in str(raised.value)


def test_token_configuration_is_checked(tmp_path: Path) -> None:
    """An external issuer alone needs the realm its clients are sent to; keys must be
    asymmetric and strong enough."""
    from api_gateway import auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "external.pem").write_bytes(_public_pem(key))
    settings = Settings(auth="token", auth_token_public_key_file=str(tmp_path / "external.pem"))
    with pytest.raises(RuntimeError, match="REGISTRY_AUTH_TOKEN_REALM"):
        auth.configure(settings)
    setup = auth.configure(
        dataclasses.replace(settings, auth_token_realm="https://issuer.example/token")
    )
    assert isinstance(setup.guard, auth.TokenGuard) and setup.issuer is None
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.pem").write_bytes(_pem(weak))
    with pytest.raises(ValueError, match="too weak"):
        auth.configure(
            Settings(
                auth="token",
                auth_users_file=str(tmp_path / "none.yaml"),
                auth_token_private_key_file=str(tmp_path / "weak.pem"),
            )
        )
    with pytest.raises(RuntimeError, match="REGISTRY_AUTH_USERS_FILE"):
        auth.configure(Settings(auth="htpasswd"))


def test_the_token_realm_comes_from_configuration_never_from_a_request() -> None:
    """The challenge's realm is where clients send their credentials: set by the operator
    (the realm, or the public URL), else the gateway's own address; a gateway listening on
    every address has no address to name and refuses to start without one."""
    from api_gateway.auth import token_realm

    def realm(**values: Any) -> str:
        return token_realm(Settings(auth="token", **values))

    assert realm() == "http://127.0.0.1:5000/auth/token"
    assert realm(gateway_host="registry.internal", gateway_port=8080) == (
        "http://registry.internal:8080/auth/token"
    )
    assert realm(gateway_host="::1") == "http://[::1]:5000/auth/token"
    assert realm(public_url="https://registry.example.com/") == (
        "https://registry.example.com/auth/token"
    )
    assert realm(public_url="https://a.example", auth_token_realm="https://b.example/t") == (
        "https://b.example/t"
    )
    for wildcard in ("0.0.0.0", "::"):
        with pytest.raises(RuntimeError, match="REGISTRY_PUBLIC_URL"):
            realm(gateway_host=wildcard)
        assert realm(gateway_host=wildcard, public_url="https://r.example") == (
            "https://r.example/auth/token"
        )


# --- HTTP Basic --------------------------------------------------------------------------------


def test_basic_login_is_required_and_checked(
    basic_registry: RegistryUnderTest, world: World
) -> None:
    http = basic_registry.http
    challenge = 'Basic realm="Test Registry"'
    assert_error(http.get("/v2/"), 401, "UNAUTHORIZED", challenge)
    assert http.get("/v2/", headers=world.alice.basic).status_code == 200
    wrong = Account("alice", "not-the-password")
    assert_error(http.get("/v2/", headers=wrong.basic), 401, "UNAUTHORIZED", challenge)
    unknown = Account("mallory", world.alice.password)
    assert_error(http.get("/v2/", headers=unknown.basic), 401, "UNAUTHORIZED", challenge)
    for header in (
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Bearer something",
        "Basic",
        "Digest x",
    ):
        response = http.get("/v2/", headers={"Authorization": header})
        assert_error(response, 401, "UNAUTHORIZED", challenge)
    repo = _name("team-a")
    assert_error(http.get(f"/v2/{repo}/tags/list"), 401, "UNAUTHORIZED", challenge)
    assert_error(
        http.get(f"/v2/{repo}/tags/list", headers=wrong.basic), 401, "UNAUTHORIZED", challenge
    )
    # A HEAD gets the status and the challenge, no body.
    head = http.head(f"/v2/{repo}/manifests/latest")
    assert head.status_code == 401 and head.content == b""
    assert head.headers["WWW-Authenticate"] == challenge
    # Long passwords (past bcrypt's 72 bytes) are refused, not truncated into a match.
    long = Account("alice", world.alice.password + "x" * 80)
    assert_error(http.get("/v2/", headers=long.basic), 401, "UNAUTHORIZED", challenge)


def test_skopeo_logs_in_pushes_and_pulls_with_basic_auth(
    basic_registry: RegistryUnderTest, world: World, tmp_path: Path
) -> None:
    skopeo = make_skopeo(tmp_path / "skopeo")
    image = single_image(tmp_path / "image", layer_count=2, layer_size=30_000)
    repo = _name("team-a")
    remote = f"docker://{basic_registry.host}/{repo}:v1"

    # Without logging in: refused, nothing stored.
    result = skopeo.run(
        "copy",
        *skopeo.remote_flags("--src-tls-verify", "--dest-tls-verify"),
        f"oci:{image.path}:latest",
        remote,
        check=False,
    )
    assert result.returncode != 0
    assert b"authentication required" in result.stderr or b"unauthorized" in result.stderr
    assert nothing_stored(basic_registry, repo)

    bad = skopeo_login(skopeo, basic_registry, world.alice, "wrong-password")
    assert bad.returncode != 0, bad.stdout
    assert world.alice.password.encode() not in bad.stderr + bad.stdout

    login = skopeo_login(skopeo, basic_registry, world.alice)
    assert login.returncode == 0, login.stderr
    assert b"Login Succeeded" in login.stdout
    skopeo_push_pull(skopeo, basic_registry, image, repo, tmp_path)

    # The pull-only user reads it, and cannot push.
    reader = make_skopeo(tmp_path / "reader")
    assert skopeo_login(reader, basic_registry, world.reader).returncode == 0
    assert reader.inspect(remote, "--raw").stdout == image.blobs[tagged(image.path)["digest"]]
    other = _name("team-a")
    denied = reader.run(
        "copy",
        *reader.remote_flags("--src-tls-verify", "--dest-tls-verify"),
        f"oci:{image.path}:latest",
        f"docker://{basic_registry.host}/{other}:v1",
        check=False,
    )
    assert denied.returncode != 0
    assert b"denied" in denied.stderr, denied.stderr
    assert nothing_stored(basic_registry, other)

    # bob (team-b only) cannot even read it.
    bob = make_skopeo(tmp_path / "bob")
    assert skopeo_login(bob, basic_registry, world.bob).returncode == 0
    refused = bob.inspect(remote, "--raw", check=False)
    assert refused.returncode != 0
    assert b"denied" in refused.stderr, refused.stderr


def test_podman_logs_in_pushes_and_pulls_with_basic_auth(
    basic_registry: RegistryUnderTest, world: World, podman: Podman, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=2, layer_size=30_000)
    bad = podman_login(podman, basic_registry, world.alice, "wrong-password")
    assert bad.returncode != 0
    login = podman_login(podman, basic_registry, world.alice)
    assert login.returncode == 0, login.stderr
    repo = _name("team-a")
    podman_push_pull(podman, basic_registry, image, repo)

    podman.run("logout", "--all")
    podman.run("rmi", "--all", "--force")
    anonymous = podman.run(
        "pull", "--tls-verify=false", f"{basic_registry.host}/{repo}:v1", check=False
    )
    assert anonymous.returncode != 0
    assert podman_login(podman, basic_registry, world.reader).returncode == 0
    image_id = podman.pull(f"oci:{image.path}:latest")
    pushed = podman.run(
        "push",
        "--tls-verify=false",
        image_id,
        f"docker://{basic_registry.host}/{repo}:v2",
        check=False,
    )
    assert pushed.returncode != 0
    assert b"denied" in pushed.stderr, pushed.stderr
    tags = basic_registry.http.get(f"/v2/{repo}/tags/list", headers=world.alice.basic)
    assert tags.json()["tags"] == ["v1"]


def test_grants_are_enforced_per_repository_and_action(
    basic_registry: RegistryUnderTest, world: World
) -> None:
    http = basic_registry.http
    team_a = _name("team-a")
    layer, config, manifest = push_image_as(basic_registry, team_a, world.alice.basic)

    # The reader pulls everything, by tag and by digest.
    for path in ("manifests/v1", f"manifests/{manifest}", f"blobs/{layer}", "tags/list"):
        assert http.get(f"/v2/{team_a}/{path}", headers=world.reader.basic).status_code == 200
    # ... and can neither push nor delete.
    before = repository_rows(basic_registry, team_a)
    assert_error(
        http.post(f"/v2/{team_a}/blobs/uploads/", headers=world.reader.basic), 403, "DENIED"
    )
    assert_error(
        http.post(
            f"/v2/{team_a}/blobs/uploads/",
            params={"digest": sha256(b"x")},
            content=b"x",
            headers=world.reader.basic,
        ),
        403,
        "DENIED",
    )
    assert_error(
        http.put(
            f"/v2/{team_a}/manifests/v2",
            content=b"{}",
            headers={**world.reader.basic, "Content-Type": OCI_MANIFEST},
        ),
        403,
        "DENIED",
    )
    for path in (f"manifests/{manifest}", f"blobs/{layer}"):
        assert_error(http.delete(f"/v2/{team_a}/{path}", headers=world.reader.basic), 403, "DENIED")
    assert repository_rows(basic_registry, team_a) == before

    # bob, of team-b, reads nothing of team-a: not the manifest, not a blob by its digest, not
    # the tags, not the referrers; and cannot write there.
    for method, path in (
        ("GET", "manifests/v1"),
        ("HEAD", "manifests/v1"),
        ("GET", f"blobs/{layer}"),
        ("HEAD", f"blobs/{config}"),
        ("GET", "tags/list"),
        ("GET", f"referrers/{manifest}"),
        ("POST", "blobs/uploads/"),
        ("DELETE", f"manifests/{manifest}"),
    ):
        response = http.request(method, f"/v2/{team_a}/{path}", headers=world.bob.basic)
        assert response.status_code == 403, (method, path)
        if method != "HEAD":
            assert error_codes(response) == ["DENIED"]
    # Through his own repository the blob is not there either (content is linked per repository).
    team_b = _name("team-b")
    response = http.get(f"/v2/{team_b}/blobs/{layer}", headers=world.bob.basic)
    assert_error(response, 404, "BLOB_UNKNOWN")
    assert repository_rows(basic_registry, team_a) == before

    # Anonymous: refused with a challenge on team-a; public/* pulls without logging in.
    assert_error(http.get(f"/v2/{team_a}/manifests/v1"), 401, "UNAUTHORIZED", "Basic ")
    public = _name("public")
    _, _, public_manifest = push_image_as(basic_registry, public, world.alice.basic)
    response = http.get(f"/v2/{public}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == public_manifest
    assert_error(http.post(f"/v2/{public}/blobs/uploads/"), 401, "UNAUTHORIZED", "Basic ")
    assert_error(
        http.delete(f"/v2/{public}/manifests/{public_manifest}"), 401, "UNAUTHORIZED", "Basic "
    )

    # The catalog: alice (catalog: true) lists it; bob may not; anonymous gets a challenge.
    assert http.get("/v2/_catalog", headers=world.alice.basic).status_code == 200
    assert_error(http.get("/v2/_catalog", headers=world.bob.basic), 403, "DENIED")
    assert_error(http.get("/v2/_catalog"), 401, "UNAUTHORIZED", "Basic ")

    # alice deletes.
    deleted = http.delete(f"/v2/{team_a}/manifests/{manifest}", headers=world.alice.basic)
    assert deleted.status_code == 202, deleted.text


def test_a_mount_from_a_repository_the_user_cannot_read_is_an_ordinary_upload(
    basic_registry: RegistryUnderTest, world: World
) -> None:
    """bob knows a digest in team-a and asks to mount it into his repository: the gateway
    drops the mount, bob gets an upload session (202) and the blob stays out of his reach."""
    http = basic_registry.http
    team_a = _name("team-a")
    layer, _, _ = push_image_as(basic_registry, team_a, world.alice.basic)
    team_b = _name("team-b")
    for params in (
        {"mount": layer, "from": team_a},
        {"mount": layer},
        {"mount": layer, "from": "team-a/../team-a"},
        {"from": team_a, "mount": layer, "digest": layer},
    ):
        response = http.post(f"/v2/{team_b}/blobs/uploads/", params=params, headers=world.bob.basic)
        if "digest" in params:
            # A monolithic upload of an empty body: the digest does not match; not a mount.
            assert_error(response, 400, "DIGEST_INVALID")
            continue
        assert response.status_code == 202, (params, response.text)
        assert "/blobs/uploads/" in response.headers["Location"]
        head = http.head(f"/v2/{team_b}/blobs/{layer}", headers=world.bob.basic)
        assert head.status_code == 404, params
    assert repository_rows(basic_registry, team_b)["blobs"] == []
    # bob's own mount between his own repositories works.
    own = push_as(basic_registry, team_b, world.bob.basic, secrets.token_bytes(100))
    second = _name("team-b")
    mounted = http.post(
        f"/v2/{second}/blobs/uploads/",
        params={"mount": own, "from": team_b},
        headers=world.bob.basic,
    )
    assert mounted.status_code == 201, mounted.text
    # alice, who reads team-a and pushes to public, mounts from team-a.
    public = _name("public")
    mounted = http.post(
        f"/v2/{public}/blobs/uploads/",
        params={"mount": layer, "from": team_a},
        headers=world.alice.basic,
    )
    assert mounted.status_code == 201, mounted.text


def test_the_users_file_is_reloaded_without_a_restart(
    basic_registry: RegistryUnderTest, world: World
) -> None:
    """``registry-admin user add`` (password on standard input) takes effect within seconds;
    ``user remove`` revokes; a broken file keeps the last good one."""
    password = f"pw-{secrets.token_urlsafe(12)}"
    carol = Account("carol", password)
    repo = "team-c/app"
    admin = [sys.executable, "-m", "janitor.cli", "user"]
    added = subprocess.run(
        [
            *admin,
            "add",
            "carol",
            "--password-stdin",
            "--rounds",
            "4",
            "--grant",
            "team-c/*=pull,push",
        ],
        env=basic_registry.env,
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert password not in added.stdout + added.stderr
    assert password not in world.users_file.read_text()

    def status() -> int:
        return basic_registry.http.get(f"/v2/{repo}/tags/list", headers=carol.basic).status_code

    # Until the gateway sees the new file (it looks once a second), carol's logins fail, and
    # each failure counts against this address: poll at that pace, and after a 429 (other
    # tests' failures count too) wait as long as its Retry-After says.
    deadline = time.monotonic() + 20
    while (answer := status()) != 404 and time.monotonic() < deadline:
        assert answer in (401, 429), answer
        time.sleep(3.0 if answer == 429 else 1.0)
    assert status() == 404  # logged in and granted: the repository is just empty

    listed = subprocess.run(
        [*admin, "list"], env=basic_registry.env, capture_output=True, text=True, timeout=60
    )
    assert "carol: team-c/*=pull,push" in listed.stdout
    assert "$2" not in listed.stdout  # no hash

    saved = world.users_file.read_bytes()
    world.users_file.write_text("users: [this is not: valid")
    time.sleep(1.5)
    assert status() == 404  # the last good file is kept
    world.users_file.write_bytes(saved)

    removed = subprocess.run(
        [*admin, "remove", "carol"],
        env=basic_registry.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert removed.returncode == 0, removed.stderr
    deadline = time.monotonic() + 10
    while status() != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status() == 401
    assert "users file not reloaded" in basic_registry.log("api-gateway")


# --- the internal secret ---------------------------------------------------------------------


def test_services_answer_only_the_gateway(basic_registry: RegistryUnderTest, world: World) -> None:
    settings = basic_registry.settings
    repo = _name("team-a")
    for service in ("blob", "manifest"):
        url = settings.service_url(service)
        path = f"/v2/{repo}/blobs/uploads/" if service == "blob" else f"/v2/{repo}/tags/list"
        method = "POST" if service == "blob" else "GET"
        response = httpx.request(method, url + path, timeout=10)
        assert_error(response, 401, "UNAUTHORIZED")
        wrong = httpx.request(method, url + path, headers={SECRET_HEADER: "guess"}, timeout=10)
        assert_error(wrong, 403, "DENIED")
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(url + open_path, timeout=10).status_code == 200, open_path
        right = httpx.request(
            method, url + path, headers={SECRET_HEADER: world.internal_secret}, timeout=10
        )
        assert right.status_code in (202, 404), right.text
    # A client cannot pass the header through the gateway (it drops every internal header),
    # nor get past the gateway's own check with it.
    response = basic_registry.http.post(
        f"/v2/{repo}/blobs/uploads/", headers={SECRET_HEADER: world.internal_secret}
    )
    assert_error(response, 401, "UNAUTHORIZED", "Basic ")
    assert basic_registry.http.get("/readyz").status_code == 200


def _start_service(
    name: str, root: Path, host: str, **values: str
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """One service started alone with its real command (``shared.processes``), listening on
    ``host``; returns the process, its URL on loopback and its log file."""
    port = free_port()
    key = "blob_service" if name == "blob-service" else "manifest_service"
    settings_values = {
        "database_url": f"sqlite:///{root / 'registry.db'}",
        "storage_url": f"file://{root / 'storage'}",
        "broker_url": f"filesystem://{root / 'broker'}",
        f"{key}_host": host,
        f"{key}_port": str(port),
        **values,
    }
    environment = environment_with(settings_values)
    settings = Settings(**settings_values)
    process = next(p for p in processes(settings) if p.name == name)
    log_file = root / f"{name}.log"
    with open(log_file, "wb") as output:
        popen = subprocess.Popen(
            process.argv, env=environment, stdout=output, stderr=subprocess.STDOUT
        )
    return popen, f"http://127.0.0.1:{port}", log_file


def _answers(url: str, popen: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and popen.poll() is None:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            time.sleep(0.2)
    return False


@pytest.mark.parametrize("service", ["blob-service", "manifest-service"])
@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_a_service_with_auth_on_and_no_secret_refuses_to_listen_beyond_loopback(
    tmp_path: Path, service: str, mode: str
) -> None:
    """Safe by default: without the internal secret its port would serve anyone, around the
    gateway's authentication. One clear line, exit status 2."""
    popen, _, log_file = _start_service(service, tmp_path, "0.0.0.0", auth=mode)
    try:
        assert popen.wait(timeout=30) == 2
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    lines = log_file.read_text().splitlines()
    refusals = [line for line in lines if "refusing to start" in line]
    assert len(refusals) == 1, lines
    record = json.loads(refusals[0])
    assert record["level"] == "CRITICAL"
    assert "REGISTRY_INTERNAL_SECRET" in record["message"]
    assert "REGISTRY_INTERNAL_NETWORK_TRUSTED" in record["message"]
    assert "Traceback" not in log_file.read_text()


@pytest.mark.parametrize(
    ("host", "values", "warned"),
    [
        ("127.0.0.1", {"auth": "htpasswd"}, True),  # loopback: only this host reaches it
        ("0.0.0.0", {"auth": "htpasswd", "internal_network_trusted": "true"}, True),
        ("0.0.0.0", {"auth": "htpasswd", "internal_secret": "s3cret-for-the-test"}, False),
        ("0.0.0.0", {}, False),  # no authentication: nothing to get around
    ],
)
def test_a_service_starts_where_its_port_is_safe_or_declared_so(
    tmp_path: Path, host: str, values: dict[str, str], warned: bool
) -> None:
    popen, url, log_file = _start_service("blob-service", tmp_path, host, **values)
    try:
        assert _answers(url, popen), log_file.read_text()[-2000:]
    finally:
        popen.terminate()
        popen.wait(timeout=30)
    text = log_file.read_text()
    assert ("without REGISTRY_INTERNAL_SECRET" in text) == warned, text[-2000:]
    assert "refusing to start" not in text


def test_the_address_a_service_listens_on_is_its_commands() -> None:
    from shared.internal_auth import is_loopback, listen_address

    assert listen_address("127.0.0.1", ["uvicorn", "x:app", "--host", "0.0.0.0"]) == "0.0.0.0"
    assert listen_address("127.0.0.1", ["uvicorn", "x:app", "--host=::"]) == "::"
    assert listen_address("0.0.0.0", ["uvicorn", "--uds", "/run/s.sock"]) == "unix:/run/s.sock"
    assert listen_address("10.0.0.5", ["pytest"]) == "10.0.0.5"
    for local in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost", "unix:/run/s.sock"):
        assert is_loopback(local), local
    for reachable in ("0.0.0.0", "::", "10.0.0.5", "blob-service", ""):
        assert not is_loopback(reachable), reachable


# --- tokens ----------------------------------------------------------------------------------


def get_token(
    registry: RegistryUnderTest,
    account: Account | None,
    *scopes: str,
    **params: str,
) -> httpx.Response:
    headers = account.basic if account is not None else {}
    query: list[tuple[str, str | int | float | bool | None]] = [
        ("service", SERVICE),
        *(("scope", s) for s in scopes),
    ]
    query += list(params.items())
    return registry.http.get("/auth/token", params=query, headers=headers)


def token_for(registry: RegistryUnderTest, account: Account | None, *scopes: str) -> str:
    response = get_token(registry, account, *scopes)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_now(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 60,
        "nbf": now - 1,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": [],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature)]
    )


def test_token_challenge_and_endpoint(token_registry: RegistryUnderTest, world: World) -> None:
    http = token_registry.http
    realm = f"{token_registry.url}/auth/token"
    base = http.get("/v2/")
    assert_error(base, 401, "UNAUTHORIZED", f'Bearer realm="{realm}",service="{SERVICE}"')
    repo = _name("team-a")
    for method, path, scope in (
        ("GET", f"/v2/{repo}/tags/list", f"repository:{repo}:pull"),
        ("HEAD", f"/v2/{repo}/manifests/v1", f"repository:{repo}:pull"),
        ("POST", f"/v2/{repo}/blobs/uploads/", f"repository:{repo}:pull,push"),
        ("PUT", f"/v2/{repo}/manifests/v1", f"repository:{repo}:pull,push"),
        ("DELETE", f"/v2/{repo}/manifests/v1", f"repository:{repo}:delete"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
    ):
        response = http.request(method, path)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer realm="{realm}",service="{SERVICE}",scope="{scope}"'
        )

    # Whatever Host a request names, the challenge sends clients to the configured realm.
    for host in ("attacker.example", "attacker.example:443", "127.0.0.1.attacker.example"):
        for path in ("/v2/", f"/v2/{repo}/tags/list"):
            response = http.get(path, headers={"Host": host})
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith(f'Bearer realm="{realm}",')

    # alice's token: what she asked for, within her grants; signed by the gateway's key.
    response = get_token(
        token_registry,
        world.alice,
        f"repository:{repo}:pull,push,delete",
        "repository:team-b/x:pull",
        "registry:catalog:*",
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 120
    claims = jwt.decode(
        body["token"],
        world.issuer_key.public_key(),
        algorithms=["ES256"],
        audience=SERVICE,
        issuer=ISSUER,
    )
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120
    assert sorted(claims["access"], key=lambda a: a["type"]) == [
        {"type": "registry", "name": "catalog", "actions": ["*"]},
        {"type": "repository", "name": repo, "actions": ["delete", "pull", "push"]},
    ]
    assert jwt.get_unverified_header(body["token"])["alg"] == "ES256"
    assert http.get("/v2/", headers=bearer(body["token"])).status_code == 200

    # Wrong password: 401. Anonymous: a token with the anonymous grants only.
    wrong = get_token(token_registry, Account("alice", "wrong"), f"repository:{repo}:pull")
    assert_error(wrong, 401, "UNAUTHORIZED", "Basic ")
    anonymous = get_token(
        token_registry, None, f"repository:{repo}:pull", "repository:public/x:pull,push"
    )
    assert anonymous.status_code == 200
    anonymous_claims = jwt.decode(anonymous.json()["token"], options={"verify_signature": False})
    assert anonymous_claims["access"] == [
        {"type": "repository", "name": "public/x", "actions": ["pull"]}
    ]
    # Another service: refused.
    other = http.get("/auth/token", params={"service": "elsewhere"}, headers=world.alice.basic)
    assert_error(other, 403, "DENIED")


def test_oauth_password_and_refresh_grants(token_registry: RegistryUnderTest, world: World) -> None:
    http = token_registry.http
    repo = _name("team-b")
    form = {
        "grant_type": "password",
        "username": "bob",
        "password": world.bob.password,
        "service": SERVICE,
        "client_id": "test",
        "access_type": "offline",
        "scope": f"repository:{repo}:pull,push repository:team-a/x:pull",
    }
    response = http.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == f"repository:{repo}:pull,push"
    access, refresh = body["access_token"], body["refresh_token"]
    assert http.get(f"/v2/{repo}/tags/list", headers=bearer(access)).status_code == 404

    # The refresh token gets new access tokens, and is no access token itself.
    refreshed = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "service": SERVICE,
            "client_id": "test",
            "refresh_token": refresh,
            "scope": f"repository:{repo}:pull",
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert (
        http.get(
            f"/v2/{repo}/tags/list", headers=bearer(refreshed.json()["access_token"])
        ).status_code
        == 404
    )
    misuse = http.get(f"/v2/{repo}/tags/list", headers=bearer(refresh))
    assert_error(misuse, 401, "UNAUTHORIZED", "Bearer ")
    assert 'error="invalid_token"' in misuse.headers["WWW-Authenticate"]
    # An access token is no refresh token; a wrong password gets nothing.
    forged = http.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "service": SERVICE,
            "client_id": "test",
            "refresh_token": access,
        },
    )
    assert forged.status_code == 401
    wrong = http.post("/auth/token", data={**form, "password": "wrong"})
    assert_error(wrong, 401, "UNAUTHORIZED", "Basic ")
    assert wrong.json()["error"] == "invalid_grant"
    assert http.post("/auth/token", data={**form, "grant_type": "magic"}).status_code == 400
    assert (
        http.post(
            "/auth/token", content=b"{}", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )


def test_skopeo_logs_in_pushes_and_pulls_with_tokens(
    token_registry: RegistryUnderTest, world: World, tmp_path: Path
) -> None:
    skopeo = make_skopeo(tmp_path / "skopeo")
    image = single_image(tmp_path / "image", layer_count=2, layer_size=30_000)
    repo = _name("team-a")
    assert skopeo_login(skopeo, token_registry, world.alice, "wrong").returncode != 0
    login = skopeo_login(skopeo, token_registry, world.alice)
    assert login.returncode == 0, login.stderr
    skopeo_push_pull(skopeo, token_registry, image, repo, tmp_path)
    # The same image to a second repository: skopeo mounts the layers (its token asks pull on
    # the first repository too, which alice has).
    second = _name("team-a")
    _, log = skopeo.push(image, f"docker://{token_registry.host}/{second}:v1", debug=True)
    assert "mount=" in log

    reader = make_skopeo(tmp_path / "reader")
    assert skopeo_login(reader, token_registry, world.reader).returncode == 0
    remote = f"docker://{token_registry.host}/{repo}:v1"
    assert reader.inspect(remote, "--raw").returncode == 0
    other = _name("team-a")
    denied = reader.run(
        "copy",
        *reader.remote_flags("--src-tls-verify", "--dest-tls-verify"),
        f"oci:{image.path}:latest",
        f"docker://{token_registry.host}/{other}:v1",
        check=False,
    )
    assert denied.returncode != 0
    assert nothing_stored(token_registry, other)

    anonymous = make_skopeo(tmp_path / "anonymous")
    refused = anonymous.inspect(remote, "--raw", check=False)
    assert refused.returncode != 0


def test_podman_logs_in_pushes_and_pulls_with_tokens(
    token_registry: RegistryUnderTest, world: World, podman: Podman, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=2, layer_size=30_000)
    assert podman_login(podman, token_registry, world.bob, "wrong").returncode != 0
    login = podman_login(podman, token_registry, world.bob)
    assert login.returncode == 0, login.stderr
    repo = _name("team-b")
    podman_push_pull(podman, token_registry, image, repo)
    outside = _name("team-a")
    image_id = podman.pull(f"oci:{image.path}:latest")
    pushed = podman.run(
        "push",
        "--tls-verify=false",
        image_id,
        f"docker://{token_registry.host}/{outside}:v1",
        check=False,
    )
    assert pushed.returncode != 0
    assert nothing_stored(token_registry, outside)


def test_forged_and_misused_tokens_are_refused(
    token_registry: RegistryUnderTest, world: World
) -> None:
    """Every token below is refused with 401 ``UNAUTHORIZED`` and a Bearer challenge; a token
    the external issuer signed properly is accepted."""
    http = token_registry.http
    repo = _name("team-a")
    layer, _, _ = push_image_as(
        token_registry,
        repo,
        bearer(token_for(token_registry, world.alice, f"repository:{repo}:pull,push")),
    )
    path = f"/v2/{repo}/blobs/{layer}"
    access = [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
    external = world.external_key
    public_pem = _public_pem(world.issuer_key)
    external_pem = _public_pem(external)

    def rs256(claims: dict[str, Any], key: rsa.RSAPrivateKey = external) -> str:
        return jwt.encode(claims, key, algorithm="RS256")

    good = rs256(claims_now(access=access))
    assert http.get(path, headers=bearer(good)).status_code == 200

    # A token for team-b, its payload rewritten to team-a, the signature kept.
    b_token = token_for(token_registry, world.bob, "repository:team-b/x:pull")
    header_part, _, signature = b_token.split(".")
    b_claims = jwt.decode(b_token, options={"verify_signature": False})
    tampered = f"{header_part}.{_b64(json.dumps({**b_claims, 'access': access}).encode())}." + (
        signature
    )
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}." + _b64(
        json.dumps(claims_now(access=access)).encode()
    )
    now = int(time.time())
    forged = {
        "expired": rs256(claims_now(access=access, exp=now - 600, iat=now - 900, nbf=now - 900)),
        "not yet valid": rs256(claims_now(access=access, nbf=now + 600)),
        "wrong signature": rs256(claims_now(access=access), world.attacker_key),
        "wrong audience": rs256(claims_now(access=access, aud="another-registry")),
        "wrong issuer": rs256(claims_now(access=access, iss="someone-else")),
        "no expiry": rs256(claims_now(access=access, exp=None)),
        "no audience": rs256(claims_now(access=access, aud=None)),
        "alg none": unsigned({"alg": "none", "typ": "JWT"}, claims_now(access=access)),
        "alg None": unsigned({"alg": "None", "typ": "JWT"}, claims_now(access=access)),
        "HMAC keyed with the issuer's public key": signing_input
        + "."
        + _b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()),
        "HMAC keyed with the external public key": signing_input
        + "."
        + _b64(hmac.new(external_pem, signing_input.encode(), hashlib.sha256).digest()),
        "tampered payload": tampered,
        "garbage": "not.a.token",
        "malformed access claim": rs256(claims_now(access={"repository": repo})),
    }
    for what, token in forged.items():
        response = http.get(path, headers=bearer(token))
        assert_error(response, 401, "UNAUTHORIZED", "Bearer ")
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], what

    # Valid tokens without the scope the request needs: insufficient_scope.
    wrong_scopes = {
        "another repository": rs256(claims_now(access=[{**access[0], "name": "team-a/other"}])),
        "pull for a push": rs256(
            claims_now(access=[{"type": "repository", "name": repo, "actions": ["pull"]}])
        ),
        "no access": rs256(claims_now()),
        "bob's own token": token_for(token_registry, world.bob, f"repository:{repo}:pull"),
        "anonymous token": token_for(token_registry, None, f"repository:{repo}:pull"),
    }
    for what, token in wrong_scopes.items():
        method = "POST" if what == "pull for a push" else "GET"
        target = f"/v2/{repo}/blobs/uploads/" if method == "POST" else path
        response = http.request(method, target, headers=bearer(token))
        assert_error(response, 401, "UNAUTHORIZED", "Bearer ")
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"], what
    # The catalog needs registry:catalog:*.
    catalog = http.get("/v2/_catalog", headers=bearer(good))
    assert_error(catalog, 401, "UNAUTHORIZED", "Bearer ")
    alice_catalog = token_for(token_registry, world.alice, "registry:catalog:*")
    assert http.get("/v2/_catalog", headers=bearer(alice_catalog)).status_code == 200
    bob_catalog = token_for(token_registry, world.bob, "registry:catalog:*")
    assert http.get("/v2/_catalog", headers=bearer(bob_catalog)).status_code == 401


def test_a_token_mount_needs_pull_on_the_source(
    token_registry: RegistryUnderTest, world: World
) -> None:
    http = token_registry.http
    team_a = _name("team-a")
    alice = bearer(token_for(token_registry, world.alice, f"repository:{team_a}:pull,push"))
    layer, _, _ = push_image_as(token_registry, team_a, alice)
    team_b = _name("team-b")
    # bob asks for pull on team-a too; the issuer leaves it out.
    token = token_for(
        token_registry, world.bob, f"repository:{team_b}:pull,push", f"repository:{team_a}:pull"
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert [a["name"] for a in claims["access"]] == [team_b]
    response = http.post(
        f"/v2/{team_b}/blobs/uploads/",
        params={"mount": layer, "from": team_a},
        headers=bearer(token),
    )
    assert response.status_code == 202, response.text
    assert http.head(f"/v2/{team_b}/blobs/{layer}", headers=bearer(token)).status_code == 404
    assert repository_rows(token_registry, team_b)["blobs"] == []


def test_no_secret_reaches_logs_or_metrics(
    basic_registry: RegistryUnderTest, token_registry: RegistryUnderTest, world: World
) -> None:
    """After every test above: no password, hash, token, key or internal secret in any
    process's log, nor in the gateway's metrics."""
    document = users.read_document(world.users_file)
    hashes = [entry["password_hash"] for entry in document["users"].values()]
    token = token_for(token_registry, world.alice, "repository:team-a/x:pull")
    token_registry.http.get("/v2/team-a/x/tags/list", headers=bearer(token))
    basic_registry.http.get("/v2/", headers=Account("alice", "leaky-wrong-password").basic)
    secrets_ = [
        *(a.password for a in world.accounts),
        "leaky-wrong-password",
        *hashes,
        token,
        token.split(".")[2],
        world.internal_secret,
        _pem(world.issuer_key).decode().splitlines()[1],
    ]
    for registry in (basic_registry, token_registry):
        texts = {
            name: registry.log(name) for name in ("api-gateway", "blob-service", "manifest-service")
        }
        texts["metrics"] = registry.http.get("/metrics").text
        for name, text in texts.items():
            for secret in secrets_:
                assert secret not in text, (name, secret[:6])
        assert "authentication failed" in texts["api-gateway"] or registry is token_registry


# --- hardening: rate and upload limits --------------------------------------------------------


@pytest.fixture(scope="module")
def limited_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("registry-limits"),
        rate_limit_client_per_second="20",
        rate_limit_client_burst="30",
        rate_limit_repository_per_second="2",
        rate_limit_repository_burst="4",
        max_concurrent_uploads_per_client="1",
    ) as running:
        yield running


def test_rate_limits_answer_429_with_retry_after(limited_registry: RegistryUnderTest) -> None:
    http = limited_registry.http
    repo = _name("limited")
    statuses = [http.get(f"/v2/{repo}/tags/list") for _ in range(8)]
    limited = [r for r in statuses if r.status_code == 429]
    assert [r.status_code for r in statuses[:4]] == [404] * 4
    assert limited, [r.status_code for r in statuses]
    for response in limited:
        assert_error(response, 429, "TOOMANYREQUESTS")
        assert int(response.headers["Retry-After"]) >= 1
        assert "repository" in response.json()["errors"][0]["detail"]
    # Another repository is not limited by this one's rate.
    assert http.get(f"/v2/{_name('other')}/tags/list").status_code == 404

    time.sleep(2.5)
    assert http.get(f"/v2/{repo}/tags/list").status_code == 404

    # The client's own rate: a burst of 30, then 429 for everything (the version check too),
    # never for the probes.
    time.sleep(1.5)
    responses = [http.get("/v2/") for _ in range(60)]
    answers = [response.status_code for response in responses]
    assert 429 in answers and answers[:20] == [200] * 20
    refused = responses[answers.index(429)]
    assert_error(refused, 429, "TOOMANYREQUESTS")
    assert "client" in refused.json()["errors"][0]["detail"]
    for _ in range(40):
        assert http.get("/healthz").status_code == 200
    time.sleep(2)
    assert http.get("/v2/").status_code == 200


def test_concurrent_uploads_per_client_are_limited(limited_registry: RegistryUnderTest) -> None:
    http = limited_registry.http
    time.sleep(2)  # a fresh bucket for this client
    repo = _name("uploads")
    location = http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"a" * 1000
        release.wait(20)
        yield b"b" * 1000

    results: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=limited_registry.url, timeout=60) as client:
            results.append(client.patch(location, content=slow_body()).status_code)

    thread = threading.Thread(target=send)
    thread.start()
    try:
        time.sleep(1)  # the PATCH is in flight
        other = _name("uploads2")
        refused = http.post(f"/v2/{other}/blobs/uploads/")
        assert_error(refused, 429, "TOOMANYREQUESTS")
        assert "uploads at once" in refused.json()["errors"][0]["detail"]
        assert http.get(f"/v2/{repo}/tags/list").status_code == 404  # reads still go
    finally:
        release.set()
        thread.join(30)
    assert results == [202]
    time.sleep(1)
    assert http.post(f"/v2/{_name('uploads3')}/blobs/uploads/").status_code == 202


def test_a_spoofed_x_forwarded_for_gets_no_fresh_bucket(
    limited_registry: RegistryUnderTest,
) -> None:
    """Nothing on the host (127.0.0.1, which uvicorn's own default believes) can choose the
    address it is counted under: with no trusted proxy configured, X-Forwarded-For is ignored."""
    time.sleep(2)  # a fresh bucket for this client
    answers = [
        limited_registry.http.get("/v2/", headers={"X-Forwarded-For": f"198.51.100.{i}"})
        for i in range(60)
    ]
    statuses = [response.status_code for response in answers]
    assert 429 in statuses, statuses
    assert_error(answers[statuses.index(429)], 429, "TOOMANYREQUESTS")
    time.sleep(2)


@pytest.fixture(scope="module")
def proxied_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    """Rate limited, behind a trusted proxy on 127.0.0.1 (the tests play the proxy)."""
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("registry-proxied"),
        rate_limit_client_per_second="5",
        rate_limit_client_burst="5",
        forwarded_allow_ips="127.0.0.1",
    ) as running:
        yield running


def test_x_forwarded_for_is_believed_from_a_configured_proxy(
    proxied_registry: RegistryUnderTest,
) -> None:
    http = proxied_registry.http
    # Each client the proxy names has a bucket of its own...
    for i in range(20):
        response = http.get("/v2/", headers={"X-Forwarded-For": f"203.0.113.{i}"})
        assert response.status_code == 200, (i, response.text)
    # ...and one client is limited, whoever else the proxy carries.
    statuses = [
        http.get("/v2/", headers={"X-Forwarded-For": "203.0.113.200"}).status_code
        for _ in range(12)
    ]
    assert statuses[:5] == [200] * 5 and 429 in statuses, statuses
    assert http.get("/v2/", headers={"X-Forwarded-For": "203.0.113.201"}).status_code == 200
