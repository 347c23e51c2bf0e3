"""The web interface (``/ui/``) in a real browser: Debian's Chromium, driven by Playwright.

Real images go in with skopeo (an image of three layers, a multi-arch index) and referrers
(a signature and an SBOM) over the API; the pages must show what was pushed: names, tag counts,
digests, sizes, platforms, layers, the image's configuration, referrers grouped by artifact
type. Each page is screenshotted into the test output, and no page may log a browser error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from pydantic import ByteSize
from sqlalchemy import create_engine, text

from shared import users
from shared.db import make_engine
from tests.conftest import registry_fixture, running_registry
from tests.images import multi_arch_image, single_image
from tests.registry import OCI_MANIFEST, RegistryUnderTest, eventually, sha256
from tests.replicas import replicated_registry
from tests.test_auth import make_skopeo
from tests.test_referrers import push_referrer

pytestmark = pytest.mark.client

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(os.environ.get("UI_SCREENSHOTS", "test-output/ui"))
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"

registry = registry_fixture("web-ui", ("sqlite", "mariadb"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is required for the web interface tests and was not found at {CHROMIUM} "
            "(install it with `make services`, or point CHROMIUM at the binary); "
            "these tests must not be skipped"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


class Visit:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Browser, base_url: str, shots: str, **options: Any) -> None:
        self.context = browser.new_context(base_url=base_url, **options)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.shots = shots
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def go(self, path: str, screenshot: str | None = None) -> Page:
        response = self.page.goto(path)
        assert response is not None and response.ok, (path, response and response.status)
        if screenshot:
            self.screenshot(screenshot)
        return self.page

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{self.shots}-{name}.png", full_page=True)

    def close(self) -> None:
        self.context.close()
        assert self.errors == []


@pytest.fixture
def visit(browser: Browser, registry: RegistryUnderTest) -> Iterator[Visit]:
    opened = Visit(browser, registry.url, registry.backend)
    yield opened
    opened.close()


def _rows(page: Page, table: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in row.locator("td").all_inner_texts()]
        for row in page.locator(f"#{table} tbody tr").all()
    ]


def _human(size: int) -> str:
    return ByteSize(size).human_readable()


def _image_size(manifest: dict[str, Any], manifest_size: int) -> int:
    blobs = [manifest["config"], *manifest["layers"]]
    return manifest_size + sum(int(blob["size"]) for blob in blobs)


def test_browse_what_was_pushed(
    registry: RegistryUnderTest, visit: Visit, tmp_path: Path, repo: str
) -> None:
    skopeo = make_skopeo(tmp_path / "skopeo")
    app, multi = f"{repo}/app", f"{repo}/multi"
    image = single_image(tmp_path / "image", layer_count=3, layer_size=150_000)
    image_digest, _ = skopeo.push(image, f"docker://{registry.host}/{app}:v1")
    index = multi_arch_image(tmp_path / "multi")
    index_digest, _ = skopeo.push(index, f"docker://{registry.host}/{multi}:latest", "--all")
    signature = push_referrer(registry, app, image_digest, artifact_type=SIGNATURE)
    sbom = push_referrer(registry, app, image_digest, artifact_type=SBOM)

    # The catalog: both repositories, with their tag counts; the search narrows it.
    page = visit.go(f"/ui/?q={repo}", "catalog")
    rows = {r[0]: r for r in _rows(page, "repositories")}
    assert set(rows) == {app, multi}
    assert rows[app][1] == "1" and rows[multi][1] == "1"
    page = visit.go(f"/ui/?q={repo}/mul")
    assert [r[0] for r in _rows(page, "repositories")] == [multi]

    # The image's repository: the tag, its digest and size, as pushed.
    manifest_bytes = image.blobs[image_digest]
    manifest = json.loads(manifest_bytes)
    page = visit.go(f"/ui/repositories/{app}", "repository")
    [row] = _rows(page, "tags")
    assert row[0] == "v1"
    assert image_digest.startswith(row[1]) and len(row[1]) == len("sha256:") + 12
    assert row[3] == _human(_image_size(manifest, len(manifest_bytes)))

    # The manifest page: layers with their sizes, the config, the referrers by type.
    page.locator("#tags a", has_text="v1").click()
    page.wait_for_url(re.compile(re.escape(image_digest)))
    assert page.locator("#digest").inner_text() == image_digest
    layers = _rows(page, "layers")
    assert [row[3] for row in layers] == [_human(layer["size"]) for layer in manifest["layers"]]
    config = json.loads(image.blobs[manifest["config"]["digest"]])
    assert f"{config['os']}/{config['architecture']}" in page.locator("#config").inner_text()
    referrers = page.locator("#referrers").inner_text()
    assert SIGNATURE in referrers and SBOM in referrers
    assert signature[:19] in referrers and sbom[:19] in referrers
    visit.screenshot("manifest")

    # The index: its platforms, each a link to its image.
    page = visit.go(f"/ui/repositories/{multi}", "index-repository")
    [row] = _rows(page, "tags")
    assert index_digest.startswith(row[1])
    assert row[4].split() == ["linux/amd64", "linux/arm64"]
    page = visit.go(f"/ui/repositories/{multi}/-/manifests/{index_digest}", "index")
    platforms = _rows(page, "platforms")
    children = json.loads(index.blobs[index_digest])["manifests"]
    assert [p[0] for p in platforms] == ["linux/amd64", "linux/arm64"]
    page.locator("#platforms a").first.click()
    page.wait_for_url(re.compile(re.escape(children[0]["digest"])))
    assert "linux/amd64" in page.locator("#config").inner_text()


def test_tags_page_through_in_push_order_and_by_name(
    registry: RegistryUnderTest, visit: Visit, repo: str
) -> None:
    names = [f"t{i:03d}" for i in range(120)]
    for name in names:
        registry.push_image(repo, name, layers=[b"shared layer"])
    seen: list[str] = []
    page = visit.go(f"/ui/repositories/{repo}?sort=name")
    assert page.locator("#tag-count").inner_text() == "120"
    while True:
        seen += [row[0] for row in _rows(page, "tags")]
        following = page.locator("a[rel=next]")
        if following.count() == 0:
            break
        following.click()
        page.wait_for_load_state()
    assert seen == names
    # Newest push first (the default): the last pushed leads.
    page = visit.go(f"/ui/repositories/{repo}")
    assert _rows(page, "tags")[0][0] == names[-1], _rows(page, "tags")[:3]
    page = visit.go(f"/ui/repositories/{repo}?q=t11")
    assert sorted(row[0] for row in _rows(page, "tags")) == [f"t11{i}" for i in range(10)]


def test_the_overview_shows_the_registry_and_the_janitors_sweeps(
    registry: RegistryUnderTest, visit: Visit, repo: str
) -> None:
    registry.push_image(repo, "v1", layers=[b"overview layer"])
    gc = registry.admin("gc", "--grace", "0s")
    assert gc.returncode == 0, gc.stderr
    page = visit.go("/ui/overview", "overview")
    engine = create_engine(registry.settings.database_url)
    try:
        with engine.connect() as connection:
            expected = {
                name: connection.execute(text(f"SELECT COUNT(*) FROM {name}")).scalar_one()
                for name in ("repositories", "manifests", "tags")
            }
            expected["blobs"] = connection.execute(
                text("SELECT COUNT(*) FROM blobs WHERE state = 'present'")
            ).scalar_one()
            last = connection.execute(
                text("SELECT examined FROM janitor_runs ORDER BY finished_at DESC LIMIT 1")
            ).scalar_one()
    finally:
        engine.dispose()
    for name, value in expected.items():
        assert page.locator(f"#{name}").inner_text() == str(value), name
    [newest, *_] = _rows(page, "runs")
    assert newest[0] == "collect garbage" and newest[3] == str(last)
    assert page.locator("header a", has_text="Overview").is_visible()


def test_pages_fit_a_phone_and_follow_a_dark_system_theme(
    registry: RegistryUnderTest, browser: Browser, repo: str
) -> None:
    _, digest = registry.push_image(f"{repo}/a-rather-long-repository-name/for-a-phone", "v1.2.3")
    phone = Visit(
        browser,
        registry.url,
        f"{registry.backend}-phone",
        viewport={"width": 390, "height": 844},
        color_scheme="dark",
    )
    try:
        for path, shot in (
            (f"/ui/?q={repo}", "catalog"),
            (f"/ui/repositories/{repo}/a-rather-long-repository-name/for-a-phone", "repository"),
            (
                f"/ui/repositories/{repo}/a-rather-long-repository-name/for-a-phone"
                f"/-/manifests/{digest}",
                "manifest",
            ),
        ):
            page = phone.go(path, shot)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, (path, overflow)
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            red, green, blue = (int(c) for c in re.findall(r"\d+", background)[:3])
            assert max(red, green, blue) < 64, background  # dark, as the system asks
    finally:
        phone.close()


def test_the_pages_work_from_the_keyboard(
    registry: RegistryUnderTest, visit: Visit, repo: str
) -> None:
    registry.push_image(f"{repo}/keys", "v1")
    page = visit.go("/ui/")
    page.focus("#q")
    page.keyboard.type(f"{repo}/keys")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"\?q="))
    # From the search box, Tab moves to the button, then to the only repository's link.
    page.focus("#q")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == f"{repo}/keys"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(f"/ui/repositories/{repo}/keys") + "$"))
    page.focus("#q")
    for _ in range(3):  # from the filter's box: its sort, its button, then the first tag
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "v1"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/-/manifests/sha256:"))


def test_a_config_of_unexpected_shapes_is_shown_as_far_as_it_goes(
    registry: RegistryUnderTest, repo: str
) -> None:
    """A config is whatever its pusher wrote: fields of the wrong types show as absent, the
    page still answers."""
    config = json.dumps(
        {
            "os": "linux",
            "architecture": 7,
            "config": {"Labels": [], "Env": 5, "Cmd": "not a list", "Entrypoint": ["/x", 1]},
            "history": ["x", {"created_by": ["y"]}, {"created_by": "RUN z", "empty_layer": 1}],
        }
    ).encode()
    layer = b"odd config layer"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": registry.push_blob(repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": registry.push_blob(repo, layer),
                "size": len(layer),
            }
        ],
    }
    body = json.dumps(manifest).encode()
    assert registry.push_manifest(repo, "odd", body).status_code == 201
    page = registry.http.get(f"/ui/repositories/{repo}/-/manifests/{sha256(body)}")
    assert page.status_code == 200
    assert "RUN z" in page.text and "linux" in page.text


def test_no_ui_path_reaches_the_api_around_the_gateway(guarded: RegistryUnderTest) -> None:
    """Dot segments, encoded or not, are refused before anything is forwarded: a /ui/ path
    never resolves to /v2/ at the service (which trusts the gateway)."""
    guarded.push_image("private/secret", "v1")
    host, port = guarded.host.split(":")
    for path in (
        "/ui/../v2/private/secret/manifests/v1",
        "/ui/%2e%2e/v2/_catalog",
        "/ui/%2E%2E/v2/private/secret/tags/list",
        "/ui/repositories/..%2f..%2fv2/_catalog",
    ):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(f"GET {path} HTTP/1.1\r\nHost: {guarded.host}\r\n\r\n".encode())
            status = raw.recv(65536).split(b"\r\n", 1)[0]
        assert status.split()[1] in (b"400", b"404"), (path, status)


def test_unknown_pages_answer_404_in_html(registry: RegistryUnderTest) -> None:
    for path in (
        "/ui/repositories/nothing/here",
        "/ui/repositories/Bad_Name",
        "/ui/repositories/a/-/manifests/sha256:" + "0" * 64,
    ):
        response = registry.http.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert "Content-Security-Policy" in response.headers
    home = registry.http.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/ui/"


# --- with authentication on --------------------------------------------------------------------

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryUnderTest]:
    """A registry with sign-in: alice may pull, push and delete everything and list the
    catalog (the overview is hers); bob may pull everything; anonymous may pull public/*."""
    root = tmp_path_factory.mktemp("web-ui-auth")
    users_file = root / "users.yaml"
    users.write_document(
        users_file,
        {
            "users": {
                name: {
                    "password_hash": users.hash_password(password, 4),
                    "catalog": name == "alice",
                }
                for name, password in PASSWORDS.items()
            },
            "grants": [
                {"repositories": ["*"], "users": ["alice"], "actions": ["pull", "push", "delete"]},
                {"repositories": ["*"], "users": ["bob"], "actions": ["pull"]},
                {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
            ],
        },
    )
    with running_registry(
        "sqlite",
        root,
        auth="htpasswd",
        auth_users_file=str(users_file),
        internal_secret="web-ui-test-secret",
    ) as running:
        running.http.auth = ("alice", PASSWORDS["alice"])
        yield running


def sign_in(visit: Visit, user: str, password: str | None = None) -> Page:
    page = visit.go("/ui/login")
    page.fill("#username", user)
    page.fill("#password", password or PASSWORDS[user])
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()
    return page


def test_anonymous_sees_only_what_anonymous_may_pull(
    guarded: RegistryUnderTest, browser: Browser
) -> None:
    guarded.push_image("public/tool", "v1")
    guarded.push_image("private/secret", "v1")
    visit = Visit(browser, guarded.url, "anonymous")
    try:
        page = visit.go("/ui/", "anonymous-catalog")
        assert [r[0] for r in _rows(page, "repositories")] == ["public/tool"]
        assert page.locator("#sign-in").is_visible()
        page = visit.go("/ui/repositories/public/tool")
        assert page.locator("a.delete").count() == 0
        # Not even its name: the same answer as for a repository that does not exist.
        hidden = httpx.get(f"{guarded.url}/ui/repositories/private/secret")
        missing = httpx.get(f"{guarded.url}/ui/repositories/private/nothing")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text.replace("secret", "?") == missing.text.replace("nothing", "?")
    finally:
        visit.close()


def test_sign_in_then_delete_a_tag_and_a_manifest(
    guarded: RegistryUnderTest, browser: Browser
) -> None:
    guarded.push_image("team/app", "v1", layers=[b"one"])
    guarded.push_image("team/app", "keep", layers=[b"one"])
    _, digest = guarded.push_image("team/app", "v2", layers=[b"two"])
    guarded.push_image("team/app", "v2-also", layers=[b"two"])
    push_referrer(guarded, "team/app", digest, artifact_type=SIGNATURE)
    visit = Visit(browser, guarded.url, "alice")
    try:
        page = sign_in(visit, "alice")
        assert page.locator("#user").inner_text() == "alice"
        assert page.locator("header a", has_text="Overview").is_visible()
        assert {r[0] for r in _rows(page, "repositories")} >= {"public/tool", "team/app"}
        visit.screenshot("signed-in-catalog")
        visit.go("/ui/overview")

        # A tag: the confirmation says its manifest stays (another tag points at it).
        page = visit.go("/ui/repositories/team/app?sort=name")
        page.locator("tr[data-tag=v1] a.delete").click()
        page.wait_for_load_state()
        assert "stays" in page.locator("main").inner_text() and "keep" in page.inner_text("main")
        visit.screenshot("delete-tag")
        page.click("button.danger")
        page.wait_for_url(re.compile(r"/ui/repositories/team/app$"))
        assert "v1" not in [r[0] for r in _rows(page, "tags")]
        assert "v1" not in guarded.http.get("/v2/team/app/tags/list").json()["tags"]

        # A manifest: the confirmation names both its tags and its referrer.
        page = visit.go(f"/ui/repositories/team/app/-/manifests/{digest}")
        page.click("#delete-manifest")
        page.wait_for_load_state()
        assert page.locator("#tags-going").inner_text().split() == ["v2", "v2-also"]
        assert f"1 {SIGNATURE}" in page.locator("#referrers-going").inner_text()
        visit.screenshot("delete-manifest")
        page.click("button.danger")
        page.wait_for_url(re.compile(r"/ui/repositories/team/app$"))
        assert [r[0] for r in _rows(page, "tags")] == ["keep"]
        assert guarded.http.get(f"/v2/team/app/manifests/{digest}").status_code == 404

        # Signing out: anonymous again.
        page.click("header form button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("#sign-in").is_visible()
        assert [r[0] for r in _rows(page, "repositories")] == ["public/tool"]
    finally:
        visit.close()


def test_a_wrong_password_signs_nobody_in(guarded: RegistryUnderTest, browser: Browser) -> None:
    visit = Visit(browser, guarded.url, "wrong")
    try:
        page = sign_in(visit, "alice", "not-her-password")
        assert "Wrong user name or password" in page.inner_text("main")
        assert page.context.cookies() == [
            c for c in page.context.cookies() if c["name"] != "registry_session"
        ]
    finally:
        visit.close()


def test_a_new_password_ends_the_sessions_of_the_old_one(
    guarded: RegistryUnderTest, browser: Browser
) -> None:
    visit = Visit(browser, guarded.url, "carol")
    try:
        page = sign_in(visit, "carol")
        assert page.locator("#user").inner_text() == "carol"
        path = Path(guarded.settings.auth_users_file)
        document = users.read_document(path)
        document["users"]["carol"]["password_hash"] = users.hash_password("a new one", 4)
        users.write_document(path, document)

        def signed_out() -> bool:
            return visit.go("/ui/").locator("#sign-in").count() == 1

        eventually(signed_out, timeout=10, what="carol's session ended")
    finally:
        visit.close()


def test_signing_out_ends_the_session_for_a_copy_of_its_cookie_too(
    guarded: RegistryUnderTest, browser: Browser
) -> None:
    guarded.push_image("team/copied", "v1")
    # Ended sessions that expired two hours and ten minutes ago: the next sign-out forgets the
    # first, and keeps the second for a gateway whose clock is behind.
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for name, expired in (
        ("long-gone", dt.timedelta(hours=2)),
        ("just-gone", dt.timedelta(minutes=10)),
    ):
        guarded.execute(
            "INSERT INTO ui_ended_sessions (session_id, expires_at) VALUES (:name, :at)",
            name=name,
            at=now - expired,
        )
    visit = Visit(browser, guarded.url, "alice-signs-out")
    try:
        sign_in(visit, "alice")
        page = visit.go("/ui/repositories/team/copied")
        token = form_token(page.content())
        copied = {c["name"]: c["value"] for c in visit.context.cookies()}
        assert httpx.get(f"{guarded.url}/ui/repositories/team/copied", cookies=copied).is_success
        page.click("header form button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("#sign-in").is_visible()
    finally:
        visit.close()
    ended = guarded.query("SELECT session_id, expires_at FROM ui_ended_sessions")
    assert "long-gone" not in [row[0] for row in ended]
    assert "just-gone" in [row[0] for row in ended]
    # Kept until the session would have expired (the cookie's lifetime, 12 hours).
    latest = max(_as_datetime(row[1]) for row in ended)
    left = latest - dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert dt.timedelta(hours=11) < left <= dt.timedelta(hours=12)
    # Signing out again from a page left open in another tab (the browser says the post comes
    # from the registry's own page): nothing to end, the cookie goes. From another site, with
    # that page's token, or without a browser's word, refused: only the cookie's token does.
    signed_out_page = {"registry_csrf": copied["registry_csrf"]}
    stale = httpx.post(
        f"{guarded.url}/ui/logout",
        cookies=signed_out_page,
        data={"csrf": token},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert stale.status_code == 303 and "registry_session" in stale.headers["set-cookie"]
    for where in ("cross-site", "same-site", None):
        headers = {} if where is None else {"Sec-Fetch-Site": where}
        elsewhere = httpx.post(
            f"{guarded.url}/ui/logout",
            cookies=signed_out_page,
            data={"csrf": token},
            headers=headers,
        )
        assert elsewhere.status_code == 403, where
        assert "set-cookie" not in elsewhere.headers
    with_cookie_token = httpx.post(
        f"{guarded.url}/ui/logout",
        cookies=signed_out_page,
        data={"csrf": copied["registry_csrf"]},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert with_cookie_token.status_code == 303
    # The copy made before signing out signs nobody in: its pages are anonymous ones, and its
    # post, with the form token it had, deletes nothing.
    home = httpx.get(f"{guarded.url}/ui/", cookies=copied)
    assert home.status_code == 200
    assert 'id="user"' not in home.text and 'id="sign-in"' in home.text
    assert (
        httpx.get(f"{guarded.url}/ui/repositories/team/copied", cookies=copied).status_code == 404
    )
    target = f"{guarded.url}/ui/repositories/team/copied/-/tags/v1/delete"
    refused = httpx.post(target, cookies=copied, data={"csrf": token})
    assert refused.status_code == 404  # to anonymous, team/copied does not exist
    assert guarded.http.get("/v2/team/copied/tags/list").json()["tags"] == ["v1"]
    # A browser that still sends the ended session's cookie signs in again (the new cookie
    # replaces it, as the same name, host and path).
    with httpx.Client(base_url=guarded.url) as again:
        for name, value in copied.items():
            again.cookies.set(name, value, domain=httpx.URL(guarded.url).host, path="/ui")
        login = again.get("/ui/login")
        signed = again.post(
            "/ui/login",
            data={
                "csrf": form_token(login.text),
                "username": "alice",
                "password": PASSWORDS["alice"],
            },
        )
        assert signed.status_code == 303, signed.text
        assert '<span id="user">alice</span>' in again.get("/ui/").text


def test_a_sign_out_that_cannot_be_recorded_says_so_and_the_session_goes_on(
    guarded: RegistryUnderTest,
) -> None:
    with httpx.Client(base_url=guarded.url) as browser_like:
        login = browser_like.get("/ui/login")
        signed = browser_like.post(
            "/ui/login",
            data={"csrf": form_token(login.text), "username": "bob", "password": PASSWORDS["bob"]},
        )
        assert signed.status_code == 303
        token = form_token(browser_like.get("/ui/").text)
        guarded.kill("manifest-service")
        try:
            refused = browser_like.post("/ui/logout", data={"csrf": token})
            assert refused.status_code == 503
            assert "could not be recorded" in refused.text
            assert "set-cookie" not in refused.headers  # the cookie stays: still signed in
        finally:
            guarded.restart("manifest-service")
        assert '<span id="user">bob</span>' in browser_like.get("/ui/").text
        # The database's write lock held elsewhere: the same (SQLite's; the registry waits for
        # it a few seconds).
        engine = make_engine(guarded.settings.database_url)
        try:
            with engine.begin():
                refused = browser_like.post("/ui/logout", data={"csrf": token}, timeout=60)
        finally:
            engine.dispose()
        assert refused.status_code == 503, refused.text
        assert "set-cookie" not in refused.headers
        assert '<span id="user">bob</span>' in browser_like.get("/ui/").text
        assert browser_like.post("/ui/logout", data={"csrf": token}).status_code == 303
        assert '<span id="user">' not in browser_like.get("/ui/").text


def _as_datetime(value: object) -> dt.datetime:
    """A DATETIME column's value as read (SQLite gives text)."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def form_token(html: str) -> str:
    """The CSRF token a page's forms send back (every signed-in page has the sign-out form)."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "no form on the page"
    return found.group(1)


def test_deletes_need_the_grant_and_the_sessions_own_form_token(
    guarded: RegistryUnderTest, browser: Browser
) -> None:
    guarded.push_image("team/kept", "v1")
    visit = Visit(browser, guarded.url, "bob")
    try:
        page = sign_in(visit, "bob")
        assert page.locator("header a", has_text="Overview").count() == 0
        bobs = {c["name"]: c["value"] for c in visit.context.cookies()}
        assert httpx.get(f"{guarded.url}/ui/overview", cookies=bobs).status_code == 404
        page = visit.go("/ui/repositories/team/kept")
        assert page.locator("a.delete").count() == 0
        bobs_token = form_token(page.content())
        target = f"{guarded.url}/ui/repositories/team/kept/-/tags/v1/delete"
        # bob's own session and token, but no delete grant: refused.
        refused = httpx.post(target, cookies=bobs, data={"csrf": bobs_token})
        assert refused.status_code == 403
        assert "You may not delete from team/kept" in refused.text  # the grant, not the token
        # alice's session without her session's token: refused before the registry looks at
        # it. Not with none, another, bob's, nor the value of a registry_csrf cookie, her own
        # or one a page of a sibling host set for the registry's (the field matching it).
        alice = Visit(browser, guarded.url, "alice-csrf")
        try:
            sign_in(alice, "alice")
            alices_token = form_token(alice.go("/ui/").content())
            theirs = {c["name"]: c["value"] for c in alice.context.cookies()}
        finally:
            alice.close()
        assert alices_token != bobs_token
        tossed = "t" * 43
        for cookies, data in (
            (theirs, {}),
            (theirs, {"csrf": "x" * 43}),
            (theirs, {"csrf": bobs_token}),
            (theirs, {"csrf": theirs["registry_csrf"]}),
            ({**theirs, "registry_csrf": tossed}, {"csrf": tossed}),
        ):
            answer = httpx.post(target, cookies=cookies, data=data)
            assert answer.status_code == 403, data
            assert "CSRF token is missing or wrong" in answer.text, data
        assert guarded.http.get("/v2/team/kept/tags/list").json()["tags"] == ["v1"]
        # With her session's token, the same post deletes.
        done = httpx.post(target, cookies=theirs, data={"csrf": alices_token})
        assert done.status_code == 303
        assert guarded.http.get("/v2/team/kept/tags/list").json()["tags"] == []
    finally:
        visit.close()


# --- replicas --------------------------------------------------------------------------------


def test_a_session_begun_at_one_gateway_replica_works_at_the_other(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Sessions and form tokens live in signed cookies, not in a replica's memory: sign in at
    gateway 1, browse and delete at gateway 2 (each manifest service replica behind the
    balancer serves either)."""
    root = tmp_path_factory.mktemp("web-ui-replicas")
    users_file = root / "users.yaml"
    users.write_document(
        users_file,
        {
            "users": {"alice": {"password_hash": users.hash_password(PASSWORDS["alice"], 4)}},
            "grants": [
                {"repositories": ["*"], "users": ["alice"], "actions": ["pull", "push", "delete"]}
            ],
        },
    )
    with replicated_registry(
        "file",
        root,
        auth="htpasswd",
        auth_users_file=str(users_file),
        internal_secret="web-ui-replicas-secret",
    ) as running:
        running.http.auth = ("alice", PASSWORDS["alice"])
        running.push_image("team/shared", "v1")
        with running.gateway(1) as one, running.gateway(2) as two:
            one.get("/ui/login").raise_for_status()
            token = one.cookies["registry_csrf"]
            signed = one.post(
                "/ui/login",
                data={"csrf": token, "username": "alice", "password": PASSWORDS["alice"]},
            )
            assert signed.status_code == 303 and signed.headers["location"] == "/ui/"
            two.cookies.update(one.cookies)
            page = two.get("/ui/repositories/team/shared")
            assert page.status_code == 200 and '<span id="user">alice</span>' in page.text
            assert form_token(one.get("/ui/").text) == form_token(page.text)
            deleted = two.post(
                "/ui/repositories/team/shared/-/tags/v1/delete",
                data={"csrf": form_token(page.text)},
            )
            assert deleted.status_code == 303, deleted.text
            # Signed out at gateway 1: a copy of the cookie signs nobody in at gateway 2.
            copied = {name: value for name, value in two.cookies.items()}
            signed_out = one.post("/ui/logout", data={"csrf": form_token(page.text)})
            assert signed_out.status_code == 303, signed_out.text
            two.cookies.clear()
            two.cookies.update(copied)
            for _ in range(4):  # whichever manifest service replica answers
                assert '<span id="user">' not in two.get("/ui/").text
        assert running.http.get("/v2/team/shared/manifests/v1").status_code == 404
