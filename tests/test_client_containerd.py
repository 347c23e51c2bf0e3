"""The spec's push and pull workflows driven by containerd, the engine Docker drives: a private
containerd daemon, and ``ctr`` to import OCI image layouts (tests/images.py), push them to the
registry and pull them back into fresh namespaces. A pull fetches every blob again, checks each
digest and unpacks the layers (checking their ``diff_ids``); the registry must hold exactly what
was pushed, byte for byte."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.images import OCI_INDEX, OCI_MANIFEST, Layout, multi_arch_image, single_image
from tests.registry import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, RegistryUnderTest, sha256

pytestmark = pytest.mark.client

CONTAINERD = Path(os.environ.get("CONTAINERD", "/usr/bin/containerd"))
CTR = Path(os.environ.get("CTR", "/usr/bin/ctr"))
REF_NAME = "org.opencontainers.image.ref.name"
ACCEPT_ANY_MANIFEST = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])


CONTAINERD_STREAM_CUT = b"rpc error: code = Internal desc = unexpected EOF"


class CtrFailed(AssertionError):
    """ctr exited non-zero; the message holds its command line and output."""


# --- a private containerd ------------------------------------------------------------------


@dataclass
class Containerd:
    """A containerd daemon of our own: its config, content store, metadata, snapshots and socket
    all live in one temporary folder, so nothing depends on (or touches) the machine's
    containerd."""

    home: Path
    socket: Path
    env: dict[str, str]

    def ctr(
        self, namespace: str, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[bytes]:
        command = [str(CTR), "--address", str(self.socket), "--namespace", namespace, *args]
        for _ in range(3):
            result = subprocess.run(command, env=self.env, capture_output=True, timeout=timeout)
            # Under load, ctr's own gRPC stream from containerd (reading the content it is
            # pushing) sometimes ends early; the push is idempotent, so it is simply run again.
            # Any answer from the registry that ctr refuses fails the test as before.
            if CONTAINERD_STREAM_CUT not in result.stderr:
                break
        if check and result.returncode != 0:
            raise CtrFailed(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout.decode(errors='replace')}\n"
                f"stderr:\n{result.stderr.decode(errors='replace')}"
            )
        return result

    def namespace(self) -> Namespace:
        """A new, empty namespace. The daemon runs with ``content_sharing_policy = "isolated"``:
        a namespace sees only the content that was written in it, so a pull into a fresh
        namespace downloads every blob from the registry."""
        return Namespace(self, f"test-{uuid.uuid4().hex[:12]}")


@dataclass
class Namespace:
    containerd: Containerd
    name: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self.containerd.ctr(self.name, *args, check=check)

    def import_layout(self, layout: Layout, *flags: str) -> None:
        """``ctr images import`` of the layout as an OCI archive (a tar of the layout)."""
        archive = self.containerd.home / "archives" / f"{uuid.uuid4().hex}.tar"
        archive.parent.mkdir(exist_ok=True)
        with tarfile.open(archive, "w") as tar:
            for file in sorted(p for p in layout.path.rglob("*") if p.is_file()):
                tar.add(file, arcname=str(file.relative_to(layout.path)))
        self.run("images", "import", *flags, str(archive))

    def push(self, remote: str, local: str, *flags: str, dump: bool = False) -> list[str]:
        """Push the local image ``local`` as ``remote`` over plain HTTP; with ``dump``, returns
        the requests ctr sent (``METHOD /v2/...``, from its ``--http-dump``)."""
        extra = ("--http-dump",) if dump else ()
        result = self.run("images", "push", "--plain-http", *extra, *flags, remote, local)
        return requests_sent(result.stderr.decode(errors="replace")) if dump else []

    def pull(self, remote: str, *flags: str) -> None:
        """Pull (fetch every blob, check its digest, unpack the layers) over plain HTTP."""
        self.run("images", "pull", "--plain-http", *flags, remote)

    def images(self) -> dict[str, tuple[str, str]]:
        """``ctr images ls``: each image's reference, with its media type and digest."""
        lines = self.run("images", "ls").stdout.decode().splitlines()
        assert lines and lines[0].split()[:3] == ["REF", "TYPE", "DIGEST"], lines
        return {
            ref: (media_type, digest)
            for ref, media_type, digest, *_ in (line.split() for line in lines[1:] if line)
        }

    def check(self, ref: str) -> str:
        """The status ``ctr images check`` gives ``ref`` (``complete (n/n) ... true`` once
        every blob is present and the image is unpacked)."""
        for line in self.run("images", "check").stdout.decode().splitlines()[1:]:
            if line.split()[:1] == [ref]:
                return line
        raise AssertionError(f"ctr images check does not list {ref}")

    def content(self) -> dict[str, dict[str, str]]:
        """``ctr content ls``: every blob in this namespace, with its labels."""
        blobs = {}
        for line in self.run("content", "ls").stdout.decode().splitlines()[1:]:
            # DIGEST SIZE AGE LABELS, aligned with a varying number of tabs.
            digest, _size, _age, *rest = re.split(r"\t+", line.rstrip())
            labels = rest[0] if rest else ""
            blobs[digest] = dict(
                label.split("=", 1)
                for label in labels.split(",")
                if labels.strip() not in ("", "-")
            )
        return blobs

    def blob(self, digest: str) -> bytes:
        return self.run("content", "get", digest).stdout


def requests_sent(http_dump: str) -> list[str]:
    """The ``METHOD /v2/...`` lines of ctr's ``--http-dump`` (logged as it sends them)."""
    found = re.findall(r"\b(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/\S*) HTTP/1\.1", http_dump)
    return [f"{method} {unquote(path)}" for method, path in found]


def _wait_for_socket(process: subprocess.Popen[bytes], containerd: Containerd, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"containerd exited {process.returncode}:\n{log.read_text()}")
        ready = containerd.socket.is_socket()
        if ready and containerd.ctr("default", "version", check=False).returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"containerd did not answer on {containerd.socket} within 30s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    for binary in (CONTAINERD, CTR):
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(
                f"{binary.name} is required for the containerd client tests and was not found "
                f"at {binary} (install Debian's containerd with `make services`, or point "
                f"{binary.name.upper()} at the binary); these tests must not be skipped"
            )
    if os.geteuid() != 0:
        pytest.fail("the containerd client tests run their own containerd, which needs root")
    home = tmp_path_factory.mktemp("containerd")
    socket = home / "containerd.sock"
    # A unix socket's path is at most 107 bytes; containerd also listens on "<socket>.ttrpc".
    assert len(str(socket)) < 100, (
        f"{socket} is too long for a unix socket; use a shorter --basetemp"
    )
    (home / "tmp").mkdir()
    (home / "config.toml").write_text(
        f"""\
version = 2
root = "{home / "root"}"
state = "{home / "state"}"
# No Kubernetes: the CRI plugin would want CNI, a sandbox image and more.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{home / "opt"}"

# Each namespace keeps its own content: a pull into a new namespace downloads every blob
# instead of finding the bytes an earlier import or pull left in the shared store.
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"""
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
    }
    log = home / "containerd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(CONTAINERD), "--config", str(home / "config.toml")],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    daemon = Containerd(home, socket, env)
    try:
        _wait_for_socket(process, daemon, log)
        yield daemon
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- reading OCI image layouts -------------------------------------------------------------


def layout_index(layout: Layout) -> bytes:
    return (layout.path / "index.json").read_bytes()


def tagged(layout: Layout, tag: str = "latest") -> dict[str, Any]:
    """The descriptor ``index.json`` names ``tag``."""
    index = json.loads(layout_index(layout))
    matches = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(matches) == 1, index
    return matches[0]  # type: ignore[no-any-return]


def image_blobs(layout: Layout, manifest_digest: str) -> list[str]:
    """The config digest and the layer digests of one image manifest of the layout."""
    manifest = json.loads(layout.blobs[manifest_digest])
    assert manifest["mediaType"] == OCI_MANIFEST
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def index_children(layout: Layout, index_digest: str) -> dict[str, str]:
    """An image index's manifests, by architecture."""
    index = json.loads(layout.blobs[index_digest])
    assert index["mediaType"] == OCI_INDEX
    return {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}


# --- what the registry holds ---------------------------------------------------------------


def assert_manifest(
    registry: RegistryUnderTest, repo: str, reference: str, body: bytes, media_type: str
) -> None:
    """``reference`` resolves to exactly ``body``, served with its media type and digest."""
    response = registry.http.get(
        f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_ANY_MANIFEST}
    )
    assert response.status_code == 200, (reference, response.text)
    assert response.content == body, reference
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == sha256(body)


def assert_blobs(
    registry: RegistryUnderTest, repo: str, layout: Layout, digests: list[str]
) -> None:
    for digest in digests:
        response = registry.http.get(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 200, (digest, response.text)
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.content == layout.blobs[digest], digest


def assert_pulled(namespace: Namespace, layout: Layout, repo: str, digests: list[str]) -> None:
    """The namespace holds each blob, byte for byte, downloaded from ``repo``: containerd labels
    what it fetched with the repository it came from (``containerd.io/distribution.source``)."""
    content = namespace.content()
    for digest in digests:
        assert digest in content, (digest, sorted(content))
        sources = content[digest].get("containerd.io/distribution.source.127.0.0.1", "")
        assert repo in sources.split(","), (digest, content[digest])
        assert namespace.blob(digest) == layout.blobs[digest], digest


# --- the workflows ------------------------------------------------------------------------


def test_push_and_pull_an_image_imported_with_its_index(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """``ctr images import --index-name`` keeps the layout's own ``index.json`` as the image:
    that index is what ctr pushes under the tag, after the manifest (by digest), the config and
    the layers. A pull into a fresh namespace fetches and unpacks all of it."""
    image = single_image(tmp_path / "image")
    manifest_digest = tagged(image)["digest"]
    blobs = image_blobs(image, manifest_digest)
    assert len(blobs) == 4  # the config and three layers
    index_bytes = layout_index(image)

    local = containerd.namespace()
    local.import_layout(image, "--index-name", f"import/{repo}:layout")
    # ctr does not rewrite the layout's index: its digest is that of index.json, byte for byte.
    assert local.images()[f"import/{repo}:layout"] == (OCI_INDEX, sha256(index_bytes))

    local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:layout")

    assert_manifest(registry, repo, "v1", index_bytes, OCI_INDEX)
    assert_manifest(registry, repo, sha256(index_bytes), index_bytes, OCI_INDEX)
    assert_manifest(registry, repo, manifest_digest, image.blobs[manifest_digest], OCI_MANIFEST)
    assert_blobs(registry, repo, image, blobs)
    tags = registry.http.get(f"/v2/{repo}/tags/list")
    assert tags.json() == {"name": repo, "tags": ["v1"]}

    pulled = containerd.namespace()
    assert pulled.content() == {}
    pulled.pull(f"{registry.host}/{repo}:v1")
    assert pulled.images() == {f"{registry.host}/{repo}:v1": (OCI_INDEX, sha256(index_bytes))}
    assert pulled.images()[f"{registry.host}/{repo}:v1"] == local.images()[f"import/{repo}:layout"]
    status = pulled.check(f"{registry.host}/{repo}:v1")
    assert "complete (4/4)" in status and status.endswith("true"), status
    assert set(pulled.content()) == {sha256(index_bytes), manifest_digest, *blobs}
    assert_pulled(pulled, image, repo, [manifest_digest, *blobs])


def test_push_and_pull_an_image_manifest_by_tag_and_by_digest(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """Imported with ``--base-name``, the image is the manifest itself (what ``docker push``
    sends): the tag resolves to it, and a pull by tag or by digest gives the same image."""
    image = single_image(tmp_path / "image", layer_count=2, layer_size=100_000)
    manifest_digest = tagged(image)["digest"]
    manifest_bytes = image.blobs[manifest_digest]
    blobs = image_blobs(image, manifest_digest)

    local = containerd.namespace()
    local.import_layout(image, "--base-name", f"import/{repo}")
    assert local.images()[f"import/{repo}:latest"] == (OCI_MANIFEST, manifest_digest)
    local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:latest")

    assert_manifest(registry, repo, "v1", manifest_bytes, OCI_MANIFEST)
    assert_manifest(registry, repo, manifest_digest, manifest_bytes, OCI_MANIFEST)
    assert_blobs(registry, repo, image, blobs)

    by_tag = containerd.namespace()
    by_tag.pull(f"{registry.host}/{repo}:v1")
    assert by_tag.images() == {f"{registry.host}/{repo}:v1": (OCI_MANIFEST, manifest_digest)}
    status = by_tag.check(f"{registry.host}/{repo}:v1")
    assert "complete (3/3)" in status and status.endswith("true"), status
    assert_pulled(by_tag, image, repo, [manifest_digest, *blobs])

    by_digest = containerd.namespace()
    by_digest.pull(f"{registry.host}/{repo}@{manifest_digest}")
    assert by_digest.images() == {
        f"{registry.host}/{repo}@{manifest_digest}": (OCI_MANIFEST, manifest_digest)
    }
    assert set(by_digest.content()) == {manifest_digest, *blobs}
    assert_pulled(by_digest, image, repo, [manifest_digest, *blobs])


def test_push_and_pull_a_multi_arch_index(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """An index of two platforms, imported and pushed with every platform: the index, both
    manifests and all their blobs are in the registry; ``--all-platforms`` pulls everything
    back, ``--platform linux/arm64`` only the index and the arm64 image."""
    image = multi_arch_image(tmp_path / "image")
    index_digest = tagged(image)["digest"]
    children = index_children(image, index_digest)
    assert set(children) == {"amd64", "arm64"}
    blobs = {arch: image_blobs(image, digest) for arch, digest in children.items()}
    assert blobs["amd64"][1] == blobs["arm64"][1]  # the shared base layer

    local = containerd.namespace()
    local.import_layout(image, "--base-name", f"import/{repo}", "--all-platforms")
    assert local.images()[f"import/{repo}:latest"] == (OCI_INDEX, index_digest)
    local.push(f"{registry.host}/{repo}:multi", f"import/{repo}:latest")

    assert_manifest(registry, repo, "multi", image.blobs[index_digest], OCI_INDEX)
    for arch, child in children.items():
        assert_manifest(registry, repo, child, image.blobs[child], OCI_MANIFEST)
        assert_blobs(registry, repo, image, blobs[arch])

    everything = containerd.namespace()
    everything.pull(f"{registry.host}/{repo}:multi", "--all-platforms")
    assert everything.images() == {f"{registry.host}/{repo}:multi": (OCI_INDEX, index_digest)}
    every_blob = {*children.values(), *blobs["amd64"], *blobs["arm64"]}
    assert set(everything.content()) == {index_digest, *every_blob}
    assert_pulled(everything, image, repo, sorted(every_blob))

    arm64 = containerd.namespace()
    arm64.pull(f"{registry.host}/{repo}:multi", "--platform", "linux/arm64")
    assert arm64.images() == {f"{registry.host}/{repo}:multi": (OCI_INDEX, index_digest)}
    assert set(arm64.content()) == {index_digest, children["arm64"], *blobs["arm64"]}
    assert_pulled(arm64, image, repo, [children["arm64"], *blobs["arm64"]])


def test_push_and_pull_an_index_of_an_index(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """``--index-name`` on a multi-arch layout keeps its ``index.json``, an index whose one
    entry is the multi-arch index: ctr pushes an index of an index, and pulls it back whole."""
    image = multi_arch_image(tmp_path / "image")
    index_digest = tagged(image)["digest"]
    outer = layout_index(image)
    children = index_children(image, index_digest)
    every_blob = {
        *children.values(),
        *(blob for child in children.values() for blob in image_blobs(image, child)),
    }

    local = containerd.namespace()
    local.import_layout(image, "--index-name", f"import/{repo}:layout", "--all-platforms")
    assert local.images()[f"import/{repo}:layout"] == (OCI_INDEX, sha256(outer))
    local.push(f"{registry.host}/{repo}:nested", f"import/{repo}:layout")

    assert_manifest(registry, repo, "nested", outer, OCI_INDEX)
    assert_manifest(registry, repo, index_digest, image.blobs[index_digest], OCI_INDEX)
    for child in children.values():
        assert_manifest(registry, repo, child, image.blobs[child], OCI_MANIFEST)
        assert_blobs(registry, repo, image, image_blobs(image, child))

    pulled = containerd.namespace()
    pulled.pull(f"{registry.host}/{repo}:nested", "--all-platforms")
    assert pulled.images() == {f"{registry.host}/{repo}:nested": (OCI_INDEX, sha256(outer))}
    assert set(pulled.content()) == {sha256(outer), index_digest, *every_blob}
    assert_pulled(pulled, image, repo, sorted({index_digest, *every_blob}))


def test_push_to_a_second_repository_mounts_every_blob(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """An image pulled from one repository and pushed to another: containerd remembers where
    each blob came from and asks the registry to mount it (``POST ...?mount=&from=``); every
    mount succeeds, so nothing is uploaded."""
    image = single_image(tmp_path / "image", layer_count=2, layer_size=100_000)
    manifest_digest = tagged(image)["digest"]
    blobs = image_blobs(image, manifest_digest)
    second = f"{repo}-second"

    local = containerd.namespace()
    local.import_layout(image, "--base-name", f"import/{repo}")
    local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:latest")

    pulled = containerd.namespace()
    pulled.pull(f"{registry.host}/{repo}:v1")
    sent = pulled.push(f"{registry.host}/{second}:v1", f"{registry.host}/{repo}:v1", dump=True)

    mounts = [
        request.removeprefix(f"POST /v2/{second}/blobs/uploads/?")
        for request in sent
        if request.startswith("POST ")
    ]
    assert sorted(mounts) == sorted(f"mount={digest}&from={repo}" for digest in blobs), sent
    assert not [r for r in sent if r.startswith(("PATCH ", f"PUT /v2/{second}/blobs/"))], sent
    assert f"PUT /v2/{second}/manifests/v1" in sent, sent

    assert_manifest(registry, second, "v1", image.blobs[manifest_digest], OCI_MANIFEST)
    assert_blobs(registry, second, image, blobs)
    again = containerd.namespace()
    again.pull(f"{registry.host}/{second}:v1")
    assert again.images() == {f"{registry.host}/{second}:v1": (OCI_MANIFEST, manifest_digest)}
    assert_pulled(again, image, second, [manifest_digest, *blobs])


def test_pushing_the_same_image_twice_uploads_nothing(
    registry: RegistryUnderTest, repo: str, containerd: Containerd, tmp_path: Path
) -> None:
    """The second push finds every blob and both manifests in place (HEAD answers 200 with the
    right digest), so it uploads nothing and rewrites nothing."""
    image = single_image(tmp_path / "image", layer_count=2, layer_size=50_000)
    manifest_digest = tagged(image)["digest"]
    blobs = image_blobs(image, manifest_digest)
    index_digest = sha256(layout_index(image))

    local = containerd.namespace()
    local.import_layout(image, "--index-name", f"import/{repo}:layout")
    first = local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:layout", dump=True)
    assert sorted(r for r in first if r.startswith("PUT /v2/" + repo + "/manifests/")) == [
        f"PUT /v2/{repo}/manifests/{manifest_digest}",
        f"PUT /v2/{repo}/manifests/v1",
    ], first

    second = local.push(f"{registry.host}/{repo}:v1", f"import/{repo}:layout", dump=True)
    assert sorted(second) == sorted(
        [
            *(f"HEAD /v2/{repo}/blobs/{digest}" for digest in blobs),
            f"HEAD /v2/{repo}/manifests/{manifest_digest}",
            f"HEAD /v2/{repo}/manifests/v1",
        ]
    ), second

    response = registry.http.head(
        f"/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT_ANY_MANIFEST}
    )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == index_digest
    manifests = registry.query(
        "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        " WHERE r.name = :name",
        name=repo,
    )
    assert sorted(row.digest for row in manifests) == sorted([index_digest, manifest_digest])
