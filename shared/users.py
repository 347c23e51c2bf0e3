"""The users file: who may log in (bcrypt hashes) and what each may do where.

``REGISTRY_AUTH_USERS_FILE`` names it, YAML or JSON (the README, "Security", shows one); operators
mount it as a Kubernetes Secret, and ``registry-admin user add/remove/list`` edits it::

    users:
      alice:
        password_hash: "$2b$12$..."   # bcrypt; registry-admin user add writes it
        catalog: true                # may list /v2/_catalog
      bob:
        password_hash: "$2b$12$..."
    grants:
      - repositories: ["team-a/*"]
        users: [alice]               # "*": every user who logged in
        actions: [pull, push, delete]
      - repositories: ["team-a/*", "shared/*"]
        users: [bob]
        actions: [pull]
      - repositories: ["public/*"]
        anonymous: true              # also without logging in: pull only
        actions: [pull]

Repository patterns are globs matched against the whole name (``*`` matches any characters,
``/`` included; ``?`` one; ``[...]`` a set). A user's actions on a repository are the union of
every grant that names the user (or ``*``) and matches the name.

The gateway reads the file through :class:`UsersFile`, which checks the file's modification at
most once a second and reloads it when it changed, so that an edit (or a Secret's update) takes
effect without a restart; a file that no longer parses is logged and the last good one kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from functools import cache
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from cachetools import LRUCache

from shared import yaml_files

log = logging.getLogger("registry.auth")

ACTIONS = ("pull", "push", "delete")
ANONYMOUS_ACTIONS = frozenset({"pull"})
CATALOG = frozenset({"*"})
NOTHING: frozenset[str] = frozenset()
# bcrypt hashes: $2a$, $2b$ or $2y$ (Apache's htpasswd -B), two-digit cost, 53 characters.
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt reads; longer passwords are refused, not truncated
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


class UsersFileError(ValueError):
    """The users file is not valid. The message names the place, never a hash."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: bytes = field(repr=False)
    catalog: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    patterns: tuple[str, ...]
    actions: frozenset[str]
    users: frozenset[str]
    anonymous: bool
    regex: re.Pattern[str] = field(repr=False, compare=False)

    def applies_to(self, user: str | None) -> bool:
        if user is None:
            return self.anonymous
        return "*" in self.users or user in self.users


class UserStore:
    """One version of the users file, parsed."""

    def __init__(self, users: Mapping[str, User], grants: tuple[Grant, ...]) -> None:
        self.users = dict(users)
        self.grants = grants
        self._cache: LRUCache[tuple[str | None, str], frozenset[str]] = LRUCache(maxsize=10_000)

    def actions(self, user: str | None, repository: str) -> frozenset[str]:
        """What ``user`` (None: anonymous) may do on ``repository``."""
        key = (user, repository)
        found = self._cache.get(key)
        if found is not None:
            return found
        allowed: set[str] = set()
        for grant in self.grants:
            if grant.applies_to(user) and grant.regex.fullmatch(repository):
                allowed |= grant.actions
        if user is None:
            allowed &= ANONYMOUS_ACTIONS
        result = frozenset(allowed)
        self._cache[key] = result
        return result

    def access(self, user: str | None, resource_type: str, name: str) -> frozenset[str]:
        """The actions of the token specification's resource ``resource_type:name``."""
        if resource_type == "repository":
            return self.actions(user, name)
        if resource_type == "registry" and name == "catalog" and user is not None:
            found = self.users.get(user)
            return CATALOG if found is not None and found.catalog else NOTHING
        return NOTHING


# --- parsing --------------------------------------------------------------------------------


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsersFileError(f"{where}: expected a list of non-empty strings")
    return value


def _parse_user(name: Any, entry: Any) -> User:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsersFileError(
            f"users: invalid user name {str(name)[:64]!r} (letters, digits and ._@+- only)"
        )
    if not isinstance(entry, dict):
        raise UsersFileError(f"users.{name}: expected a mapping with password_hash")
    unknown = set(entry) - {"password_hash", "catalog"}
    if unknown:
        raise UsersFileError(f"users.{name}: unknown fields {sorted(map(str, unknown))}")
    hashed = entry.get("password_hash")
    if not isinstance(hashed, str) or not _BCRYPT_RE.fullmatch(hashed):
        raise UsersFileError(f"users.{name}.password_hash: not a bcrypt hash")
    catalog = entry.get("catalog", False)
    if not isinstance(catalog, bool):
        raise UsersFileError(f"users.{name}.catalog: expected true or false")
    return User(name, hashed.encode(), catalog)


def _parse_grant(index: int, entry: Any, users: Mapping[str, User]) -> Grant:
    where = f"grants[{index}]"
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: expected a mapping")
    unknown = set(entry) - {"repositories", "users", "anonymous", "actions"}
    if unknown:
        raise UsersFileError(f"{where}: unknown fields {sorted(map(str, unknown))}")
    patterns = tuple(_string_list(entry.get("repositories"), f"{where}.repositories"))
    actions = frozenset(_string_list(entry.get("actions"), f"{where}.actions"))
    if not actions <= set(ACTIONS):
        raise UsersFileError(f"{where}.actions: each is one of {', '.join(ACTIONS)}")
    names = frozenset(_string_list(entry.get("users", []), f"{where}.users"))
    missing = names - set(users) - {"*"}
    if missing:
        raise UsersFileError(f"{where}.users: unknown users {sorted(missing)}")
    anonymous = entry.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise UsersFileError(f"{where}.anonymous: expected true or false")
    if anonymous and not actions <= ANONYMOUS_ACTIONS:
        raise UsersFileError(f"{where}: an anonymous grant may only pull")
    if not names and not anonymous:
        raise UsersFileError(f"{where}: names no users and is not anonymous")
    regex = re.compile("|".join(f"(?:{translate(p)})" for p in patterns))
    return Grant(patterns, actions, names, anonymous, regex)


def parse(document: Any) -> UserStore:
    """The store a users file's document (parsed YAML or JSON) describes."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise UsersFileError("the users file must be a mapping with users and grants")
    unknown = set(document) - {"users", "grants"}
    if unknown:
        raise UsersFileError(f"unknown top-level fields {sorted(map(str, unknown))}")
    raw_users = document.get("users") or {}
    raw_grants = document.get("grants") or []
    if not isinstance(raw_users, dict):
        raise UsersFileError("users: expected a mapping of user names")
    if not isinstance(raw_grants, list):
        raise UsersFileError("grants: expected a list")
    users = {name: _parse_user(name, entry) for name, entry in raw_users.items()}
    grants = tuple(_parse_grant(i, entry, users) for i, entry in enumerate(raw_grants))
    return UserStore(users, grants)


def read_document(path: Path) -> dict[str, Any]:
    """The file's document (JSON is YAML too); an absent or empty file is an empty document."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    document = yaml_files.parse(text, str(path), UsersFileError)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UsersFileError(f"{path}: the users file must be a mapping with users and grants")
    return document


def load(path: Path) -> UserStore:
    if not path.is_file():
        raise UsersFileError(f"{path}: no such file")
    return parse(read_document(path))


def write_document(path: Path, document: dict[str, Any]) -> None:
    """Replace the file atomically (a temporary file renamed over it), readable by its owner
    only; JSON when its name ends in ``.json``, YAML otherwise."""
    parse(document)  # never write a file the gateway would refuse
    if path.suffix == ".json":
        text = json.dumps(document, indent=2) + "\n"
    else:
        text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as output:
            output.write(text)
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def hash_password(password: str, rounds: int = 12) -> str:
    encoded = password.encode()
    if len(encoded) > BCRYPT_MAX_PASSWORD:
        raise ValueError(f"a password is at most {BCRYPT_MAX_PASSWORD} bytes (bcrypt's limit)")
    if not encoded:
        raise ValueError("an empty password is not a password")
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds)).decode()


@cache
def _dummy_hash() -> bytes:
    """A hash checked when the user is unknown, so that an unknown name takes as long as a
    wrong password (no user enumeration by timing). Made on first use, not at import."""
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(12))


def check_password(user: User | None, password: bytes) -> bool:
    """bcrypt's own comparison (constant-time); False for an unknown user, after the same work."""
    hashed = user.password_hash if user is not None else _dummy_hash()
    if len(password) > BCRYPT_MAX_PASSWORD:
        bcrypt.checkpw(b"x", hashed)  # the same work, then refused
        return False
    try:
        ok = bcrypt.checkpw(password, hashed)
    except ValueError:
        return False
    return ok and user is not None


def _describe(store: UserStore) -> str:
    return f"{len(store.users)} users, {len(store.grants)} grants"


class UsersFile(yaml_files.Watched[UserStore]):
    """The users file, reloaded when it changes (``shared.yaml_files.Watched``)."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        super().__init__("users file", path, load, UsersFileError, _describe, interval)

    @property
    def store(self) -> UserStore:
        return self.value
