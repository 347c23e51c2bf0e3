"""Pull-through mirrors: namespaces of this registry that mirror other registries
(``shared.mirrors``), against real upstreams on loopback (Debian's docker-registry, anonymous
and behind htpasswd; a registry that sends wrong bytes), pulled through with skopeo.

The mirrors file of the registry under test:

- ``hub``: the open upstream, with Docker Hub's ``library/`` rule, answering ``?ns=docker.io``,
  its tags checked upstream at most once an hour;
- ``fresh``: the open upstream, its tags checked at every request;
- ``down``: an upstream the tests stop and start again;
- ``private``: an upstream behind htpasswd, the mirror's password in a file of its own;
- ``bad``: an upstream that sends a blob whose bytes are not its digest's.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared import users
from shared.web import FOLLOW_UPLOAD_HEADER, SERVE_LOCALLY_HEADER, UPLOAD_KEY_HEADER
from tests.conftest import BACKENDS, running_registry
from tests.docker_engine import DockerEngine
from tests.images import Layout, multi_arch_image, single_image
from tests.podman import private_podman
from tests.registry import OCI_MANIFEST, RegistryUnderTest, error_codes, eventually, sha256
from tests.test_auth import make_skopeo
from tests.test_blob_pulls import sendfile_bytes
from tests.test_client_containerd import Containerd, containerd  # noqa: F401 (a fixture)
from tests.test_client_skopeo import (
    Skopeo,
    assert_same_image,
    image_digests,
    layout_blobs,
    tagged,
)
from tests.test_janitor_faults import Database
from tests.test_operations import metric, service_urls
from tests.upstreams import ReferenceRegistry, fixed_registry, reference_registry

ACCEPT = {"Accept": OCI_MANIFEST}
CORRUPT_LAYER = b"the bytes the upstream should send"
PASSWORD = "s3cret"


@dataclass
class Upstreams:
    open: ReferenceRegistry
    down: ReferenceRegistry
    private: ReferenceRegistry
    token: RegistryUnderTest  # a registry of ours that takes bearer tokens only
    bad_url: str
    bad_layer: str  # the digest the bad upstream sends other bytes for
    bad_manifest: str
    skopeo: Skopeo

    def push(
        self,
        upstream: ReferenceRegistry | RegistryUnderTest,
        layout: Layout,
        name: str,
        *flags: str,
    ) -> str:
        """Copy the layout's image to ``name`` (repository:tag) at ``upstream``; its digest."""
        needs_login = upstream is self.token or getattr(upstream, "users", None)
        options = ["--dest-creds", f"mirror:{PASSWORD}"] if needs_login else []
        digest, _ = self.skopeo.push(
            layout, f"docker://{upstream.url[7:]}/{name}", *options, *flags
        )
        return digest


def _bad_upstream() -> tuple[dict[str, tuple[int, dict[str, str], bytes]], str, str]:
    """A manifest whose layer the upstream answers with other bytes."""
    config = b"{}"
    layer_digest = sha256(CORRUPT_LAYER)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(CORRUPT_LAYER),
                }
            ],
        }
    ).encode()
    manifest_digest = sha256(manifest)
    wrong = b"other bytes than the digest says"
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": manifest_digest}
    answers = {
        "/v2/": (200, {"Content-Type": "application/json"}, b"{}"),
        "/v2/app/manifests/v1": (200, headers, manifest),
        f"/v2/app/manifests/{manifest_digest}": (200, headers, manifest),
        f"/v2/app/blobs/{layer_digest}": (200, {"Content-Type": "application/octet-stream"}, wrong),
        # A manifest asked for by a digest its bytes do not have.
        f"/v2/app/manifests/{sha256(b'x')}": (200, {"Content-Type": OCI_MANIFEST}, manifest),
    }
    return answers, layer_digest, manifest_digest


@contextmanager
def _token_registry(root: Path) -> Iterator[RegistryUnderTest]:
    """A registry of ours whose one user, the mirror, may pull and push everything, with
    bearer tokens only (no anonymous access)."""
    root.mkdir()
    document = {
        "users": {"mirror": {"password_hash": users.hash_password(PASSWORD, 4)}},
        "grants": [{"repositories": ["*"], "users": ["mirror"], "actions": ["pull", "push"]}],
    }
    users.write_document(root / "users.yaml", document)
    with running_registry(
        "sqlite",
        root,
        auth="token",
        auth_users_file=str(root / "users.yaml"),
        internal_secret=secrets.token_urlsafe(16),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    root = tmp_path_factory.mktemp("upstreams")
    answers, bad_layer, bad_manifest = _bad_upstream()
    with (
        reference_registry(root / "open") as open_upstream,
        reference_registry(root / "down") as down,
        reference_registry(root / "private", users={"mirror": PASSWORD}) as private,
        _token_registry(root / "token") as token,
        fixed_registry(answers) as bad_url,
    ):
        yield Upstreams(
            open_upstream,
            down,
            private,
            token,
            bad_url,
            bad_layer,
            bad_manifest,
            make_skopeo(root / "skopeo"),
        )


def _mirrors_file(root: Path, upstreams: Upstreams) -> Path:
    (root / "private-password").write_text(f"{PASSWORD}\n")
    document = {
        "mirrors": {
            "hub": {
                "url": upstreams.open.url,
                "library": True,
                "hosts": ["docker.io"],
                "default": True,
                "tag_check_seconds": 3600,
            },
            "fresh": {"url": upstreams.open.url, "tag_check_seconds": 0},
            "down": {"url": upstreams.down.url, "tag_check_seconds": 0},
            "private": {
                "url": upstreams.private.url,
                "username": "mirror",
                "password_file": "private-password",
            },
            "bad": {"url": upstreams.bad_url},
            "token": {
                "url": upstreams.token.url,
                "username": "mirror",
                "password_file": "private-password",
            },
        }
    }
    path = root / "mirrors.yml"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams
) -> Iterator[RegistryUnderTest]:
    root = tmp_path_factory.mktemp(f"mirrors-{request.param}")
    mirrors_file = _mirrors_file(root, upstreams)
    with running_registry(request.param, root, mirrors_file=str(mirrors_file)) as running:
        yield running


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def _stale_count(registry: RegistryUnderTest) -> float:
    text = httpx.get(f"{service_urls(registry)['manifest-service']}/metrics").text
    return metric(text, "registry_mirror_requests_total", kind="manifest", result="stale")


def _manifest(registry: RegistryUnderTest, name: str, reference: str) -> httpx.Response:
    return registry.http.get(f"/v2/{name}/manifests/{reference}", headers=ACCEPT)


# --- pulling through ---------------------------------------------------------------------


def test_a_cold_pull_fetches_the_image_and_a_warm_pull_is_served_from_the_cache(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image")
    name = _name("app")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    # hub/<one word> is library/<one word> at the upstream (Docker Hub's rule).
    source = f"docker://{registry.host}/hub/{name}:v1"

    cold = upstreams.skopeo.pull(source, tmp_path / "cold")
    assert_same_image(image, cold)
    assert tagged(cold)["digest"] == pushed
    config, layers = image_digests(image.path, pushed)
    fetched = {d: upstreams.open.requests("GET", f"/blobs/{d}") for d in [config, *layers]}
    assert all(count == 1 for count in fetched.values()), fetched

    warm = upstreams.skopeo.pull(source, tmp_path / "warm")
    assert layout_blobs(warm) == layout_blobs(cold)
    again = {d: upstreams.open.requests("GET", f"/blobs/{d}") for d in fetched}
    assert again == fetched, "a warm pull fetched blobs from the upstream again"
    answer = _manifest(registry, f"hub/{name}", "v1")
    assert answer.headers["cache-status"] == "registry; hit"
    assert answer.headers["docker-content-digest"] == pushed


def test_an_index_and_its_images_are_pulled_through(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = multi_arch_image(tmp_path / "image")
    name = _name("multi")
    pushed = upstreams.push(upstreams.open, image, f"{name}/app:v1", "--all")
    pulled = tmp_path / "pulled"
    upstreams.skopeo.pull(f"docker://{registry.host}/hub/{name}/app:v1", pulled, "--all")
    assert tagged(pulled)["digest"] == pushed
    assert layout_blobs(pulled) == layout_blobs(image.path)


def test_containerd_ns_parameter_names_the_upstream(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=1)
    name = _name("ns")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    answer = registry.http.get(
        f"/v2/library/{name}/manifests/v1", params={"ns": "docker.io"}, headers=ACCEPT
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["docker-content-digest"] == pushed
    # The same repository as hub/library/<name>: one copy.
    assert (
        _manifest(registry, f"hub/library/{name}", "v1").headers["cache-status"] == "registry; hit"
    )
    unknown = registry.http.get(
        f"/v2/library/{name}/manifests/v1", params={"ns": "quay.io"}, headers=ACCEPT
    )
    assert unknown.status_code == 404
    assert error_codes(unknown) == ["NAME_UNKNOWN"]


def test_hubs_short_and_library_names_share_one_copy(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=1)
    name = _name("short")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    _, (layer,) = image_digests(image.path, pushed)
    short = _manifest(registry, f"hub/{name}", "v1")
    assert short.status_code == 200, short.text
    assert short.headers["docker-content-digest"] == pushed
    assert registry.http.get(f"/v2/hub/{name}/blobs/{layer}").status_code == 200
    # hub/<name> is library/<name> upstream, and kept as hub/library/<name>: one copy.
    for path in (f"hub/{name}", f"hub/library/{name}"):
        assert _manifest(registry, path, "v1").headers["cache-status"] == "registry; hit"
        blob = registry.http.get(f"/v2/{path}/blobs/{layer}")
        assert blob.headers["cache-status"] == "registry; hit"
        listed = registry.http.get(f"/v2/{path}/tags/list")
        assert listed.json() == {"name": path, "tags": ["v1"]}
    assert upstreams.open.requests("GET", f"/library/{name}/manifests/v1") == 1
    assert upstreams.open.requests("GET", f"/library/{name}/blobs/{layer}") == 1
    assert registry.query(
        "SELECT name FROM repositories WHERE name LIKE :pattern", pattern=f"hub/%{name}"
    ) == [(f"hub/library/{name}",)]


def test_pushes_and_deletes_in_a_mirrored_namespace_are_denied(
    registry: RegistryUnderTest,
) -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    attempts = [
        registry.http.post("/v2/hub/app/blobs/uploads/"),
        registry.http.post(f"/v2/hub/app/blobs/uploads/?digest={sha256(b'a')}", content=b"a"),
        registry.http.put(
            "/v2/hub/app/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST}
        ),
        registry.http.delete(f"/v2/hub/app/manifests/{sha256(manifest)}"),
        registry.http.delete(f"/v2/fresh/app/blobs/{sha256(b'a')}"),
        registry.http.post("/v2/library/app/blobs/uploads/", params={"ns": "docker.io"}),
    ]
    for answer in attempts:
        assert answer.status_code == 403, (answer.request.url, answer.text)
        assert error_codes(answer) == ["DENIED"]
        assert "read-only mirror" in answer.json()["errors"][0]["detail"]
    # A namespace that is not a mirror is an ordinary repository.
    own = registry.http.post(f"/v2/hubx/app/blobs/uploads/?digest={sha256(b'a')}", content=b"a")
    assert own.status_code == 201, own.text


def test_sixteen_concurrent_pulls_of_one_uncached_blob_fetch_it_once(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=1, layer_size=8 * 1024 * 1024)
    name = _name("crowd")
    pushed = upstreams.push(upstreams.open, image, f"{name}/app:v1")
    _, (layer,) = image_digests(image.path, pushed)
    path = f"/v2/hub/{name}/app/blobs/{layer}"

    def pull(_: int) -> tuple[str, str]:
        with httpx.Client(base_url=registry.url, timeout=120) as client:
            answer = client.get(path)
        assert answer.status_code == 200, answer.text
        return sha256(answer.content), answer.headers["cache-status"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(pull, range(16)))
    assert {digest for digest, _ in answers} == {layer}
    assert upstreams.open.requests("GET", f"/blobs/{layer}") == 1
    # One request fetched (and streamed it as it came); the others waited for it, or came
    # after it was stored.
    statuses = [status for _, status in answers]
    assert statuses.count("registry; fwd=miss; stored") == 1, statuses


def test_sixteen_concurrent_pulls_of_one_uncached_manifest_ask_the_upstream_once(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    name = f"{_name('crowd')}/app"
    tagged = upstreams.push(upstreams.open, single_image(tmp_path / "one", 1), f"{name}:v1")
    other = upstreams.push(upstreams.open, single_image(tmp_path / "two", 1), f"{name}:v2")

    def pull(reference: str) -> tuple[str, str]:
        with httpx.Client(base_url=registry.url, timeout=60) as client:
            answer = client.get(f"/v2/hub/{name}/manifests/{reference}", headers=ACCEPT)
        assert answer.status_code == 200, answer.text
        return answer.headers["docker-content-digest"], answer.headers["cache-status"]

    for reference, digest in (("v1", tagged), (other, other)):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(pull, [reference] * 16))
        assert {served for served, _ in answers} == {digest}
        # One request asked the upstream (a GET: with nothing stored, no HEAD first); the
        # others waited for what it stored, or came after.
        assert upstreams.open.requests("GET", f"/{name}/manifests/{reference}") == 1
        assert upstreams.open.requests("HEAD", f"/{name}/manifests/{reference}") == 0
        statuses = [status for _, status in answers]
        assert statuses.count("registry; fwd=miss; stored") == 1, statuses
        assert set(statuses) <= {
            "registry; fwd=miss; stored",
            "registry; fwd=miss; collapsed",
            "registry; hit",
        }, statuses


def test_a_blob_fetched_while_it_is_pulled_is_sent_from_its_file_as_it_is_written(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=2, layer_size=8 * 1024 * 1024)
    name = _name("followed")
    pushed = upstreams.push(upstreams.open, image, f"{name}/app:v1")
    _, (layer, other) = image_digests(image.path, pushed)
    before = sendfile_bytes(registry)
    answer = registry.http.get(f"/v2/hub/{name}/app/blobs/{layer}", timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-status"] == "registry; fwd=miss; stored"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert sha256(answer.content) == layer
    # On files the gateway can read, its kernel sent the bytes from the upload's file; on
    # OSS they were relayed from the blob service.
    sent = sendfile_bytes(registry) - before
    assert sent == (0 if registry.oss is not None else len(answer.content))
    # A gateway on another machine (another kernel) is sent the bytes, never the file's key:
    # it could see the file grown before its bytes.
    direct = httpx.get(
        f"{service_urls(registry)['blob-service']}/v2/hub/{name}/app/blobs/{other}",
        headers={SERVE_LOCALLY_HEADER: "1", FOLLOW_UPLOAD_HEADER: "another-machine"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    assert direct.headers["cache-status"] == "registry; fwd=miss; stored"
    assert UPLOAD_KEY_HEADER not in direct.headers
    assert sha256(direct.content) == other


def test_a_client_that_stops_reading_holds_no_one_up(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=1, layer_size=32 * 1024 * 1024)
    name = _name("stalled")
    pushed = upstreams.push(upstreams.open, image, f"{name}/app:v1")
    _, (layer,) = image_digests(image.path, pushed)
    path = f"/v2/hub/{name}/app/blobs/{layer}"
    host, port = registry.host.split(":")
    # The first request starts the fetch, and its client reads nothing.
    stalled = socket.create_connection((host, int(port)))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: {registry.host}\r\n\r\n".encode())
    try:
        eventually(lambda: upstreams.open.requests("GET", f"/blobs/{layer}") == 1, what="fetch")
        answer = registry.http.get(path, timeout=60)
        assert answer.status_code == 200
        assert sha256(answer.content) == layer
    finally:
        stalled.close()
    assert upstreams.open.requests("GET", f"/blobs/{layer}") == 1


# --- tags: checked upstream at most once an interval -------------------------------------


def test_a_tag_moved_upstream_is_seen_once_its_interval_has_passed(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    name = f"{_name('moving')}/app"  # two components: no library/ rule at hub
    first = upstreams.push(upstreams.open, single_image(tmp_path / "one", 1), f"{name}:v1")
    assert _manifest(registry, f"fresh/{name}", "v1").headers["docker-content-digest"] == first
    assert _manifest(registry, f"hub/{name}", "v1").headers["docker-content-digest"] == first

    second = upstreams.push(upstreams.open, single_image(tmp_path / "two", 1), f"{name}:v1")
    assert second != first
    # fresh checks at every request; hub within its hour serves what it has, asking nothing.
    heads = upstreams.open.requests("HEAD", f"/{name}/manifests/v1")
    moved = _manifest(registry, f"fresh/{name}", "v1")
    assert moved.headers["docker-content-digest"] == second
    assert moved.headers["cache-status"] == "registry; fwd=miss; stored"
    assert upstreams.open.requests("HEAD", f"/{name}/manifests/v1") == heads + 1
    kept = _manifest(registry, f"hub/{name}", "v1")
    assert kept.headers["docker-content-digest"] == first
    assert kept.headers["cache-status"] == "registry; hit"
    assert upstreams.open.requests("HEAD", f"/{name}/manifests/v1") == heads + 1
    # The tag as checked: unchanged at the upstream, served from the cache after a HEAD.
    same = _manifest(registry, f"fresh/{name}", "v1")
    assert same.headers["docker-content-digest"] == second
    assert same.headers["cache-status"] == "registry; hit"
    assert upstreams.open.requests("HEAD", f"/{name}/manifests/v1") == heads + 2


# --- the upstream fails ------------------------------------------------------------------


def test_with_the_upstream_stopped_cached_content_is_served_and_the_rest_is_unavailable(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=2)
    name = _name("stopping")
    pushed = upstreams.push(upstreams.down, image, f"{name}:v1")
    upstreams.push(upstreams.down, single_image(tmp_path / "other", 1), f"{name}:v2")
    upstreams.skopeo.pull(f"docker://{registry.host}/down/{name}:v1", tmp_path / "cached")
    before = _stale_count(registry)

    upstreams.down.stop()
    try:
        stale = _manifest(registry, f"down/{name}", "v1")
        assert stale.status_code == 200, stale.text
        assert stale.headers["docker-content-digest"] == pushed
        assert stale.headers["cache-status"] == 'registry; hit; detail="upstream unavailable"'
        assert _stale_count(registry) == before + 1
        again = upstreams.skopeo.pull(
            f"docker://{registry.host}/down/{name}:v1", tmp_path / "again"
        )
        assert_same_image(image, again)

        uncached = _manifest(registry, f"down/{name}", "v2")
        assert uncached.status_code == 503, uncached.text
        assert error_codes(uncached) == ["UNAVAILABLE"]
        blob = registry.http.get(f"/v2/down/{name}/blobs/{sha256(b'never fetched')}")
        assert blob.status_code == 503, blob.text
        assert error_codes(blob) == ["UNAVAILABLE"]
    finally:
        upstreams.down.start()
    assert _manifest(registry, f"down/{name}", "v2").status_code == 200


def test_an_upstream_sending_wrong_bytes_is_refused_and_nothing_is_cached(
    registry: RegistryUnderTest, upstreams: Upstreams
) -> None:
    manifest = _manifest(registry, "bad/app", "v1")
    assert manifest.status_code == 200, manifest.text
    assert manifest.headers["docker-content-digest"] == upstreams.bad_manifest
    # A whole GET is streamed as it is fetched: its transfer is cut short, the last chunk
    # never sent. A HEAD waits for the fetch: 503.
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            registry.http.get(f"/v2/bad/app/blobs/{upstreams.bad_layer}")
        head = registry.http.head(f"/v2/bad/app/blobs/{upstreams.bad_layer}")
        assert head.status_code == 503
    assert not registry.query(
        "SELECT digest FROM blobs WHERE digest = :digest", digest=upstreams.bad_layer
    )
    hex_digest = upstreams.bad_layer.removeprefix("sha256:")
    assert not [path for path in registry.stored_files() if hex_digest in path]
    # The upload the fetch wrote to is gone too (the janitor deletes its object).
    eventually(registry.storage_matches_database, what="storage as the database says")
    wrong = _manifest(registry, "bad/app", sha256(b"x"))
    assert wrong.status_code == 503, wrong.text
    assert not registry.query("SELECT digest FROM manifests WHERE digest = :d", d=sha256(b"x"))


def test_an_upstream_behind_htpasswd_is_pulled_with_the_mirrors_credentials(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=1)
    name = _name("private")
    pushed = upstreams.push(upstreams.private, image, f"{name}:v1")
    pulled = upstreams.skopeo.pull(f"docker://{registry.host}/private/{name}:v1", tmp_path / "p")
    assert tagged(pulled)["digest"] == pushed
    assert_same_image(image, pulled)


# --- the clients' own mirror settings ----------------------------------------------------


def test_the_docker_engine_pulls_hub_images_through_its_registry_mirror(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    """dockerd's ``registry-mirrors`` sends Docker Hub's names as they are (``library/x``):
    the default mirror answers them, since no own repository has them."""
    image = single_image(tmp_path / "image", layer_count=2)
    name = _name("engine")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    with DockerEngine(tmp_path / "docker", registry_mirrors=[registry.url]) as engine:
        engine.docker("pull", f"{name}:v1")
        assert f"{name}@{pushed}" in engine.repo_digests(f"{name}:v1")
    # Stored under the default mirror's namespace.
    stored = _manifest(registry, f"hub/library/{name}", "v1")
    assert stored.headers["cache-status"] == "registry; hit"


def test_containerd_pulls_through_a_hosts_toml_mirror(
    registry: RegistryUnderTest,
    upstreams: Upstreams,
    containerd: Containerd,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """containerd's ``hosts.toml`` mirror: requests carry ``?ns=docker.io``."""
    image = single_image(tmp_path / "image", layer_count=2)
    name = _name("ctr")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    hosts = tmp_path / "certs.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."{registry.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    namespace = containerd.namespace()
    namespace.run("images", "pull", "--hosts-dir", str(hosts), f"docker.io/library/{name}:v1")
    assert namespace.images()[f"docker.io/library/{name}:v1"][1] == pushed
    assert (
        _manifest(registry, f"hub/library/{name}", "v1").headers["cache-status"] == "registry; hit"
    )


def test_podman_pulls_through_a_registries_conf_mirror(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    """podman and CRI-O (containers/image's ``registries.conf``) put the mirror's location in
    front of the rest of the name: ``<registry>/hub/library/<name>``."""
    image = single_image(tmp_path / "image", layer_count=2)
    name = _name("podman")
    pushed = upstreams.push(upstreams.open, image, f"library/{name}:v1")
    with private_podman(tmp_path) as podman:
        with (podman.home / "registries.conf").open("a") as conf:
            conf.write(
                '\n[[registry]]\nprefix = "docker.io"\nlocation = "registry-1.docker.io"\n'
                f'\n[[registry.mirror]]\nlocation = "{registry.host}/hub"\ninsecure = true\n'
            )
        podman.pull(f"docker.io/library/{name}:v1")
        assert podman.inspect(f"docker.io/library/{name}:v1")["Digest"] == pushed
    assert (
        _manifest(registry, f"hub/library/{name}", "v1").headers["cache-status"] == "registry; hit"
    )


def test_an_upstream_asking_for_bearer_tokens_gets_them_from_its_token_service(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    image = single_image(tmp_path / "image", layer_count=3)
    name = _name("tokens")
    pushed = upstreams.push(upstreams.token, image, f"{name}/app:v1")
    anonymous = httpx.get(f"{upstreams.token.url}/v2/{name}/app/manifests/v1", headers=ACCEPT)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer ")

    def tokens_issued() -> float:
        text = httpx.get(f"{upstreams.token.url}/metrics").text
        return metric(text, "registry_http_requests_total", route="/auth/token", status="200")

    before = tokens_issued()
    pulled = upstreams.skopeo.pull(
        f"docker://{registry.host}/token/{name}/app:v1", tmp_path / "pulled"
    )
    assert tagged(pulled)["digest"] == pushed
    assert_same_image(image, pulled)
    # A token per process that fetched (the manifest service, the blob service), kept for
    # the rest: not one per request.
    assert 1 <= tokens_issued() - before <= 2


# --- lifetime: expiry and purge ------------------------------------------------------------


def test_what_is_not_pulled_expires_and_a_purge_forgets_a_namespace(
    registry: RegistryUnderTest, upstreams: Upstreams, tmp_path: Path
) -> None:
    name = _name("expiry")
    old, new = single_image(tmp_path / "old", 1), single_image(tmp_path / "new", 1)
    old_digest = upstreams.push(upstreams.open, old, f"{name}/old:v1")
    new_digest = upstreams.push(upstreams.open, new, f"{name}/new:v1")
    # The new image under a second tag too, that one not pulled since (aged below): its
    # manifest stays, v1 still names it.
    upstreams.push(upstreams.open, new, f"{name}/new:v0")
    assert _manifest(registry, f"fresh/{name}/new", "v0").status_code == 200
    for image in ("old", "new"):
        pulled = tmp_path / f"pulled-{image}"
        upstreams.skopeo.pull(f"docker://{registry.host}/fresh/{name}/{image}:v1", pulled)
    # Two hours pass for the old image, never pulled since: its tag last checked then, its
    # manifest fetched then.
    database = Database(registry)
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).replace(tzinfo=None)
    old_repository = "(SELECT id FROM repositories WHERE name = :name)"
    database.execute(
        f"UPDATE tags SET updated_at = :past WHERE repository_id = {old_repository}",
        past=past,
        name=f"fresh/{name}/old",
    )
    database.execute(
        f"UPDATE manifests SET created_at = :past WHERE repository_id = {old_repository}",
        past=past,
        name=f"fresh/{name}/old",
    )
    database.execute(
        "UPDATE tags SET updated_at = :past"
        f" WHERE name = 'v0' AND repository_id = {old_repository}",
        past=past,
        name=f"fresh/{name}/new",
    )
    database.execute(
        f"UPDATE manifests SET created_at = :past WHERE repository_id = {old_repository}",
        past=past,
        name=f"fresh/{name}/new",
    )
    database.close()

    admin_ok(registry, "mirrors", "expire", "--namespace", "fresh", "--older-than", "1h")
    assert not _manifests_of(registry, f"fresh/{name}/old")
    assert _manifests_of(registry, f"fresh/{name}/new") == [new_digest]
    assert [
        tag
        for (tag,) in registry.query(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id"
            " WHERE r.name = :name",
            name=f"fresh/{name}/new",
        )
    ] == ["v1"]
    _, (old_layer,) = image_digests(old.path, old_digest)
    _, (new_layer,) = image_digests(new.path, new_digest)
    assert registry.query("SELECT 1 FROM blobs WHERE digest = :d", d=new_layer), "before gc"
    admin_ok(registry, "gc", "--grace", "0s")
    assert not registry.query("SELECT 1 FROM blobs WHERE digest = :d", d=old_layer)
    assert registry.query("SELECT 1 FROM blobs WHERE digest = :d", d=new_layer)
    eventually(registry.storage_matches_database, what="storage as the database says")
    # What expired is fetched again when it is pulled again.
    again = upstreams.skopeo.pull(f"docker://{registry.host}/fresh/{name}/old:v1", tmp_path / "a")
    assert_same_image(old, again)

    listed = admin_ok(registry, "mirrors", "list")
    assert f"fresh/ <- {upstreams.open.url}:" in listed
    admin_ok(registry, "mirrors", "purge", "fresh")
    assert not registry.query(
        "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        " WHERE r.name LIKE 'fresh/%'"
    )
    assert "fresh/ <- " in admin_ok(registry, "mirrors", "list")
    assert _manifest(registry, f"fresh/{name}/new", "v1").headers["cache-status"] == (
        "registry; fwd=miss; stored"
    )


def _manifests_of(registry: RegistryUnderTest, name: str) -> list[str]:
    return [
        digest
        for (digest,) in registry.query(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
            " WHERE r.name = :name",
            name=name,
        )
    ]


def admin_ok(registry: RegistryUnderTest, *args: str) -> str:
    result = registry.admin(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout
