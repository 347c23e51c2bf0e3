"""Mirrored namespaces: which repository names this registry pulls through from another
registry, and the name each has there.

The mirrors file (``REGISTRY_MIRRORS_FILE``: YAML, or JSON, which is YAML too) maps a namespace
of this registry to an upstream registry::

    mirrors:
      hub:                                  # hub/<name> here is <name> at Docker Hub
        url: https://registry-1.docker.io
        library: true                       # hub/alpine is library/alpine there (Hub's rule)
        hosts: [docker.io]                  # containerd's ?ns= values it answers
        default: true                       # answers names no own repository has (Docker's
                                            # registry-mirrors sends Hub's names as they are)
        username: someone                   # optional: Basic, or the bearer-token flow
        password_file: /run/secrets/hub     # (a Kubernetes Secret's key, mounted)
        tag_check_seconds: 300              # a tag is checked upstream at most this often
        expire_seconds: 604800              # what is not pulled for this long goes (0: never)
      ghcr:
        url: https://ghcr.io

A namespace is a first path component: every repository under it is a mirror (pushes are
refused with DENIED), every other repository is this registry's own. The default mirror (at
most one) also answers reads of names outside every namespace that no own repository has:
``library/alpine`` is then read as ``hub/library/alpine``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared import yaml_files
from shared.reference import MAX_NAME_LENGTH, NAME_COMPONENT
from shared.settings import get_settings

DEFAULT_TAG_CHECK_SECONDS = 300
DEFAULT_EXPIRE_SECONDS = 7 * 24 * 3600


class MirrorsFileError(ValueError):
    """The mirrors file cannot be used (its message says where and why)."""


@dataclass(frozen=True, slots=True)
class Mirror:
    namespace: str
    url: str  # scheme and host (and port), no trailing slash
    library: bool = False
    hosts: tuple[str, ...] = ()
    default: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    tag_check_seconds: float = DEFAULT_TAG_CHECK_SECONDS
    expire_seconds: float = DEFAULT_EXPIRE_SECONDS

    def upstream_name(self, repository: str) -> str:
        """The name at the upstream of ``repository`` (which is under this namespace)."""
        name = repository.removeprefix(f"{self.namespace}/")
        if self.library and "/" not in name:
            return f"library/{name}"
        return name

    def stored_name(self, repository: str) -> str:
        """The repository ``repository`` (under this namespace) is kept as here: the name under
        this namespace of its upstream name, so that with Hub's rule hub/alpine and
        hub/library/alpine share one copy."""
        stored = f"{self.namespace}/{self.upstream_name(repository)}"
        return stored if len(stored) <= MAX_NAME_LENGTH else repository


@dataclass(frozen=True, slots=True)
class Mirrors:
    by_namespace: dict[str, Mirror]

    def find(self, repository: str) -> Mirror | None:
        """The mirror ``repository`` belongs to, if any (a name under its namespace)."""
        namespace, slash, _ = repository.partition("/")
        return self.by_namespace.get(namespace) if slash else None

    def stored_name(self, repository: str) -> str:
        """The repository ``repository`` is kept as: under a mirror, see
        :meth:`Mirror.stored_name`; any other name as it is."""
        mirror = self.find(repository)
        return repository if mirror is None else mirror.stored_name(repository)

    @property
    def default(self) -> Mirror | None:
        return next((m for m in self.by_namespace.values() if m.default), None)

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
    seconds = {
        key: entry.get(key, default)
        for key, default in (
            ("tag_check_seconds", DEFAULT_TAG_CHECK_SECONDS),
            ("expire_seconds", DEFAULT_EXPIRE_SECONDS),
        )
    }
    for key, value in seconds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise MirrorsFileError(f"{where}: {key} must be a number of seconds >= 0")
    library, default = entry.get("library", False), entry.get("default", False)
    if not isinstance(library, bool) or not isinstance(default, bool):
        raise MirrorsFileError(f"{where}: library and default are true or false")
    return Mirror(
        namespace=namespace,
        url=url,
        library=library,
        hosts=tuple(hosts),
        default=default,
        username=_text(entry, "username", where),
        password=password,
        tag_check_seconds=float(seconds["tag_check_seconds"]),
        expire_seconds=float(seconds["expire_seconds"]),
    )


_NAMESPACE = re.compile(NAME_COMPONENT)
_KEYS = {
    "url",
    "library",
    "hosts",
    "default",
    "username",
    "password",
    "password_file",
    "tag_check_seconds",
    "expire_seconds",
}


def parse(document: Any, base: Path = Path()) -> Mirrors:
    if document is None:
        return Mirrors({})
    if not isinstance(document, dict) or set(document) - {"mirrors"}:
        raise MirrorsFileError("the mirrors file is a mapping with one key, mirrors")
    entries = document.get("mirrors") or {}
    if not isinstance(entries, dict):
        raise MirrorsFileError("mirrors: expected a mapping of namespaces")
    found = Mirrors({str(ns): _mirror(ns, entry, base) for ns, entry in entries.items()})
    if sum(mirror.default for mirror in found.by_namespace.values()) > 1:
        raise MirrorsFileError("mirrors: at most one mirror is the default")
    return found


def load(path: Path) -> Mirrors:
    return parse(yaml_files.read(path, MirrorsFileError), path.parent)


@cache
def configured() -> Mirrors:
    """This process's mirrors (read once: a changed file takes effect at restart)."""
    path = get_settings().mirrors_file
    return load(Path(path)) if path else Mirrors({})


def read_at_start() -> None:
    """Read the mirrors file as a process starts: one that cannot be used stops it there."""
    yaml_files.read_at_start("REGISTRY_MIRRORS_FILE", configured, MirrorsFileError)


async def default_for(name: str) -> tuple[Mirror, str] | None:
    """For a read of ``name`` (outside every namespace) that found nothing: the default mirror
    and the name under its namespace, when there is a default mirror and no own repository
    is called ``name``."""
    default = configured().default
    if default is None:
        return None
    from shared import db
    from shared.repositories import find_repository_id

    def own() -> bool:
        with db.reading() as connection:
            return find_repository_id(connection, name) is not None

    mirrored = f"{default.namespace}/{name}"
    if len(mirrored) > MAX_NAME_LENGTH or await db.read(own):
        return None
    return default, mirrored
