"""Events: the services publish one after each change commits, through the broker (Redis, or
the filesystem queue on embedded defaults), and the janitor worker consumes it."""

from __future__ import annotations

import time

from tests.registry import RegistryUnderTest


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


def test_the_janitor_consumes_the_events_of_a_push_and_a_delete(
    registry: RegistryUnderTest, repo: str
) -> None:
    _, digest = registry.push_image(repo, "v1", [b"event layer"])
    wait_for_log(registry, "janitor", f"event action=blob:upload:committed repository={repo} ")
    assert registry.http.delete(f"/v2/{repo}/manifests/v1").status_code == 202
    wait_for_log(registry, "janitor", f"event action=tag:deleted repository={repo} digest={digest}")


def test_a_cancelled_upload_is_announced(registry: RegistryUnderTest, repo: str) -> None:
    location = registry.http.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    assert registry.http.delete(location).status_code == 204
    wait_for_log(registry, "janitor", f"event action=blob:upload:cancelled repository={repo} ")
