"""A bounded, hypothesis-driven fuzzing pass through the gateway, against three whole
registries of real processes: anonymous (the default), HTTP Basic (``REGISTRY_AUTH=htpasswd``)
and bearer tokens (``REGISTRY_AUTH=token``).

Requests are written byte for byte on a socket (no client library normalises them): methods,
repository names (valid, seeded, traversal in every encoding, over-long, upper-case, odd
characters), references and digests (seeded, well-formed, wrong algorithm or length,
garbage), upload ids, query parameters (mount/from, digest, n/last, scope...), headers
(credentials good, wrong and malformed, content types, ranges, the internal secret's header,
random ones) and bodies (empty, random bytes, manifests made of the seeded blobs, forms;
sent with their length, chunked, cut short or overlong). Path segments, query values and the
numbers of ``Range`` and ``Content-Range`` are also drawn from the whole of Unicode, with
what Python takes for digits ('²', '①', '٣') weighted in: the registry's numbers are ASCII
digits only.

Two properties, checked on every request:

- no answer is a 5xx (and the server always answers);
- a refused request (4xx) changes nothing stored: every database table and the storage's
  files are the same after it as before. (The janitor is stopped, so that nothing else
  changes them meanwhile.) The one change the spec asks for is allowed: a failed upload
  completion discards that upload.

The number of requests tried is printed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared import users
from shared.reference import TAG_RE
from tests.conftest import running_registry
from tests.registry import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryUnderTest,
    sha256,
)

SECONDS_PER_STACK = 30.0
MAX_EXAMPLES = 4000
SERVICE = "fuzz-registry"
TRIED: dict[str, int] = {}


# --- the registries under test, with seeded content -------------------------------------------


@dataclass
class Stack:
    mode: str
    registry: RegistryUnderTest
    credentials: list[str | None]  # Authorization header values to draw from
    repositories: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)  # digest -> size, for manifests


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("fuzz-users")
    passwords = {name: secrets.token_urlsafe(10) for name in ("alice", "reader", "bob")}
    document = {
        "users": {
            name: {"password_hash": users.hash_password(password, 4), "catalog": name == "alice"}
            for name, password in passwords.items()
        },
        "grants": [
            {
                "repositories": ["team-a/*", "public/*"],
                "users": ["alice"],
                "actions": ["pull", "push", "delete"],
            },
            {"repositories": ["team-a/*"], "users": ["reader"], "actions": ["pull"]},
            {"repositories": ["team-b/*"], "users": ["bob"], "actions": ["pull", "push"]},
            {"repositories": ["public/*"], "anonymous": True, "actions": ["pull"]},
        ],
    }
    path = root / "users.yaml"
    users.write_document(path, document)
    return path, passwords


def _writer(stack: Stack, repo: str) -> dict[str, str]:
    """Headers of a user who may push to ``repo`` (alice: team-a and public; bob: team-b)."""
    if stack.mode == "none":
        return {}
    basic = stack.credentials[3] if repo.startswith("team-b/") else stack.credentials[1]
    assert basic is not None
    if stack.mode == "htpasswd":
        return {"Authorization": basic}
    answer = stack.registry.http.get(
        "/auth/token",
        params={"service": SERVICE, "scope": f"repository:{repo}:pull,push"},
        headers={"Authorization": basic},
    )
    return {"Authorization": f"Bearer {answer.json()['token']}"}


def _seed(stack: Stack) -> None:
    """An image in each of three repositories, and an upload left open in each."""
    http = stack.registry.http
    for repo in ("team-a/seed", "team-b/seed", "public/seed"):
        headers = _writer(stack, repo)
        digests = []
        for data in (
            json.dumps({"architecture": "amd64", "os": "linux"}).encode(),
            secrets.token_bytes(3000),
        ):
            start = http.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
            assert start.status_code == 202, start.text
            digest = sha256(data)
            done = http.put(
                start.headers["Location"], params={"digest": digest}, content=data, headers=headers
            )
            assert done.status_code == 201, done.text
            digests.append(digest)
            stack.blobs[digest] = len(data)
        manifest = _manifest(digests[0], [digests[1]], stack.blobs)
        put = http.put(
            f"/v2/{repo}/manifests/v1",
            content=manifest,
            headers={**headers, "Content-Type": OCI_MANIFEST},
        )
        assert put.status_code == 201, put.text
        stack.repositories.append(repo)
        stack.digests += [*digests, sha256(manifest)]
        open_upload = http.post(f"/v2/{repo}/blobs/uploads/", headers=headers)
        assert open_upload.status_code == 202
        stack.uploads.append(open_upload.headers["Docker-Upload-UUID"])
    stack.tags += ["v1", "latest", "v2"]


def _manifest(config: str, layers: list[str], sizes: dict[str, int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": sizes[config]},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": sizes[d]} for d in layers],
        }
    ).encode()


@pytest.fixture(scope="module", params=["none", "htpasswd", "token"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    users_file: tuple[Path, dict[str, str]],
) -> Iterator[Stack]:
    mode: str = request.param
    path, passwords = users_file
    overrides = {"internal_secret": secrets.token_urlsafe(16)}
    if mode != "none":
        overrides |= {"auth": mode, "auth_users_file": str(path), "auth_service": SERVICE}
    with running_registry("sqlite", tmp_path_factory.mktemp(f"fuzz-{mode}"), **overrides) as reg:
        alice = _basic("alice", passwords["alice"])
        credentials: list[str | None] = [
            None,
            alice,
            _basic("reader", passwords["reader"]),
            _basic("bob", passwords["bob"]),
            _basic("alice", "wrong"),
            _basic("nobody", passwords["alice"]),
            "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
            "Basic ====",
            "Bearer ",
            "Bearer a.b.c",
            "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
            "Negotiate abc",
        ]
        stack = Stack(mode, reg, credentials)
        _seed(stack)
        if mode == "token":
            for scope in (
                "repository:team-a/seed:pull,push,delete",
                "repository:team-b/seed:pull",
                "registry:catalog:*",
            ):
                for who in (alice, credentials[2], None):
                    answer = reg.http.get(
                        "/auth/token",
                        params={"service": SERVICE, "scope": scope},
                        headers={"Authorization": who} if who else {},
                    )
                    credentials.append(f"Bearer {answer.json()['token']}")
        # Nothing changes the stored data behind the requests' backs from here on (the janitor
        # is one process, its beat a thread of it).
        reg.kill("janitor")
        yield stack


# --- snapshots of what is stored --------------------------------------------------------------


class Snapshots:
    def __init__(self, registry: RegistryUnderTest) -> None:
        database = registry.settings.database_url.removeprefix("sqlite:///")
        self.connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        self.connection.isolation_level = None
        self.tables = [
            name
            for (name,) in self.connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'alembic_version'"
            )
        ]
        self.storage = registry.storage_root

    def take(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            table: sorted(map(repr, self.connection.execute(f"SELECT * FROM {table}")))
            for table in self.tables
        }
        state["storage"] = sorted(
            (str(p.relative_to(self.storage)), p.stat().st_size)
            for p in self.storage.rglob("*")
            if p.is_file()
        )
        return state

    def close(self) -> None:
        self.connection.close()


def settled(snapshots: Snapshots, state: dict[str, Any], seconds: float = 5.0) -> dict[str, Any]:
    """The stored state once it has stopped changing (two snapshots 0.05 s apart agree)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        again = snapshots.take()
        if again == state:
            break
        state = again
    return state


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        key: {
            "gone": sorted(set(before[key]) - set(after[key])),
            "new": sorted(set(after[key]) - set(before[key])),
        }
        for key in before
        if before[key] != after[key]
    }


def only_an_upload_was_discarded(
    changes: dict[str, Any], upload: str | None, after: dict[str, Any]
) -> bool:
    """The one change a refused request may make, as the spec asks: an upload whose data fails
    (a digest that does not match, a body cut short) ends. Its row goes at once (only the row
    of the upload the request named); its object, and that of a failed single-POST upload, is
    left to the janitor (the ``blob:upload:cancelled`` event; stopped here), so an object under
    ``uploads/`` that no upload row names may appear or change. The event that hands it to
    the janitor goes through the outbox: a ``blob:upload:cancelled`` row may appear, and rows
    of earlier requests may go as the relay sends them. Nothing else."""
    if set(changes) - {"uploads", "storage", "event_outbox"}:
        return False
    recorded = changes.get("event_outbox", {}).get("new", [])
    if not all('"action":"blob:upload:cancelled"' in row for row in recorded):
        return False
    if "uploads" in changes:
        change = changes["uploads"]
        if change["new"] or upload is None or not all(upload in row for row in change["gone"]):
            return False
    live = {row.split("'")[1] for row in after["uploads"]}
    for entry in [
        *changes.get("storage", {}).get("new", []),
        *changes.get("storage", {}).get("gone", []),
    ]:
        parts = entry[0].split("/")
        if parts[0] != "uploads" or len(parts) < 2 or parts[1] in live:
            return False
    return True


# --- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "short" (declared longer, then half-closed), "long"
    upload: str | None = None  # the upload id in the path, if any

    def wire(self, host: str) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        payload = self.body
        if self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            payload = (
                b"".join(
                    b"%x\r\n%s\r\n" % (len(part), part)
                    for part in (self.body[i : i + 700] for i in range(0, len(self.body), 700))
                )
                + b"0\r\n\r\n"
            )
        elif self.framing == "short":
            lines.append(f"Content-Length: {len(self.body) + 100}")
        elif self.framing == "long":
            lines.append(f"Content-Length: {max(0, len(self.body) - 5)}")
        elif self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload

    def describe(self) -> str:
        return f"{self.method} {self.target} {self.headers} {self.framing} body={self.body[:120]!r}"


def send(registry: RegistryUnderTest, request: Fuzzed) -> int | None:
    host, port = registry.host.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request.wire(registry.host))
        if request.framing == "short":
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


# --- strategies -------------------------------------------------------------------------------

ODD_SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E",
    "..%2f",
    "%2f",
    "%5c",
    "%00",
    "",
    "A",
    "Upper",
    "-x",
    "x-",
    "a__b",
    "a...b",
    "%C3%BC",
    "%ff",
    "%",
    "a%20b",
    "_catalog",
    "uploads",
    "blobs",
    "manifests",
    "tags",
    "a" * 300,
    "v2",
    "%252e%252e",
    ";",
    "a;b=c",
]
SAFE = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%")
# Numbers as a client may write them: ASCII digits, and what Python also takes for digits
# (superscripts, circled and fullwidth digits, other scripts' digits) or forgives around one
# (signs, spaces, underscores). Only ASCII digits are a number to the registry.
DIGIT_LIKE = st.one_of(
    st.sampled_from("\u00b2\u00b3\u00b9\u2460\u0663\u06f5\u0967\uff11\u00bd\u216b"),
    st.characters(categories=["Nd", "Nl", "No"]),
)
NUMBERISH = st.one_of(
    st.text(st.one_of(st.sampled_from("0123456789"), DIGIT_LIKE), min_size=1, max_size=6),
    st.text(st.one_of(st.sampled_from("0123456789+- _\u00a0"), DIGIT_LIKE), min_size=1, max_size=8),
)
# Any text at all, from the whole of Unicode; in a header value, no control characters (a line
# break there would start another header, or end them).
ANY_TEXT = st.text(max_size=16)
ANY_HEADER_TEXT = st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=16)


def raw_header(value: str) -> str:
    """``value`` as the UTF-8 bytes a client would put on the wire (the request is written out
    as latin-1, one byte per character)."""
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


def names(stack: Stack) -> st.SearchStrategy[str]:
    seeded = st.sampled_from([*stack.repositories, "team-a/other", "team-b/x", "public/new", "x"])
    # A name component of the spec's grammar, quickly: alphanumerics joined by separators.
    alnum = st.text("abcxyz0129", min_size=1, max_size=6)
    component = st.builds(
        lambda parts, seps: "".join(p + s for p, s in zip(parts, seps, strict=False)) + parts[-1],
        st.lists(alnum, min_size=1, max_size=3),
        st.lists(st.sampled_from([".", "_", "__", "-", "--"]), max_size=2),
    )
    return st.one_of(
        seeded,
        seeded,
        seeded,
        st.lists(component, min_size=1, max_size=3).map("/".join),
        st.lists(
            st.one_of(
                st.sampled_from(ODD_SEGMENTS),
                st.text(SAFE, max_size=12).map(quote),
                st.one_of(ANY_TEXT, NUMBERISH).map(lambda t: quote(t, safe="")),
            ),
            min_size=1,
            max_size=4,
        ).map("/".join),
    )


def digests(stack: Stack) -> st.SearchStrategy[str]:
    hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)
    return st.one_of(
        st.sampled_from(stack.digests),
        st.sampled_from(stack.digests),
        hexes.map(lambda h: f"sha256:{h}"),
        st.binary(min_size=64, max_size=64).map(lambda b: f"sha512:{b.hex()}"),
        hexes.map(lambda h: f"sha256:{h.upper()}"),
        hexes.map(lambda h: f"md5:{h[:32]}"),
        st.binary(max_size=35).map(lambda b: f"sha256:{b.hex()}"),
        st.text(SAFE, max_size=40).map(lambda t: quote(t, safe=":")),
    )


def references(stack: Stack) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(stack.tags),
        digests(stack),
        st.from_regex(TAG_RE, fullmatch=True),
        st.text(SAFE, max_size=140).map(quote),
        st.one_of(ANY_TEXT, NUMBERISH).map(lambda t: quote(t, safe="")),
    )


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]


def paths(stack: Stack) -> st.SearchStrategy[tuple[str, str | None, list[str]]]:
    """A path, the upload id it names (if any), and the methods its route takes."""
    name = names(stack)
    upload = st.one_of(
        st.sampled_from(stack.uploads),
        st.uuids().map(str),
        st.text(SAFE, max_size=40).map(quote),
        st.one_of(ANY_TEXT, NUMBERISH).map(lambda t: quote(t, safe="")),
    )
    reads = ["GET", "HEAD"]
    return st.one_of(
        st.builds(
            lambda n, r: (f"/v2/{n}/manifests/{r}", None, [*reads, "PUT", "DELETE"]),
            name,
            references(stack),
        ),
        st.builds(
            lambda n, d: (f"/v2/{n}/blobs/{d}", None, [*reads, "DELETE"]), name, digests(stack)
        ),
        st.builds(lambda n: (f"/v2/{n}/blobs/uploads/", None, ["POST"]), name),
        st.builds(
            lambda n, u: (f"/v2/{n}/blobs/uploads/{u}", u, ["GET", "PATCH", "PUT", "DELETE"]),
            name,
            upload,
        ),
        st.builds(lambda n: (f"/v2/{n}/tags/list", None, ["GET"]), name),
        st.builds(lambda n, d: (f"/v2/{n}/referrers/{d}", None, ["GET"]), name, digests(stack)),
        st.sampled_from(
            [
                ("/v2/_catalog", None, ["GET"]),
                ("/v2/", None, reads),
                ("/v2", None, reads),
                ("/auth/token", None, ["GET", "POST"]),
                ("/v2/_ping", None, ["GET"]),
                ("/healthz", None, ["GET"]),
                ("/", None, ["GET"]),
                ("/v2/../auth/token", None, ["GET"]),
                ("/auth/token/../../v2/", None, ["GET"]),
            ]
        ),
        st.text(SAFE, max_size=60).map(lambda t: ("/" + quote(t, safe="/%"), None, ["GET"])),
    )


def queries(stack: Stack) -> st.SearchStrategy[str]:
    value = st.one_of(
        digests(stack),
        names(stack),
        st.integers(-5, 100_000).map(str),
        st.sampled_from(
            [SERVICE, "true", "repository:team-a/seed:pull,push", "registry:catalog:*", ""]
        ),
        st.text(SAFE, max_size=30),
        NUMBERISH,
        NUMBERISH,
        ANY_TEXT,
    )
    keys = st.sampled_from(
        [
            "digest",
            "mount",
            "from",
            "n",
            "last",
            "artifactType",
            "service",
            "scope",
            "account",
            "offline_token",
            "x",
        ]
    )
    # The numbers of the listings, n above all, get numbers of every kind.
    numbers = st.tuples(st.sampled_from(["n", "n", "last"]), NUMBERISH)
    pairs = st.lists(st.one_of(st.tuples(keys, value), numbers), max_size=4)
    return pairs.map(lambda ps: "&".join(f"{k}={quote(v, safe=':')}" for k, v in ps))


HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60).map(
    lambda s: s.strip()
)


def headers(stack: Stack) -> st.SearchStrategy[list[tuple[str, str]]]:
    content_type = st.sampled_from(
        [
            None,
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            "application/octet-stream",
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain; charset=utf-8",
            "application/vnd.oci.image.manifest.v1+json; charset=x",
            "*/*",
        ]
    )
    content_range = st.one_of(
        st.none(),
        st.builds(lambda a, b: f"{a}-{b}", st.integers(-2, 5000), st.integers(-2, 5000)),
        st.sampled_from(["bytes 0-10/20", "0-", "-", "a-b"]),
        st.builds(lambda a, b: raw_header(f"{a}-{b}"), NUMBERISH, NUMBERISH),
        ANY_HEADER_TEXT.map(raw_header),
    )
    ranges = st.one_of(
        st.none(),
        st.sampled_from(
            [
                "bytes=0-10",
                "bytes=-5",
                "bytes=5-",
                "bytes=10-5",
                "bytes=0-1,3-4",
                "bytes=99999999-",
                "items=0-1",
                "bytes=",
            ]
        ),
        st.builds(lambda a, b: raw_header(f"bytes={a}-{b}"), NUMBERISH, NUMBERISH),
        st.builds(lambda a: raw_header(f"bytes=-{a}"), NUMBERISH),
        ANY_HEADER_TEXT.map(lambda t: raw_header(f"bytes={t}")),
    )
    extra = st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "X-Registry-Internal-Secret",
                    "X-Registry-Internal-Serve-Locally",
                    "X-Registry-Internal-Storage-Key",
                    "X-Forwarded-For",
                    "X-Request-Id",
                    "Accept",
                    "Docker-Upload-UUID",
                    "Cookie",
                    "X-Random",
                ]
            ),
            HEADER_VALUE,
        ),
        max_size=3,
    )
    return st.builds(
        lambda auth, ct, cr, rg, more: [
            (name, value)
            for name, value in [
                ("Authorization", auth),
                ("Content-Type", ct),
                ("Content-Range", cr),
                ("Range", rg),
                *more,
            ]
            if value is not None
        ],
        st.one_of(
            st.sampled_from(stack.credentials), st.sampled_from(stack.credentials), HEADER_VALUE
        ),
        content_type,
        content_range,
        ranges,
        extra,
    )


def bodies(stack: Stack) -> st.SearchStrategy[bytes]:
    blobs = list(stack.blobs)
    manifests = st.builds(
        lambda config, layers, media: json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media,
                "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 10},
                "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": 3} for d in layers],
            }
        ).encode(),
        st.sampled_from(blobs),
        st.lists(st.one_of(st.sampled_from(blobs), digests(stack)), max_size=3),
        st.sampled_from([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "x"]),
    )
    forms = st.builds(
        lambda grant, user, password: (
            f"grant_type={grant}&username={user}&password={password}&service={SERVICE}"
            "&scope=repository:team-a/seed:pull,push&access_type=offline"
        ).encode(),
        st.sampled_from(["password", "refresh_token", "x"]),
        st.sampled_from(["alice", "bob", "nobody", ""]),
        st.text(SAFE, max_size=20).map(quote),
    )
    return st.one_of(
        st.just(b""),
        st.binary(max_size=4096),
        manifests,
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: json.dumps(v).encode()),
        forms,
    )


def requests(stack: Stack) -> st.SearchStrategy[Fuzzed]:
    # Each strategy is built once: building them per example would cost more than the request.
    path_strategy, query_strategy = paths(stack), queries(stack)
    header_strategy, body_strategy = headers(stack), bodies(stack)
    any_method = st.sampled_from(ALL_METHODS)
    framing = st.sampled_from(["length", "length", "length", "chunked", "short", "long"])

    @st.composite
    def request(draw: st.DrawFn) -> Fuzzed:
        path, upload, methods = draw(path_strategy)
        # Mostly a method the route takes (so that requests get past routing), sometimes any.
        method = draw(st.one_of(st.sampled_from(methods), st.sampled_from(methods), any_method))
        query = draw(query_strategy)
        return Fuzzed(
            method,
            path + (f"?{query}" if query else ""),
            draw(header_strategy),
            draw(body_strategy),
            draw(framing),
            upload,
        )

    return request()


# --- the pass ---------------------------------------------------------------------------------


def test_fuzzing_finds_no_5xx_and_no_change_by_a_refused_request(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = stack.registry
    snapshots = Snapshots(registry)
    deadline = time.monotonic() + SECONDS_PER_STACK
    counts = {"tried": 0, "refused": 0, "accepted": 0, "unanswered": 0}
    state = {"before": snapshots.take()}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # The same requests on every run (CI stays reproducible); FUZZ_RANDOM=1 explores anew.
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(stack))
    def fuzz(request: Fuzzed) -> None:
        if time.monotonic() > deadline:
            return
        status = send(registry, request)
        counts["tried"] += 1
        after = snapshots.take()
        if request.framing == "short" and (status is None or after != state["before"]):
            # The services undo a request cut short after the client has left (an upload's
            # chunk, a single-POST upload): its effects belong to it, not to the next request.
            after = settled(snapshots, after)
        before, state["before"] = state["before"], after
        if status is None:
            # Only a body cut short by the client may go unanswered (it left; what the server
            # did with the request is then unknown, so there is nothing to compare).
            assert request.framing == "short", request.describe()
            counts["unanswered"] += 1
            return
        assert status < 500, f"{status} for {request.describe()}"
        if status >= 400:
            counts["refused"] += 1
            changes = differences(before, after)
            assert not changes or only_an_upload_was_discarded(changes, request.upload, after), (
                f"{status} for {request.describe()} changed {changes}"
            )
        else:
            counts["accepted"] += 1

    try:
        fuzz()
    finally:
        snapshots.close()
    TRIED[stack.mode] = counts["tried"]
    with capsys.disabled():
        print(
            f"\nfuzz [{stack.mode}]: {counts['tried']} requests tried "
            f"({counts['refused']} refused, {counts['accepted']} accepted, "
            f"{counts['unanswered']} unanswered after a cut-short body); "
            f"{sum(TRIED.values())} so far in this run"
        )
    assert counts["tried"] >= 100
    assert registry.http.get("/healthz").status_code == 200
    gateway_log = registry.log("api-gateway")
    assert "unhandled error" not in gateway_log
    for service in ("blob-service", "manifest-service"):
        assert "unhandled error" not in registry.log(service), service
