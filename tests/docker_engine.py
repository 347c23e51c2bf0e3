"""A private Docker engine for client tests: Debian's ``dockerd`` (docker.io 20.10) and its
``docker`` CLI, with nothing shared with the machine or with another engine.

    with DockerEngine(tmp_path / "docker") as engine:
        image_id = engine.build_scratch_image("127.0.0.1:5000/demo/app:v1")
        engine.docker("push", "127.0.0.1:5000/demo/app:v1")
        engine.repo_digests("127.0.0.1:5000/demo/app:v1")

The engine runs without containers: no iptables, no bridge, the vfs storage driver (no overlay
mounts), and a containerd of its own. Loopback registries are insecure (plain HTTP). Every
client command runs with its own ``DOCKER_CONFIG`` folder when given one, so a ``docker login``
is seen only by the commands that pass the same folder.

An engine that cannot start raises ``DockerEngineError`` with its daemons' logs: a test that
needs it fails, it is never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DOCKERD = Path(os.environ.get("DOCKERD", "/usr/sbin/dockerd"))
# Debian's client, of the daemon's version: another docker on PATH may be a different release.
DOCKER = Path(os.environ.get("DOCKER", "/usr/bin/docker"))
CONTAINERD = Path(os.environ.get("CONTAINERD", "/usr/bin/containerd"))

__all__ = ["CONTAINERD", "DOCKER", "DOCKERD", "DockerEngine", "DockerEngineError", "DockerFailed"]


class DockerEngineError(RuntimeError):
    """The engine could not be started; the message holds what its daemons logged."""


class DockerFailed(AssertionError):
    """A docker command exited non-zero; the message holds its command line and output."""


class DockerEngine:
    """A ``dockerd`` of its own, with a containerd of its own, started by ``start()`` (or
    ``with``) and stopped by ``stop()``.

    ``root`` holds what may be large or worth reading after a failure: the data roots (images),
    the daemons' configuration and logs, the default client configuration and build contexts.
    The sockets and the exec root live in a short folder under /tmp of their own (a unix socket
    path has at most 107 bytes), removed by ``stop()``.
    """

    def __init__(
        self, root: Path, start_timeout: float = 60, registry_mirrors: Sequence[str] = ()
    ) -> None:
        self.root = root
        # Where it pulls Docker Hub's images from first (dockerd's --registry-mirror).
        self.registry_mirrors = list(registry_mirrors)
        self.start_timeout = start_timeout
        self.run_dir: Path | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.containerd: subprocess.Popen[bytes] | None = None

    # --- the daemons --------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        """The engine's API socket (``DOCKER_HOST=unix://<socket>``)."""
        if self.run_dir is None:
            raise RuntimeError("the engine is not started")
        return self.run_dir / "docker.sock"

    def log(self) -> str:
        """What dockerd and its containerd logged."""
        return "\n".join(
            f"--- {name}:\n{(self.root / name).read_text(errors='replace')}"
            for name in ("dockerd.log", "containerd.log")
            if (self.root / name).exists()
        )

    def start(self) -> None:
        for binary in (DOCKERD, DOCKER, CONTAINERD):
            if not (binary.is_file() and os.access(binary, os.X_OK)):
                raise DockerEngineError(
                    f"{binary.name} is required and was not found at {binary} (install Debian's "
                    "docker.io with `make services`, or point DOCKERD, DOCKER and CONTAINERD at "
                    "the binaries)"
                )
        if os.geteuid() != 0:
            raise DockerEngineError("dockerd needs root")
        for folder in ("data", "client", "home", "builds"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))
        try:
            self._start_containerd(self.run_dir)
            self._start_dockerd(self.run_dir)
        except BaseException:
            self.stop()
            raise

    def _start_containerd(self, run_dir: Path) -> None:
        """dockerd would start a containerd of its own only where the machine has none (no
        /run/containerd/containerd.sock), and use the machine's otherwise: this engine always
        brings its own, so that it never shares one, whatever the machine runs."""
        socket = run_dir / "containerd.sock"
        config = self.root / "containerd.toml"
        config.write_text(
            f"""\
version = 2
root = "{self.root / "containerd"}"
state = "{run_dir / "containerd"}"
# No Kubernetes: the CRI plugin would want CNI, a sandbox image and more.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root / "containerd-opt"}"
"""
        )
        with open(self.root / "containerd.log", "ab") as output:
            self.containerd = subprocess.Popen(
                [str(CONTAINERD), "--config", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait("containerd", self.containerd, socket.is_socket)

    def _start_dockerd(self, run_dir: Path) -> None:
        # dockerd writes its (deprecated) identity key to /etc/docker/key.json unless told
        # otherwise, and only its configuration file can tell it.
        config = self.root / "daemon.json"
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        command = [
            str(DOCKERD),
            "--config-file", str(config),
            "--containerd", str(run_dir / "containerd.sock"),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(run_dir / "x"),
            "--pidfile", str(run_dir / "docker.pid"),
            "-H", f"unix://{self.socket}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "--insecure-registry", "127.0.0.0/8",
            *(f"--registry-mirror={mirror}" for mirror in self.registry_mirrors),
        ]  # fmt: skip
        with open(self.root / "dockerd.log", "ab") as output:
            self.dockerd = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            if not self.socket.is_socket():
                return False
            version = self.docker("version", "--format", "{{.Server.Version}}", check=False)
            return version.returncode == 0

        self._wait("dockerd", self.dockerd, answers)

    def _wait(self, name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            if process.poll() is not None:
                raise DockerEngineError(
                    f"{name} exited {process.returncode} while starting\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise DockerEngineError(
                    f"{name} was not ready within {self.start_timeout}s\n{self.log()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop dockerd, then its containerd (SIGTERM; SIGKILL after a while), kill whatever of
        theirs is left, undo their mounts and remove the run folder. Safe to call again."""
        for process in (self.dockerd, self.containerd):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.dockerd = self.containerd = None
        if self.run_dir is not None:
            self._kill_leftovers(self.run_dir)
            self._unmount_leftovers([self.root / "data", self.root / "containerd", self.run_dir])
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None

    @staticmethod
    def _kill_leftovers(run_dir: Path) -> None:
        """Kill the processes whose command line names this engine's run folder: a containerd
        shim that outlived its daemons."""
        marker = str(run_dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                command_line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in command_line:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    @staticmethod
    def _unmount_leftovers(folders: list[Path]) -> None:
        """Unmount what a dockerd that did not shut down cleanly left mounted: it bind-mounts
        its data root onto itself (to make its mount propagation shared) and unmounts it only
        on a clean shutdown."""
        mounted = [
            line.split()[1].replace("\\040", " ")
            for line in Path("/proc/self/mounts").read_text().splitlines()
        ]
        prefixes = [str(folder) for folder in folders]
        leftovers = [
            point
            for point in mounted
            if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes)
        ]
        # Deepest first; a point mounted twice is listed, and unmounted, twice.
        for point in sorted(leftovers, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)

    def __enter__(self) -> DockerEngine:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- the client ---------------------------------------------------------------------

    def docker(
        self,
        *args: str,
        config: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker <args>`` against this engine. ``config`` is the client's
        ``DOCKER_CONFIG`` folder (its logins; created when missing); without it, the engine's
        own, where nobody logs in. Raises ``DockerFailed`` on a non-zero exit unless
        ``check`` is false."""
        config = config or self.root / "client"
        config.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.root / "home"),
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(config),
            "DOCKER_BUILDKIT": "0",
        }
        command = [str(DOCKER), *args]
        result = subprocess.run(
            command, env=env, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise DockerFailed(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def login(
        self, registry: str, username: str, password: str, config: Path
    ) -> subprocess.CompletedProcess[str]:
        """``docker login`` to ``registry`` (``host:port``) with the password on standard
        input (never on the command line), its credentials kept in ``config``. Not checked:
        the caller looks at the exit status."""
        return self.docker(
            "login", "--username", username, "--password-stdin", registry,
            config=config, input=password + "\n", check=False, timeout=60,
        )  # fmt: skip

    def build_scratch_image(self, tag: str, layers: Sequence[bytes] | None = None) -> str:
        """Build an image ``FROM scratch`` with the legacy builder, one ``COPY`` (one layer)
        per item of ``layers`` (by default two of random bytes, so that no other image shares
        them), tagged ``tag``; returns the image ID (the config digest)."""
        layers = layers if layers is not None else [secrets.token_bytes(4096) for _ in range(2)]
        context = Path(tempfile.mkdtemp(prefix="build-", dir=self.root / "builds"))
        lines = ["FROM scratch"]
        for index, data in enumerate(layers):
            (context / f"layer-{index}").write_bytes(data)
            lines.append(f"COPY layer-{index} /layer-{index}")
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        self.docker("build", "--quiet", "--tag", tag, str(context))
        return self.image_id(tag)

    def image_id(self, image: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()

    def repo_digests(self, image: str) -> list[str]:
        """``RepoDigests`` of a local image: ``<host:port>/<repository>@<manifest digest>`` for
        each registry manifest it was pushed as or pulled from."""
        found = self.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
        digests: list[str] = json.loads(found.stdout)
        return digests
