"""podman for the tests: as root, with storage, run state and configuration all of its own,
so that nothing depends on the machine's or the user's container configuration and nothing is
left behind there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PODMAN = Path(os.environ.get("PODMAN", "/usr/bin/podman"))


class PodmanFailed(AssertionError):
    """podman exited non-zero; the message holds its command line and output."""


@dataclass
class Podman:
    """podman as root with storage, run state, containers.conf, registries.conf, storage.conf,
    policy, auth file, blob-info cache and temp folders all of its own, so nothing depends on
    the machine's or the user's container configuration, and nothing is left behind there."""

    home: Path
    runroot: Path
    env: dict[str, str]

    @property
    def base_command(self) -> list[str]:
        return [
            str(PODMAN),
            "--root", str(self.home / "root"),
            "--runroot", str(self.runroot),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [*self.base_command, *args]
        result = subprocess.run(command, env=self.env, capture_output=True, timeout=180)
        if check and result.returncode != 0:
            raise PodmanFailed(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout.decode(errors='replace')}\n"
                f"stderr:\n{result.stderr.decode(errors='replace')}"
            )
        return result

    def pull(self, source: str, *flags: str) -> str:
        """Pull ``source`` (``oci:<layout>:<tag>`` or a registry image); returns the image ID."""
        result = self.run("pull", "--quiet", *flags, source)
        return result.stdout.decode().strip().splitlines()[-1]

    def pull_remote(self, image: str, *flags: str) -> str:
        return self.pull(image, "--tls-verify=false", *flags)

    def push(
        self, image: str, destination: str, *flags: str, debug: bool = False
    ) -> tuple[str, str]:
        """Push ``image`` to ``destination``; returns the pushed manifest digest (podman's
        ``--digestfile``) and, with ``debug``, podman's debug log of the requests."""
        digest_file = self.home / "tmp" / "digest"
        digest_file.unlink(missing_ok=True)
        debug_flags = ("--log-level=debug",) if debug else ()
        result = self.run(*debug_flags, "push", "--tls-verify=false", "--digestfile",
                          str(digest_file), *flags, image, destination)  # fmt: skip
        return digest_file.read_text().strip(), result.stderr.decode(errors="replace")

    def inspect(self, image: str) -> dict[str, Any]:
        [details] = json.loads(self.run("image", "inspect", image).stdout)
        return details  # type: ignore[no-any-return]

    def images(self) -> list[dict[str, Any]]:
        listed = json.loads(self.run("images", "--all", "--format", "json").stdout)
        return listed  # type: ignore[no-any-return]

    def trust(self, host: str) -> None:
        """Let podman talk plain HTTP to the registry at ``host``."""
        with (self.home / "registries.conf").open("a") as conf:
            conf.write(f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n')


@contextmanager
def private_podman(tmp_path: Path, insecure: Iterable[str] = ()) -> Iterator[Podman]:
    """A podman of its own under ``tmp_path``, trusting the registries at ``insecure``."""
    if not (PODMAN.is_file() and os.access(PODMAN, os.X_OK)):
        pytest.fail(
            f"podman is required for the client tests and was not found at {PODMAN} "
            "(install it with `make services`, or point PODMAN at the binary); "
            "these tests must not be skipped"
        )
    if os.geteuid() != 0:
        pytest.fail("the podman client tests run podman as root with private storage")
    home = tmp_path / "podman"
    # podman refuses a runroot longer than 50 characters (the sockets it would hold there have a
    # short length limit), and pytest's tmp_path is longer: the run state goes to a short
    # folder of its own, removed at the end.
    runroot = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp")) / "run"
    for folder in ("tmp", "home/.config/containers", "data", "run"):
        (home / folder).mkdir(parents=True)
    # Without systemd (a container, CI) podman would pick these itself; say it, and keep its
    # events, locks and network configuration out of /run/libpod and /etc/containers.
    (home / "containers.conf").write_text(
        f"""\
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{home / "events.log"}"
tmp_dir = "{home / "libpod"}"

[network]
network_config_dir = "{home / "networks"}"
"""
    )
    (home / "storage.conf").write_text(
        f"""\
[storage]
driver = "vfs"
graphroot = "{home / "root"}"
runroot = "{runroot}"
"""
    )
    (home / "registries.conf").write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
    )
    # containers/image reads $HOME/.config/containers/policy.json before /etc/containers's.
    (home / "home/.config/containers/policy.json").write_text(
        json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    )
    (home / "auth.json").write_text(json.dumps({"auths": {}}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(home / "home"),
        "XDG_CONFIG_HOME": str(home / "home/.config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_RUNTIME_DIR": str(home / "run"),
        "TMPDIR": str(home / "tmp"),
        "CONTAINERS_CONF": str(home / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
        "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
        "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        # As root, containers/image keeps its blob-info cache (which blobs it has seen where,
        # the source of its mount attempts) in /var/lib/containers/cache. This variable, read by
        # containers/image's rootless check, moves it under XDG_DATA_HOME; podman itself still
        # runs as root (`podman info` says rootless: false).
        "_CONTAINERS_ROOTLESS_UID": "65534",
    }
    try:
        podman = Podman(home, runroot, env)
        for host in insecure:
            podman.trust(host)
        yield podman
    finally:
        shutil.rmtree(runroot.parent, ignore_errors=True)
