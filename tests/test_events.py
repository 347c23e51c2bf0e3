"""Events: a change the janitor has work for records an event in its own transaction (the
outbox), relayed through the broker (Redis, or the filesystem queue on embedded defaults) once
it commits; the janitor worker consumes it, and the outbox row goes. Changes that leave the
janitor nothing to do record none."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

from shared import events
from shared.settings import get_settings
from tests.registry import RegistryUnderTest, eventually, sha256


def wait_for_log(
    registry: RegistryUnderTest, process: str, needle: str, timeout: float = 30
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = registry.log(process)
        if needle in log:
            return log
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the {process} log within {timeout}s")


def outbox(registry: RegistryUnderTest) -> list[str]:
    return [payload for (payload,) in registry.query("SELECT payload FROM event_outbox")]


def test_the_janitor_consumes_the_event_of_a_push_and_the_outbox_empties(
    registry: RegistryUnderTest, repo: str
) -> None:
    layer = f"event layer {repo}".encode()
    registry.push_image(repo, "v1", [layer])
    wait_for_log(registry, "janitor", f"event action=blob:upload:committed repository={repo} ")
    eventually(lambda: not any(repo in payload for payload in outbox(registry)), what="sent")


def test_changes_the_janitor_has_no_work_for_record_no_event(
    registry: RegistryUnderTest, repo: str
) -> None:
    """A tag deleted, a manifest deleted, a blob unlinked, a blob mounted: no event. Checked
    after a later push's event has reached the janitor."""
    layer = f"quiet layer {repo}".encode()
    _, digest = registry.push_image(repo, "v1", [layer])
    registry.push_image(repo, "v2", [f"other layer {repo}".encode()])
    mounted = registry.http.post(
        f"/v2/{repo}-copy/blobs/uploads/", params={"mount": sha256(layer), "from": repo}
    )
    assert mounted.status_code == 201
    assert registry.http.delete(f"/v2/{repo}/manifests/v2").status_code == 202
    assert registry.http.delete(f"/v2/{repo}/manifests/{digest}").status_code == 202
    assert registry.http.delete(f"/v2/{repo}/blobs/{sha256(layer)}").status_code == 202
    registry.push_blob(f"{repo}-last", b"the last push")
    log = wait_for_log(
        registry, "janitor", f"event action=blob:upload:committed repository={repo}-last "
    )
    for action in ("blob:mounted", "blob:deleted", "manifest:deleted", "tag:deleted"):
        assert f"event action={action} repository={repo}" not in log
    eventually(lambda: not any(repo in payload for payload in outbox(registry)), what="sent")


def test_a_cancelled_upload_is_announced(registry: RegistryUnderTest, repo: str) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.delete(location).status_code == 204
    wait_for_log(registry, "janitor", f"event action=blob:upload:cancelled repository={repo} ")


def test_a_relayed_batch_sends_one_notification_wake_up_per_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``notifications:recorded`` only wakes the janitor to deliver what the database holds:
    of the events a relay sends at once, one per repository goes to the broker (a real
    filesystem queue here), as a dispatch of the repository's notifications, the others are
    done with it; other events all go, as events."""
    monkeypatch.setenv("REGISTRY_BROKER_URL", f"filesystem://{tmp_path / 'broker'}")
    get_settings.cache_clear()
    events._publisher.close()
    try:

        def event(action: events.Action, repository: str) -> events.Event:
            return events.Event(action=action, target=events.Target(repository=repository))

        batch = [
            event("notifications:recorded", "a"),
            event("blob:upload:committed", "a"),
            event("notifications:recorded", "a"),
            event("notifications:recorded", "b"),
            event("notifications:recorded", "a"),
        ]
        done = events._publish_batch(batch)
        assert sorted(done) == sorted(e.id for e in batch)
        messages = [json.loads(path.read_text()) for path in tmp_path.rglob("*.msg")]
        sent = sorted(
            (m["headers"]["task"], m["properties"]["delivery_info"]["routing_key"], args)
            for m in messages
            for args in ast.literal_eval(m["headers"]["argsrepr"])
            if isinstance(args, str)
        )
        settings = get_settings()
        assert sent == [
            (events.NOTIFY_TASK, settings.notifications_queue, "a"),
            (events.NOTIFY_TASK, settings.notifications_queue, "b"),
        ]
        (handled,) = [
            (args["action"], args["target"]["repository"])
            for m in messages
            if m["headers"]["task"] == events.EVENT_TASK
            for args in ast.literal_eval(m["headers"]["argsrepr"])
        ]
        assert handled == ("blob:upload:committed", "a")
    finally:
        events._publisher.close()
        get_settings.cache_clear()


def test_an_event_reads_back_as_written_and_as_an_earlier_version_wrote_it() -> None:
    """An event goes through the outbox and the broker as JSON and is read back the same; rows
    an earlier version wrote (timestamps with ``Z``, keys since dropped) are still read."""
    event = events.Event(
        action="blob:upload:committed",
        target=events.Target(repository="a/b", digest="sha256:" + "0" * 64, size=3),
        request_id="r-1",
        source="blob-service",
    )
    assert events.Event.parse_json(event.as_json()) == event
    assert events.Event.parse(json.loads(json.dumps(event.as_message()))) == event
    earlier = (
        '{"id":"x","timestamp":"2026-01-02T03:04:05.678901Z","action":"blob:deleted",'
        '"target":{"repository":"r","digest":null},"request_id":null,"source":"",'
        '"schema_version":1,"dropped":true}'
    )
    read = events.Event.parse_json(earlier)
    assert (read.id, read.action, read.target.repository) == ("x", "blob:deleted", "r")
    assert read.timestamp.isoformat() == "2026-01-02T03:04:05.678901+00:00"


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[]",
        '{"action": "blob:exploded", "target": {"repository": "r"}}',
        '{"action": "blob:deleted"}',
        '{"action": "blob:deleted", "target": {"repository": 7}}',
        '{"action": "blob:deleted", "target": {"repository": "r", "size": "3"}}',
        '{"action": "blob:deleted", "target": {"repository": "r"}, "timestamp": "Tuesday"}',
        '{"action": "blob:deleted", "target": {"repository": "r"}, "request_id": 5}',
    ],
)
def test_a_message_that_is_not_an_event_is_refused(message: str) -> None:
    with pytest.raises(events.EventInvalid):
        events.Event.parse_json(message)
