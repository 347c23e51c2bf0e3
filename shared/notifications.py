"""Notifications: webhooks that tell other systems what changed, delivered at least once.

The notifications file (``REGISTRY_NOTIFICATIONS_FILE``: YAML, or JSON; reloaded when it
changes) names the endpoints::

    endpoints:
      - name: ci                          # letters, digits, . _ -
        url: https://ci.example.com/registry-events
        headers: {X-Team: [platform]}     # added to every request
        secret_file: /run/secrets/ci-hook # HMAC-SHA256 key for X-Registry-Signature-256
        timeout_seconds: 5
        actions: [push, delete]           # push, delete, mount, pull (the default: push, delete)
        repositories: ["team/*"]          # globs (the default: every repository)
        ignore_media_types: []            # targets of these media types are not sent
        format: distribution              # or cloudevents
        park_after_seconds: 86400         # a failing event is parked after this long
        max_backoff_seconds: 300          # the longest wait between two attempts

:func:`record` writes, in the transaction that makes a change, one ``notifications`` row per
endpoint that wants the event: an acknowledged change always has its rows, a change rolled
back never. The janitor delivers them (``janitor.notifications``): each endpoint's events of
one repository in order, retried with backoff while the endpoint fails.

An event has the fields of the reference registry's notifications (``notifications/event.go``),
so that consumers written for it read ours unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared import db, events, yaml_files
from shared.models import Base, utcnow
from shared.observability import request_id_var, request_scope_var
from shared.settings import get_settings
from shared.web import ACTOR_HEADER

if TYPE_CHECKING:
    from shared.notifications_file import Endpoint as Endpoint

PENDING, DELIVERED, PARKED = "pending", "delivered", "parked"
# The media type of a blob's event, as the reference registry gives it.
BLOB_MEDIA_TYPE = "application/octet-stream"
INSTANCE = str(uuid.uuid4())  # the event's source.instanceID: this process

Action = Literal["push", "delete", "mount", "pull", "deny"]


class NotificationsFileError(ValueError):
    """The notifications file cannot be used (its message says where and why)."""


@dataclass(frozen=True)
class Endpoints:
    """The endpoints the notifications file names (checked by ``shared.notifications_file``)."""

    endpoints: tuple[Endpoint, ...] = ()

    def get(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def parse(document: Any, base: Path = Path()) -> Endpoints:
    """The endpoints ``document`` (the file's YAML or JSON) names, their secret files read
    from ``base``; NotificationsFileError when it is not a notifications file. Read by
    ``shared.notifications_file``, imported only when there is a file to read (it loads
    pydantic, which a registry without webhooks does without)."""
    if document is None:
        return Endpoints()
    from shared import notifications_file

    return notifications_file.parse(document, base)


def load(path: Path) -> Endpoints:
    return parse(yaml_files.read(path, NotificationsFileError), path.parent)


def _describe(found: Endpoints) -> str:
    return "endpoints: " + (", ".join(e.name for e in found.endpoints) or "none")


@cache
def _file() -> yaml_files.Watched[Endpoints] | None:
    path = get_settings().notifications_file
    if not path:
        return None
    return yaml_files.Watched(
        "notifications file", Path(path), load, NotificationsFileError, _describe
    )


def forget_file() -> None:
    """Read the notifications file the settings name anew (after the settings changed)."""
    _file.cache_clear()


_NONE = Endpoints()


def configured() -> Endpoints:
    """The endpoints as the notifications file says now (none without one)."""
    file = _file()
    return file.get() if file is not None else _NONE


def read_at_start() -> None:
    """Read the notifications file as a process starts: one that cannot be used stops it there."""
    yaml_files.read_at_start("REGISTRY_NOTIFICATIONS_FILE", configured, NotificationsFileError)


def _request() -> tuple[dict[str, str], dict[str, str]]:
    """The event's request and actor: who asked for the change being recorded."""
    scope = request_scope_var.get()
    headers: dict[str, str] = {}
    if scope is not None:
        for key, value in scope.get("headers", ()):
            headers[key.decode("latin-1")] = value.decode("latin-1")
    request = {
        "id": request_id_var.get() or "",
        "addr": headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip(),
        "host": headers.get("x-forwarded-host", ""),
        "method": scope.get("method", "") if scope is not None else "",
        "useragent": headers.get("user-agent", ""),
    }
    return request, {"name": headers.get(ACTOR_HEADER, "")}


def _url(repository: str, digest: str, kind: str, host: str) -> str:
    """Where the target is read: at the public URL (``REGISTRY_PUBLIC_URL``), else at the host
    the client asked."""
    base = get_settings().public_url.rstrip("/") or (f"http://{host}" if host else "")
    return f"{base}/v2/{repository}/{kind}/{digest}"


def wanted(action: Action, repository: str, media_type: str | None = None) -> bool:
    """Whether any endpoint wants this event (no database work when none does)."""
    return any(e.wants(action, repository, media_type) for e in configured().endpoints)


def record(
    session: Session,
    action: Action,
    repository: str,
    *,
    digest: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
    tag: str | None = None,
    from_repository: str | None = None,
    kind: str = "manifests",
    reason: str | None = None,
) -> None:
    """Write the event, in ``session``'s transaction, for every endpoint that wants it, and
    have the janitor deliver it once the transaction commits. Nothing when none does.
    ``kind`` is ``manifests`` or ``blobs``: where the target's URL points."""
    wanting = [e for e in configured().endpoints if e.wants(action, repository, media_type)]
    if not wanting:
        return
    now = dt.datetime.now(dt.UTC)
    request, actor = _request()
    target: dict[str, Any] = {"repository": repository}
    if media_type:
        target["mediaType"] = media_type
    if size is not None:
        target["size"] = target["length"] = size
    if digest:
        target["digest"] = digest
        target["url"] = _url(repository, digest, kind, request["host"])
    if tag:
        target["tag"] = tag
    if from_repository:
        target["fromRepository"] = from_repository
    settings = get_settings()
    event = {
        "id": str(uuid.uuid4()),
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "action": action,
        "target": target,
        "request": request,
        "actor": actor,
        "source": {"addr": f"{_HOST}:{settings.gateway_port}", "instanceID": INSTANCE},
    }
    if reason is not None:  # a policy's refusal ("deny"): why
        event["reason"] = reason
    payload = json.dumps(event, separators=(",", ":"))
    created = utcnow()
    session.connection().execute(
        _INSERT,
        [
            {
                "endpoint": endpoint.name,
                "repository": repository,
                "delivery_id": str(uuid.uuid4()),
                "action": action,
                "payload": payload,
                "created_at": created,
                "state": PENDING,
                "attempts": 0,
                # Due now, in whole seconds: MySQL 8 rounds a fraction its DATETIME does not
                # keep, which could put it half a second ahead of the wake-up that looks for it.
                "next_attempt_at": created.replace(microsecond=0),
            }
            for endpoint in wanting
        ],
    )
    events.record(
        session,
        events.Event(
            action="notifications:recorded",
            target=events.Target(repository=repository),
            request_id=request["id"] or None,
            source="notifications",
        ),
    )


# A Core INSERT on the session's connection: the ORM's bulk insert of a list of rows costs a
# push several times the statement itself.
_INSERT = insert(Base.metadata.tables["notifications"])


def _record_pull(
    repository: str,
    digest: str,
    media_type: str,
    size: int | None,
    tag: str | None,
    kind: str,
) -> None:
    with db.transaction() as session:
        record(
            session,
            "pull",
            repository,
            digest=digest,
            media_type=media_type,
            size=size,
            tag=tag,
            kind=kind,
        )


async def pulled(
    repository: str,
    digest: str,
    media_type: str,
    size: int | None,
    *,
    tag: str | None = None,
    kind: str = "manifests",
) -> None:
    """Record a pull (a GET of a manifest or a blob) for the endpoints that want pulls, before
    the answer goes out. Nothing, and no database work, when none does (the default: pulls
    are many)."""
    if wanted("pull", repository, media_type):
        await db.write(_record_pull, repository, digest, media_type, size, tag, kind)


_HOST = socket.gethostname()
