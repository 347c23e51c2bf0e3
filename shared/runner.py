"""Run the whole registry on this machine: ``python -m shared.runner`` (what ``make run`` does).

Creates the folders the configuration names, applies the migrations, starts every process of
``shared.processes`` and supervises them, says where the registry listens once the HTTP
services answer, and stops them all on Ctrl-C (SIGINT) or SIGTERM, and only then.

A process that exits is logged and started again after a delay that doubles with each exit in
a row (1 s, 2 s, 4 s... at most 30 s; back to 1 s once it has run for a minute), so that one
crash stops nothing else and a process that cannot start does not spin.

With authentication on and no internal secret, it makes one for the processes it starts, so
that their ports serve the gateway only (``shared.internal_auth``).

The supervisor itself imports the standard library only: the settings, the folders and the
migrations are the work of a child (``python -m shared.runner --prepare``) that hands it the
plan as JSON and exits, so that a process which only waits holds no more memory than Python.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.processes import Process, processes

if TYPE_CHECKING:
    from shared.settings import Settings

FIRST_DELAY = 1.0  # seconds before a process that exited is started again
MAX_DELAY = 30.0
STABLE_AFTER = 60.0  # a process that ran this long before exiting starts again at FIRST_DELAY


def wait_until_up(process: Process, popen: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.url is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited with status {popen.returncode}")
        if answers(process.url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not answer at {process.url} within {timeout}s")


def answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: with authentication on, 401)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=1) as conn:
            conn.sendall(f"GET /v2/ HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            return conn.recv(5) == b"HTTP/"
    except OSError:
        return False


# glibc gives each thread that allocates an arena of its own, up to eight per core, and memory
# freed in one is not reused by another: the services' worker threads (database calls, hashing)
# would hold several MiB apart. Two arenas, unless the environment says otherwise (the images
# set the same).
MALLOC_DEFAULTS = {"MALLOC_ARENA_MAX": "2"}


def start(
    process: Process, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start one process; with ``log_dir``, its output is appended to ``<name>.log`` there."""
    env = {**MALLOC_DEFAULTS, **(os.environ if env is None else env)}
    if log_dir is None:
        return subprocess.Popen(process.argv, env=env)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{process.name}.log", "ab") as output:
        return subprocess.Popen(process.argv, env=env, stdout=output, stderr=subprocess.STDOUT)


def start_all(
    settings: Settings, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> list[tuple[Process, subprocess.Popen[bytes]]]:
    """Start every process and wait until the HTTP ones answer (unsupervised: the tests
    start the registry this way, and a process that does not come up is an error)."""
    started: list[tuple[Process, subprocess.Popen[bytes]]] = []
    try:
        for process in processes(settings):
            started.append((process, start(process, env, log_dir)))
        for process, popen in started:
            wait_until_up(process, popen)
    except BaseException:
        stop_all(started)
        raise
    return started


def stop_all(started: list[tuple[Process, subprocess.Popen[bytes]]], timeout: float = 15) -> None:
    for _, popen in started:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _, popen in started:
        try:
            popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def configured_folders(settings: Settings) -> list[Path]:
    """The folders the configuration names, which must exist before the processes start:
    beat's schedule file's, the SQLite database's, a ``file://`` storage and a
    ``filesystem://`` broker."""
    folders = [Path(settings.beat_schedule_file).parent]
    if settings.database_url.startswith("sqlite:///"):
        folders.append(Path(settings.database_url.removeprefix("sqlite:///")).parent)
    storage = urlsplit(settings.storage_url)
    if storage.scheme == "file":
        folders.append(Path(storage.netloc + storage.path))
    if settings.broker_url.startswith("filesystem://"):
        folders.append(Path(settings.broker_url.removeprefix("filesystem://") or "var/broker"))
    return folders


def prepare() -> int:
    """``--prepare``: make the folders the configuration names and apply the migrations, then
    print the plan (the processes, the variables to add to their environment, the banner) as
    JSON on standard output. 2 when the configuration cannot be served."""
    from shared import migrate
    from shared.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        say(str(exc))
        return 2
    try:
        for folder in configured_folders(settings):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        say(f"cannot create a folder the configuration names: {exc}")
        return 2
    try:
        migrate.upgrade(settings.database_url)
    except migrate.DatabaseSetupError as exc:
        say(str(exc))
        return 2
    env = {}
    if settings.auth != "none" and not settings.internal_secret.get_secret_value():
        env["REGISTRY_INTERNAL_SECRET"] = secrets.token_urlsafe(32)
        say(
            f"REGISTRY_AUTH={settings.auth} and no REGISTRY_INTERNAL_SECRET: made one for "
            "this run, so that the services answer the gateway only"
        )
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    banner = (
        f"\nregistry listening on {gateway}  (try: curl {gateway}/v2/)\n"
        f"  database: {settings.database_url}\n"
        f"  storage:  {settings.storage_url}\n"
        f"  broker:   {settings.broker_url}\n"
        "Ctrl-C stops it.\n"
    )
    plan = {"processes": [asdict(p) for p in processes(settings)], "env": env, "banner": banner}
    print(json.dumps(plan))
    return 0


def say(message: str) -> None:
    print(f"registry: {message}", file=sys.stderr, flush=True)


def _exit_status(returncode: int | None) -> str:
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class Child:
    """One supervised process: running (``popen``), or waiting to be started again."""

    process: Process
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    exits_in_a_row: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts the processes, and each one again whenever it exits (see the module's
    docstring), until :meth:`stop`."""

    def __init__(
        self, to_run: list[Process], env: dict[str, str], log_dir: Path | None = None
    ) -> None:
        self.children = [Child(process) for process in to_run]
        self.env = env
        self.log_dir = log_dir

    def start(self) -> None:
        for child in self.children:
            self._spawn(child, time.monotonic())

    def _spawn(self, child: Child, now: float) -> None:
        child.restart_at = None
        child.started_at = now
        try:
            child.popen = start(child.process, self.env, self.log_dir)
        except OSError as exc:
            say(f"{child.process.name} could not be started: {exc}")
            child.popen = None
            self._schedule(child, now, None)

    def _schedule(self, child: Child, now: float, returncode: int | None) -> None:
        ran = now - child.started_at
        child.exits_in_a_row = 1 if ran >= STABLE_AFTER else child.exits_in_a_row + 1
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (child.exits_in_a_row - 1))
        child.restart_at = now + delay
        say(
            f"{child.process.name} {_exit_status(returncode)} after {ran:.1f}s; "
            f"starting it again in {delay:g}s"
        )

    def check(self) -> None:
        """Notice the processes that exited, and start those whose delay is over."""
        now = time.monotonic()
        for child in self.children:
            if child.popen is not None and child.popen.poll() is not None:
                returncode = child.popen.returncode
                child.popen = None
                self._schedule(child, now, returncode)
            elif child.popen is None and child.restart_at is not None and now >= child.restart_at:
                self._spawn(child, now)

    def answering(self) -> bool:
        """Whether every HTTP process answers (any answer: with authentication on, 401)."""
        for child in self.children:
            if child.process.url is None:
                continue
            if child.popen is None or child.popen.poll() is not None:
                return False
            if not answers(child.process.url):
                return False
        return True

    def stop(self) -> None:
        stop_all([(c.process, c.popen) for c in self.children if c.popen is not None])


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--prepare"]:
        return prepare()
    preparing = subprocess.run(
        [sys.executable, "-m", "shared.runner", "--prepare"], stdout=subprocess.PIPE, check=False
    )
    if preparing.returncode != 0:
        return preparing.returncode
    # The plan is the last line (a migration may have printed before it).
    plan: dict[str, Any] = json.loads(preparing.stdout.splitlines()[-1])
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Ctrl-C (SIGINT) and SIGTERM both stop everything; SIGINT is handled explicitly, as a
    # process started in the background by a script inherits it ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    to_run = [Process(**process) for process in plan["processes"]]
    supervisor = Supervisor(to_run, {**os.environ, **plan["env"]})
    supervisor.start()
    announced = False
    try:
        while not stopping:
            supervisor.check()
            if not announced and supervisor.answering():
                announced = True
                print(plan["banner"], flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
