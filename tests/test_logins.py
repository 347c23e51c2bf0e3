"""Password checks no client can monopolise: failed logins are limited per address and per
user name (429 with Retry-After, no bcrypt spent), an address that never failed is never
refused for another's sake, and checks for failing addresses wait behind the others."""

from __future__ import annotations

import asyncio
import base64
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api_gateway import logins
from api_gateway.logins import LoginThrottle, LoginThrottled
from shared import users
from tests.conftest import running_registry
from tests.registry import RegistryUnderTest, error_codes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(throttle: LoginThrottle, address: str, user: str, ok: bool) -> bool | str:
    async def run() -> bool | str:
        try:
            return await throttle.check(address, user, lambda: ok)
        except LoginThrottled as exc:
            return f"throttled {exc.retry_after}"

    return asyncio.run(run())


def test_an_address_that_keeps_failing_is_throttled_and_recovers_with_time() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    results = [attempt(throttle, "10.0.0.1", "alice", False) for _ in range(12)]
    assert results[: int(logins.ADDRESS_BURST)] == [False] * int(logins.ADDRESS_BURST)
    assert all(str(r).startswith("throttled") for r in results[int(logins.ADDRESS_BURST) :])
    assert attempt(throttle, "10.0.0.2", "alice", True) is True  # another address: not refused
    clock.now += 1 / logins.ADDRESS_RATE + 0.01
    assert attempt(throttle, "10.0.0.1", "alice", True) is True  # one more try after the wait


def test_a_user_name_under_attack_from_many_addresses_is_throttled_only_for_them() -> None:
    throttle = LoginThrottle(Clock())
    # Ten addresses take turns guessing one user's password: each stays under its own
    # limit, so it is the user's bucket that stops them.
    outcomes = [attempt(throttle, f"10.1.0.{i % 10}", "alice", False) for i in range(60)]
    assert outcomes[: int(logins.USER_BURST)] == [False] * int(logins.USER_BURST)
    assert all(str(o).startswith("throttled") for o in outcomes[int(logins.USER_BURST) :])
    # Alice herself, from an address that never failed, is not locked out.
    assert attempt(throttle, "192.0.2.7", "alice", True) is True


def test_checks_of_failing_addresses_wait_behind_the_others() -> None:
    order: list[str] = []

    async def scenario() -> None:
        throttle = LoginThrottle()
        for _ in range(3):  # make 10.9.9.9 a failing address
            await throttle.check("10.9.9.9", "mallory", lambda: False)
        gate = threading.Event()

        def slow(name: str, ok: bool) -> bool:
            gate.wait(5)
            order.append(name)
            return ok

        tasks = [
            asyncio.create_task(
                throttle.check(f"10.8.0.{i}", "x", functools.partial(slow, f"busy{i}", True))
            )
            for i in range(logins.SLOTS)
        ]
        await asyncio.sleep(0.05)  # both slots taken
        suspect = asyncio.create_task(
            throttle.check("10.9.9.9", "mallory", lambda: slow("suspect", False))
        )
        await asyncio.sleep(0.05)
        clean = asyncio.create_task(throttle.check("10.7.0.1", "bob", lambda: slow("clean", True)))
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks, suspect, clean)

    asyncio.run(scenario())
    assert order.index("clean") < order.index("suspect"), order


# --- through the gateway ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("logins")
    passwords = {f"user{i}": f"pw-{i}-secret" for i in range(6)}
    document = {
        "users": {
            name: {"password_hash": users.hash_password(pw, 8)} for name, pw in passwords.items()
        },
        "grants": [{"repositories": ["*"], "users": ["*"], "actions": ["pull"]}],
    }
    users.write_document(root / "users.yaml", document)
    return root / "users.yaml", passwords


@pytest.fixture(scope="module")
def basic_gateway(
    accounts: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryUnderTest]:
    with running_registry(
        "sqlite",
        tmp_path_factory.mktemp("registry-logins"),
        auth="htpasswd",
        auth_users_file=str(accounts[0]),
    ) as registry:
        yield registry


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def test_a_guessing_flood_is_throttled_while_other_users_log_in(
    basic_gateway: RegistryUnderTest, accounts: tuple[Path, dict[str, str]]
) -> None:
    _, passwords = accounts
    statuses: list[int] = []
    throttled: list[httpx.Response] = []
    stop = threading.Event()

    def guess(address: str) -> None:
        with httpx.Client(
            base_url=basic_gateway.url,
            transport=httpx.HTTPTransport(local_address=address),
            timeout=30,
        ) as client:
            n = 0
            while not stop.is_set():
                n += 1
                answer = client.get("/v2/", headers=basic("user0", f"guess-{address}-{n}"))
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    throttled.append(answer)
                    time.sleep(0.05)

    guessers = [threading.Thread(target=guess, args=(f"127.0.5.{i % 4 + 1}",)) for i in range(16)]
    for thread in guessers:
        thread.start()
    try:
        time.sleep(1)
        for name in ("user1", "user2", "user3", "user4", "user5"):
            login = basic_gateway.http.get("/v2/", headers=basic(name, passwords[name]))
            assert login.status_code == 200, login.text
    finally:
        stop.set()
        for thread in guessers:
            thread.join()
    assert 401 in statuses and throttled
    assert error_codes(throttled[0]) == ["TOOMANYREQUESTS"]
    assert int(throttled[0].headers["Retry-After"]) >= 1
