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
import fnmatch
import hashlib
import hmac
import json
import socket
import uuid
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from sqlalchemy import insert
from sqlalchemy.orm import Session

from shared import db, events, yaml_files
from shared.models import Notification, utcnow
from shared.observability import request_id_var, request_scope_var
from shared.settings import get_settings
from shared.web import ACTOR_HEADER

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS = "application/cloudevents+json"
SIGNATURE_HEADER = "X-Registry-Signature-256"
DELIVERY_HEADER = "X-Registry-Delivery"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
PENDING, DELIVERED, PARKED = "pending", "delivered", "parked"
# The media type of a blob's event, as the reference registry gives it.
BLOB_MEDIA_TYPE = "application/octet-stream"
INSTANCE = str(uuid.uuid4())  # the event's source.instanceID: this process

Action = Literal["push", "delete", "mount", "pull", "deny"]


class NotificationsFileError(ValueError):
    """The notifications file cannot be used (its message says where and why)."""


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    url: str
    headers: dict[str, str | list[str]] = {}
    secret: SecretStr = SecretStr("")
    secret_file: str = ""
    timeout_seconds: float = Field(5.0, gt=0, le=300)
    actions: tuple[Action, ...] = ("push", "delete")
    repositories: tuple[str, ...] = ("*",)
    ignore_media_types: tuple[str, ...] = ()
    format: Literal["distribution", "cloudevents"] = "distribution"
    park_after_seconds: float = Field(24 * 3600.0, gt=0)
    max_backoff_seconds: float = Field(300.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an http(s) URL, not {url!r}")
        return url

    def wants(self, action: str, repository: str, media_type: str | None) -> bool:
        return (
            action in self.actions
            and any(fnmatch.fnmatchcase(repository, glob) for glob in self.repositories)
            and (media_type is None or media_type not in self.ignore_media_types)
        )

    def request(self, rows: list[Notification]) -> tuple[bytes, dict[str, str]]:
        """The body and headers that deliver ``rows`` (one event, or a batch of pulls, which
        share a delivery id) to this endpoint."""
        events = [json.loads(row.payload) for row in rows]
        document: Any
        if self.format == "cloudevents":
            content_type = CLOUDEVENTS if len(events) == 1 else CLOUDEVENTS_BATCH
            document = [_cloudevent(event) for event in events]
            if len(events) == 1:
                document = document[0]
        else:
            content_type = ENVELOPE
            document = {"events": events}
        body = json.dumps(document, separators=(",", ":")).encode()
        headers = {
            name: ", ".join(value) if isinstance(value, list) else value
            for name, value in self.headers.items()
        }
        headers.update({"Content-Type": content_type, DELIVERY_HEADER: rows[0].delivery_id})
        secret = self.secret.get_secret_value()
        if secret:
            headers[SIGNATURE_HEADER] = signature(secret, body)
        return body, headers


def _cloudevent(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` as a CloudEvents 1.0 event (structured JSON)."""
    return {
        "specversion": "1.0",
        "id": event["id"],
        "source": f"registry/{event['source']['instanceID']}",
        "type": f"registry.{event['action']}",
        "subject": event["target"]["repository"],
        "time": event["timestamp"],
        "datacontenttype": "application/json",
        "data": event,
    }


def signature(secret: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``body`` under ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Endpoints(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[Endpoint, ...] = ()

    def get(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def parse(document: Any, base: Path = Path()) -> Endpoints:
    if document is None:
        return Endpoints()
    try:
        found = Endpoints.model_validate(document)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise NotificationsFileError(f"{where}: {problem['msg']}") from None
    names = [e.name for e in found.endpoints]
    if len(set(names)) != len(names):
        raise NotificationsFileError("endpoints: two endpoints have one name")
    read = []
    for endpoint in found.endpoints:
        if endpoint.secret_file:
            path = base / endpoint.secret_file
            try:
                secret = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise NotificationsFileError(
                    f"endpoints.{endpoint.name}: secret_file {path}: {exc.strerror}"
                ) from None
            endpoint = endpoint.model_copy(update={"secret": SecretStr(secret)})
        read.append(endpoint)
    return Endpoints(endpoints=tuple(read))


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
    session.execute(
        insert(Notification),
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
                "next_attempt_at": created,
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
