"""Run the whole registry on this machine: ``python -m shared.runner`` (what ``make run`` does).

Applies the migrations, starts every process of ``shared.processes``, waits until the HTTP
services answer, says where the registry listens and where its data lives, and stops them all
on Ctrl-C (or when one of them dies).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared import migrate
from shared.processes import Process, processes
from shared.settings import Settings, get_settings


def wait_until_up(process: Process, popen: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.url is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited with status {popen.returncode}")
        try:
            httpx.get(f"{process.url}/v2/", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not answer at {process.url} within {timeout}s")


def start_all(
    settings: Settings, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> list[tuple[Process, subprocess.Popen[bytes]]]:
    """Start every process; with ``log_dir``, each one's output goes to ``<name>.log`` there."""
    started: list[tuple[Process, subprocess.Popen[bytes]]] = []
    try:
        for process in processes(settings):
            output = None
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                output = open(log_dir / f"{process.name}.log", "ab")  # noqa: SIM115 - owned by the child
            popen = subprocess.Popen(
                process.argv, env=env, stdout=output, stderr=subprocess.STDOUT if output else None
            )
            if output is not None:
                output.close()
            started.append((process, popen))
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


def main() -> int:
    settings = get_settings()
    try:
        migrate.upgrade(settings.database_url)
    except migrate.DatabaseSetupError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    started = start_all(settings)
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    print(
        f"\nregistry listening on {gateway}  (try: curl {gateway}/v2/)\n"
        f"  database: {settings.database_url}\n"
        f"  storage:  {settings.storage_url}\n"
        f"  broker:   {settings.broker_url}\n"
        "Ctrl-C stops it.\n",
        flush=True,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Ctrl-C (SIGINT) and SIGTERM both stop everything; SIGINT is handled explicitly, as a
    # process started in the background by a script inherits it ignored.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stopping:
            for process, popen in started:
                if popen.poll() is not None:
                    print(
                        f"{process.name} exited with status {popen.returncode}; stopping",
                        file=sys.stderr,
                    )
                    stopping = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopping...", flush=True)
    stop_all(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
