"""The notifications file's endpoints, checked as they are read (``shared.notifications``
says what they do). Imported only where a notifications file is read: pydantic, which checks
them, costs a process about 7 MiB of memory.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from shared.models import Notification
from shared.notifications import Action, Endpoints, NotificationsFileError

ENVELOPE = "application/vnd.docker.distribution.events.v1+json"
CLOUDEVENTS = "application/cloudevents+json"
SIGNATURE_HEADER = "X-Registry-Signature-256"
DELIVERY_HEADER = "X-Registry-Delivery"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"


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


class NotificationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: tuple[Endpoint, ...] = ()


def parse(document: Any, base: Path = Path()) -> Endpoints:
    try:
        found = NotificationsFile.model_validate(document)
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
