"""Mirrored namespaces: which repository names this registry pulls through from another
registry, and the name each has there.

The mirrors file (``REGISTRY_MIRRORS_FILE``: YAML, or JSON, which is YAML too) maps a namespace
of this registry to an upstream registry::

    mirrors:
      hub:                                  # hub/<name> here is <name> at Docker Hub
        url: https://registry-1.docker.io
        library: true                       # hub/alpine is library/alpine there (Hub's rule)
        hosts: [docker.io]                  # containerd's ?ns= values it answers
        username: someone                   # optional: Basic, or the bearer-token flow
        password_file: /run/secrets/hub     # (a Kubernetes Secret's key, mounted)
        tag_check_seconds: 300              # a tag is checked upstream at most this often
      ghcr:
        url: https://ghcr.io

A namespace is a first path component: every repository under it is a mirror (pushes are
refused with DENIED), every other repository is this registry's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared import yaml_files
from shared.reference import NAME_COMPONENT
from shared.settings import get_settings

DEFAULT_TAG_CHECK_SECONDS = 300


class MirrorsFileError(ValueError):
    """The mirrors file cannot be used (its message says where and why)."""


@dataclass(frozen=True, slots=True)
class Mirror:
    namespace: str
    url: str  # scheme and host (and port), no trailing slash
    library: bool = False
    hosts: tuple[str, ...] = ()
    username: str = ""
    password: str = field(default="", repr=False)
    tag_check_seconds: float = DEFAULT_TAG_CHECK_SECONDS

    def upstream_name(self, repository: str) -> str:
        """The name at the upstream of ``repository`` (which is under this namespace)."""
        name = repository.removeprefix(f"{self.namespace}/")
        if self.library and "/" not in name:
            return f"library/{name}"
        return name


@dataclass(frozen=True, slots=True)
class Mirrors:
    by_namespace: dict[str, Mirror]

    def find(self, repository: str) -> Mirror | None:
        """The mirror ``repository`` belongs to, if any (a name under its namespace)."""
        namespace, slash, _ = repository.partition("/")
        return self.by_namespace.get(namespace) if slash else None

    def for_host(self, host: str) -> Mirror | None:
        """The mirror that answers for the upstream ``host`` (containerd's ``ns``)."""
        for mirror in self.by_namespace.values():
            if host in mirror.hosts:
                return mirror
        return None


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise MirrorsFileError(f"{where}: {key} must be a string")
    return value


def _mirror(namespace: Any, entry: Any, base: Path) -> Mirror:
    where = f"mirrors.{namespace}"
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise MirrorsFileError(f"{where}: a namespace is one name component (like hub or ghcr)")
    if not isinstance(entry, dict):
        raise MirrorsFileError(f"{where}: expected a mapping with url")
    unknown = set(entry) - _KEYS
    if unknown:
        raise MirrorsFileError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    url = _text(entry, "url", where).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        raise MirrorsFileError(f"{where}: url must be http(s)://host[:port], got {url!r}")
    hosts = entry.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise MirrorsFileError(f"{where}: hosts must be a list of host names")
    password = _text(entry, "password", where)
    password_file = _text(entry, "password_file", where)
    if password_file:
        path = base / password_file
        try:
            password = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise MirrorsFileError(f"{where}: password_file {path}: {exc.strerror}") from None
    seconds = entry.get("tag_check_seconds", DEFAULT_TAG_CHECK_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise MirrorsFileError(f"{where}: tag_check_seconds must be a number of seconds >= 0")
    library = entry.get("library", False)
    if not isinstance(library, bool):
        raise MirrorsFileError(f"{where}: library must be true or false")
    return Mirror(
        namespace=namespace,
        url=url,
        library=library,
        hosts=tuple(hosts),
        username=_text(entry, "username", where),
        password=password,
        tag_check_seconds=float(seconds),
    )


_NAMESPACE = re.compile(NAME_COMPONENT)
_KEYS = {"url", "library", "hosts", "username", "password", "password_file", "tag_check_seconds"}


def parse(document: Any, base: Path = Path()) -> Mirrors:
    if document is None:
        return Mirrors({})
    if not isinstance(document, dict) or set(document) - {"mirrors"}:
        raise MirrorsFileError("the mirrors file is a mapping with one key, mirrors")
    entries = document.get("mirrors") or {}
    if not isinstance(entries, dict):
        raise MirrorsFileError("mirrors: expected a mapping of namespaces")
    return Mirrors({str(ns): _mirror(ns, entry, base) for ns, entry in entries.items()})


def load(path: Path) -> Mirrors:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MirrorsFileError(f"{path}: {exc.strerror}") from None
    return parse(yaml_files.parse(text, str(path), MirrorsFileError), path.parent)


@cache
def configured() -> Mirrors:
    """This process's mirrors (read once: a changed file takes effect at restart)."""
    path = get_settings().mirrors_file
    return load(Path(path)) if path else Mirrors({})
