"""Configuration files in YAML (JSON is YAML too): the users file, the mirrors file, the
notifications file, the policies file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

log = logging.getLogger(__name__)

T = TypeVar("T")


def parse(text: str, where: str, error: type[ValueError]) -> Any:
    """The document ``text`` holds; ``error`` naming ``where`` and the line when it is not
    YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML or JSON{line}") from None


def read(path: Path, error: type[ValueError]) -> Any:
    """The document in the file at ``path``; ``error`` when it cannot be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: {exc.strerror}") from None
    return parse(text, str(path), error)


def read_at_start(variable: str, read: Callable[[], object], error: type[ValueError]) -> None:
    """Read the configuration file ``variable`` names (``read``) as a process starts: one that
    cannot be used stops it with one line saying where and why (no traceback), never a
    process that starts and then fails every request that needs the file."""
    try:
        read()
    except error as exc:
        raise SystemExit(f"{variable}: {exc}") from None


class Watched(Generic[T]):
    """A configuration file, reloaded when it changes (looked at at most every ``interval``
    seconds). A file that became unusable is logged and the last good content kept; at
    startup it is an error. ``version`` grows with each reload, so that caches of what the
    last version said can tell they are stale."""

    def __init__(
        self,
        what: str,
        path: Path,
        load: Callable[[Path], T],
        error: type[ValueError],
        describe: Callable[[T], str],
        interval: float = 1.0,
    ) -> None:
        self.what = what  # "users file": how the log names it
        self.path = path
        self.interval = interval
        self._load = load
        self._error = error
        self._describe = describe  # for the log: never the content (it holds secrets)
        self.value = load(path)
        self.version = 0
        self._stamp = self._current_stamp()
        self._checked = time.monotonic()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the symlinks of a Kubernetes Secret volume
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
        return self.value

    def _reload(self) -> None:
        try:
            self.value = self._load(self.path)
        except self._error as exc:
            log.error("%s not reloaded, keeping the last good one: %s", self.what, exc)
            return
        self.version += 1
        log.info("%s reloaded: %s", self.what, self._describe(self.value))
