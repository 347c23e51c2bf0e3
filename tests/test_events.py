"""Events: a change the janitor has work for records an event in its own transaction (the
outbox), relayed through the broker (Redis, or the filesystem queue on embedded defaults) once
it commits; the janitor worker consumes it, and the outbox row goes. Changes that leave the
janitor nothing to do record none."""

from __future__ import annotations

import time

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
