"""The spec's push and pull workflows driven by a real client: skopeo copies OCI image layouts
(tests/images.py) into the registry and back out, inspects, lists tags and deletes. Every digest
the client sees must be the one that was pushed, byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.images import OCI_INDEX, OCI_MANIFEST, Layout, multi_arch_image, single_image
from tests.registry import RegistryUnderTest, error_codes, sha256

pytestmark = pytest.mark.client

SKOPEO = Path(os.environ.get("SKOPEO", "/usr/bin/skopeo"))
REF_NAME = "org.opencontainers.image.ref.name"


class SkopeoFailed(AssertionError):
    """skopeo exited non-zero; the message holds its command line and output."""


@dataclass
class Skopeo:
    """skopeo with its own policy, registries.conf, auth file, temp and cache folders, so
    nothing depends on the machine's or the user's container configuration."""

    home: Path
    env: dict[str, str]

    @property
    def base_command(self) -> list[str]:
        return [
            str(SKOPEO),
            "--policy", str(self.home / "policy.json"),
            "--registries.d", str(self.home / "registries.d"),
            "--tmpdir", str(self.home / "tmp"),
            "--command-timeout", "120s",
        ]  # fmt: skip

    def run(
        self, *args: str, check: bool = True, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``skopeo <options> <args>``; ``options`` are skopeo's global flags."""
        command = [*self.base_command, *options, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, timeout=180)
        if check and result.returncode != 0:
            raise SkopeoFailed(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout.decode(errors='replace')}\n"
                f"stderr:\n{result.stderr.decode(errors='replace')}"
            )
        return result

    def remote_flags(self, *tls_flags: str) -> list[str]:
        """Plain HTTP, this test's (empty) auth file, and no retries: a failure shows at once."""
        tls = [f"{flag}=false" for flag in tls_flags]
        return [*tls, "--authfile", str(self.home / "auth.json"), "--retry-times", "0"]

    def copy(
        self, source: str, destination: str, *flags: str, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        remote = self.remote_flags("--src-tls-verify", "--dest-tls-verify")
        return self.run("copy", *remote, *flags, source, destination, options=options)

    def push(
        self, layout: Layout, destination: str, *flags: str, debug: bool = False
    ) -> tuple[str, str]:
        """Copy the layout's ``latest`` to ``destination``; returns the pushed manifest digest
        (skopeo's ``--digestfile``) and, with ``debug``, skopeo's debug log of the requests."""
        digest_file = self.home / "tmp" / "digest"
        digest_file.unlink(missing_ok=True)
        result = self.copy(f"oci:{layout.path}:latest", destination, "--preserve-digests",
                           "--digestfile", str(digest_file), *flags,
                           options=("--debug",) if debug else ())  # fmt: skip
        return digest_file.read_text().strip(), result.stderr.decode()

    def pull(self, source: str, path: Path, *flags: str) -> Path:
        self.copy(source, f"oci:{path}:latest", "--preserve-digests", *flags)
        return path

    def inspect(
        self, image: str, *flags: str, check: bool = True, options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run(
            "inspect",
            *self.remote_flags("--tls-verify"),
            *flags,
            image,
            check=check,
            options=options,
        )

    def list_tags(self, repository: str) -> dict[str, Any]:
        result = self.run("list-tags", *self.remote_flags("--tls-verify"), repository)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def delete(self, image: str) -> subprocess.CompletedProcess[bytes]:
        return self.run("delete", *self.remote_flags("--tls-verify"), image)


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    if not (SKOPEO.is_file() and os.access(SKOPEO, os.X_OK)):
        pytest.fail(
            f"skopeo is required for the client tests and was not found at {SKOPEO} "
            "(install it with `make services`, or point SKOPEO at the binary); "
            "these tests must not be skipped"
        )
    home = tmp_path / "skopeo"
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
    }
    if os.geteuid() == 0:
        # As root, containers/image keeps its blob-info cache (which blobs it has seen in which
        # repository, the source of its mount attempts) in /var/lib/containers. This variable,
        # read by containers/image's rootless check, moves it under XDG_DATA_HOME: each test
        # starts with an empty cache and leaves nothing behind.
        env["_CONTAINERS_ROOTLESS_UID"] = "65534"
    return Skopeo(home, env)


# --- reading OCI image layouts -------------------------------------------------------------


def layout_blobs(path: Path) -> dict[str, bytes]:
    """Every blob of a layout, checked to hash to its file name."""
    blobs = {}
    for file in sorted((path / "blobs" / "sha256").iterdir()):
        data = file.read_bytes()
        assert hashlib.sha256(data).hexdigest() == file.name, f"{file} does not hash to its name"
        blobs[f"sha256:{file.name}"] = data
    return blobs


def tagged(path: Path, tag: str = "latest") -> dict[str, Any]:
    """The descriptor ``index.json`` names ``tag``."""
    index = json.loads((path / "index.json").read_text())
    matches = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    assert len(matches) == 1, index
    return matches[0]  # type: ignore[no-any-return]


def blob_json(path: Path, digest: str) -> dict[str, Any]:
    data = (path / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    return json.loads(data)  # type: ignore[no-any-return]


def image_digests(path: Path, manifest_digest: str) -> tuple[str, list[str]]:
    """The config digest and the layer digests of one image manifest of a layout."""
    manifest = blob_json(path, manifest_digest)
    assert manifest["mediaType"] == OCI_MANIFEST
    return manifest["config"]["digest"], [layer["digest"] for layer in manifest["layers"]]


def assert_same_image(pushed: Layout, pulled: Path) -> None:
    """The pulled layout holds the pushed image: the same manifest, config and layer digests,
    and exactly the same blobs, byte for byte."""
    pushed_digest = tagged(pushed.path)["digest"]
    assert tagged(pulled)["digest"] == pushed_digest
    assert image_digests(pulled, pushed_digest) == image_digests(pushed.path, pushed_digest)
    assert layout_blobs(pulled) == layout_blobs(pushed.path)


def skipped_blobs(debug_log: str) -> set[str]:
    """The blobs skopeo did not upload because the registry already had them in the target
    repository, or mounted them there (its debug log's ``Skipping blob <digest>`` lines)."""
    return set(re.findall(r"Skipping blob (sha256:[0-9a-f]{64}) \(already present\)", debug_log))


def uploaded_blobs(debug_log: str) -> set[str]:
    """The blobs skopeo uploaded (the digest of each upload's closing PUT)."""
    return {
        unquote(d)
        for d in re.findall(r"PUT \S+/blobs/uploads/\S+\?digest=(sha256%3A[0-9a-f]{64})", debug_log)
    }


# --- the workflows ------------------------------------------------------------------------


def test_push_and_pull_a_multi_layer_image(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Push an image, pull it back: every digest and every byte is what was pushed."""
    image = single_image(tmp_path / "pushed")
    manifest_digest = tagged(image.path)["digest"]
    manifest_bytes = image.blobs[manifest_digest]
    config_digest, layer_digests = image_digests(image.path, manifest_digest)
    assert len(layer_digests) == 3

    pushed_digest, _ = skopeo.push(image, f"docker://{registry.host}/{repo}:v1")
    assert pushed_digest == manifest_digest

    raw = skopeo.inspect(f"docker://{registry.host}/{repo}:v1", "--raw").stdout
    assert raw == manifest_bytes
    raw_config = skopeo.inspect(f"docker://{registry.host}/{repo}:v1", "--raw", "--config").stdout
    assert raw_config == image.blobs[config_digest]
    details = json.loads(skopeo.inspect(f"docker://{registry.host}/{repo}:v1").stdout)
    assert details["Digest"] == manifest_digest
    assert details["Layers"] == layer_digests
    assert details["RepoTags"] == ["v1"]

    pulled = skopeo.pull(f"docker://{registry.host}/{repo}:v1", tmp_path / "pulled")
    assert tagged(pulled)["digest"] == manifest_digest
    assert image_digests(pulled, manifest_digest) == (config_digest, layer_digests)
    assert_same_image(image, pulled)

    by_digest = skopeo.pull(
        f"docker://{registry.host}/{repo}@{manifest_digest}", tmp_path / "by-digest"
    )
    assert_same_image(image, by_digest)


def test_push_and_pull_a_multi_arch_index(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Push an index with --all, pull it back with --all: the index, every child manifest and
    every blob are identical; a platform's image resolves through the index."""
    image = multi_arch_image(tmp_path / "pushed")
    index_digest = tagged(image.path)["digest"]
    index = json.loads(image.blobs[index_digest])
    assert index["mediaType"] == OCI_INDEX
    children = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert set(children) == {"amd64", "arm64"}

    pushed_digest, _ = skopeo.push(image, f"docker://{registry.host}/{repo}:multi", "--all")
    assert pushed_digest == index_digest

    remote = f"docker://{registry.host}/{repo}"
    assert skopeo.inspect(f"{remote}:multi", "--raw").stdout == image.blobs[index_digest]
    for child in children.values():
        assert skopeo.inspect(f"{remote}@{child}", "--raw").stdout == image.blobs[child]

    pulled = skopeo.pull(f"{remote}:multi", tmp_path / "pulled", "--all")
    assert tagged(pulled)["digest"] == index_digest
    for child in children.values():
        assert image_digests(pulled, child) == image_digests(image.path, child)
    assert layout_blobs(pulled) == layout_blobs(image.path)

    arm64 = ("--override-arch", "arm64", "--override-os", "linux")
    arm64_config = skopeo.inspect(f"{remote}:multi", "--raw", "--config", options=arm64).stdout
    config_digest, _ = image_digests(image.path, children["arm64"])
    assert arm64_config == image.blobs[config_digest]


def test_list_tags_shows_every_pushed_tag_sorted(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """Two tags of one image, pushed out of order, are listed in lexical order."""
    image = single_image(tmp_path / "pushed", layer_count=2, layer_size=20_000)
    remote = f"docker://{registry.host}/{repo}"
    skopeo.push(image, f"{remote}:v2")
    # Registry to registry: skopeo pulls v2 and pushes it as v1, finding every blob in place.
    skopeo.copy(f"{remote}:v2", f"{remote}:v1", "--preserve-digests")

    listed = skopeo.list_tags(remote)
    assert listed["Repository"] == f"{registry.host}/{repo}"
    assert listed["Tags"] == ["v1", "v2"]


def test_delete_a_manifest_by_digest(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """After skopeo deletes the manifest, neither its tag nor its digest resolves."""
    image = single_image(tmp_path / "pushed", layer_count=2, layer_size=20_000)
    remote = f"docker://{registry.host}/{repo}"
    digest, _ = skopeo.push(image, f"{remote}:v1")
    accept = {"Accept": OCI_MANIFEST}
    assert registry.http.get(f"/v2/{repo}/manifests/v1", headers=accept).status_code == 200

    skopeo.delete(f"{remote}@{digest}")

    for reference in ("v1", digest):
        response = registry.http.get(f"/v2/{repo}/manifests/{reference}", headers=accept)
        assert response.status_code == 404, (reference, response.text)
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    for image_name in (f"{remote}:v1", f"{remote}@{digest}"):
        failed = skopeo.inspect(image_name, "--raw", check=False)
        assert failed.returncode != 0, failed.stdout
        assert b"manifest unknown" in failed.stderr, failed.stderr


def test_push_the_same_image_to_a_second_repository(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """The second repository gets every blob without a new upload (mounted or found in place),
    and pulling from it gives the same image."""
    image = single_image(tmp_path / "pushed")
    manifest_digest = tagged(image.path)["digest"]
    config_digest, layer_digests = image_digests(image.path, manifest_digest)
    second = f"{repo}-second"

    skopeo.push(image, f"docker://{registry.host}/{repo}:v1")
    digest, log = skopeo.push(image, f"docker://{registry.host}/{second}:v1", debug=True)
    assert digest == manifest_digest

    # skopeo remembers where it pushed each layer and asks for a cross-repository mount
    # (POST ...?mount=<digest>&from=<first repository>); the layers are not uploaded again.
    mounts = re.findall(
        rf"POST \S+/v2/{second}/blobs/uploads/\?from=\S+&mount=(sha256%3A[0-9a-f]{{64}})", log
    )
    assert {unquote(m) for m in mounts} == set(layer_digests), log
    assert skipped_blobs(log) == set(layer_digests), log
    # skopeo 1.9 does not try to mount a config: it uploads it, and that upload must work.
    assert uploaded_blobs(log) <= {config_digest}, log
    for blob_digest in [config_digest, *layer_digests]:
        response = registry.http.head(f"/v2/{second}/blobs/{blob_digest}")
        assert response.status_code == 200, blob_digest
        assert response.headers["Docker-Content-Digest"] == blob_digest

    pulled = skopeo.pull(f"docker://{registry.host}/{second}:v1", tmp_path / "pulled")
    assert_same_image(image, pulled)


def test_pushing_the_same_image_twice_is_idempotent(
    registry: RegistryUnderTest, repo: str, skopeo: Skopeo, tmp_path: Path
) -> None:
    """A second push of the same image succeeds and changes nothing."""
    image = single_image(tmp_path / "pushed", layer_count=2, layer_size=50_000)
    manifest_digest = tagged(image.path)["digest"]
    _, layer_digests = image_digests(image.path, manifest_digest)
    remote = f"docker://{registry.host}/{repo}"

    first, _ = skopeo.push(image, f"{remote}:v1")
    second, log = skopeo.push(image, f"{remote}:v1", debug=True)
    assert first == second == manifest_digest
    # The registry answers skopeo's HEAD for each blob: nothing is uploaded again.
    assert skipped_blobs(log) >= set(layer_digests), log
    assert uploaded_blobs(log) == set(), log

    manifests = registry.query(
        "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        " WHERE r.name = :name",
        name=repo,
    )
    assert [row.digest for row in manifests] == [manifest_digest]

    assert skopeo.inspect(f"{remote}:v1", "--raw").stdout == image.blobs[manifest_digest]
    assert skopeo.list_tags(remote)["Tags"] == ["v1"]
    response = registry.http.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == manifest_digest
    assert sha256(response.content) == manifest_digest
    assert_same_image(image, skopeo.pull(f"{remote}:v1", tmp_path / "pulled"))
