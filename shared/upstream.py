"""Talking to a mirrored namespace's upstream registry (``shared.mirrors``): manifests and blobs
fetched by the services that pull them through, with aiohttp (the client the gateway uses:
a C HTTP parser, bodies read in large chunks; a blob streams at several times the rate of a
pure-Python client).

Authentication follows what the upstream asks for in its ``WWW-Authenticate`` challenge:
nothing (anonymous), ``Basic`` (the mirror's username and password, sent at once after the
first challenge), or ``Bearer``: a token from the challenge's realm for its service and scope
(the Docker token specification, with the mirror's credentials when it has some, anonymously
otherwise), asked for once per scope in this process (requests that meet the challenge
meanwhile wait for it) and kept until it expires. Redirects are followed (a registry sends
blobs from a CDN), without the credentials when they lead to another host. A failure the
client cannot act on (unreachable, a timeout, 429 or 5xx) is :class:`UpstreamUnavailable`; an
answer that names nothing (404) is :class:`UpstreamNotFound`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import ErrorCode, RegistryError
from shared.mirrors import Mirror
from shared.observability import MIRROR_REQUESTS, MIRROR_UPSTREAM_ERRORS

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

# What a pull through asks for: every manifest type this registry stores.
MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
CONNECT_SECONDS = 5.0
READ_SECONDS = 30.0  # the longest wait for a byte of an answer
CHUNK = 1024 * 1024  # a blob's bytes are read in chunks of up to this
# Tokens are used until this long before they expire.
TOKEN_MARGIN_SECONDS = 10.0
DEFAULT_TOKEN_SECONDS = 60.0
MAX_MANIFEST = 4 * 1024 * 1024 + 1  # more than any manifest this registry stores


class UpstreamUnavailable(Exception):
    """The upstream could not answer now (unreachable, timed out, 429 or 5xx)."""


class UpstreamNotFound(Exception):
    """The upstream answered that it has no such manifest or blob (404)."""


class UpstreamRefused(Exception):
    """The upstream refused the mirror's credentials, or answered something unexpected."""


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> Challenge:
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), dict(_PARAM.findall(rest)))


class _Tokens:
    """Bearer tokens by (realm, service, scope), until they expire (this process's memory: a
    replica without one asks for its own)."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    def get(self, key: tuple[str, str, str] | None) -> str | None:
        found = self._tokens.get(key) if key is not None else None
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def drop(self, key: tuple[str, str, str] | None) -> None:
        if key is not None:
            self._tokens.pop(key, None)

    def put(self, key: tuple[str, str, str], token: str, seconds: float) -> None:
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[key] = (token, time.monotonic() + max(0.0, seconds - TOKEN_MARGIN_SECONDS))


def _token(status: int, document: object) -> tuple[str, float]:
    """The token of a token service's answer, and for how many seconds it is good."""
    if status != 200:
        raise UpstreamRefused(f"the upstream's token service answered {status}")
    try:
        assert isinstance(document, dict)
        token = document.get("token") or document["access_token"]
        seconds = float(document.get("expires_in", DEFAULT_TOKEN_SECONDS))
    except (AssertionError, KeyError, TypeError, ValueError):
        raise UpstreamRefused("the upstream's token service answered no token") from None
    if not isinstance(token, str):
        raise UpstreamRefused("the upstream's token service answered no token")
    return token, seconds


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str | None  # Docker-Content-Digest, when the upstream sent it
    media_type: str
    content: bytes


@dataclass(frozen=True, slots=True)
class UpstreamBlob:
    length: int | None  # Content-Length, when the upstream said
    chunks: AsyncIterator[bytes]


class _Scope:
    """What a repository's requests know of its authentication: the token kept for it (by
    key), whether Basic was asked for, and one token request at a time."""

    def __init__(self) -> None:
        self.key: tuple[str, str, str] | None = None
        self.basic = False
        self.fetching = asyncio.Lock()


class Upstream:
    """One mirror's upstream: its HTTP connections and what it asked for."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.tokens = _Tokens()
        self._scopes: dict[str, _Scope] = {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop (and aiohttp imported then: a
        # service with no mirror never loads it).
        import aiohttp

        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=CONNECT_SECONDS, sock_read=READ_SECONDS
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout, trust_env=False, auto_decompress=False, read_bufsize=CHUNK
            )
        return self._session

    def _scope(self, name: str) -> _Scope:
        scope = self._scopes.get(name)
        if scope is None:
            if len(self._scopes) > 10_000:
                self._scopes.clear()
            scope = self._scopes[name] = _Scope()
        return scope

    def _basic(self) -> str:
        pair = f"{self.mirror.username}:{self.mirror.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def _bearer(self, scope: _Scope, challenge: Challenge, name: str) -> str:
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        wanted = challenge.params.get("scope", f"repository:{name}:pull")
        key = (realm, service, wanted)
        async with scope.fetching:
            token = self.tokens.get(key)
            if token is None:
                query = {"scope": wanted} if wanted else {}
                if service:
                    query["service"] = service
                headers = {"Authorization": self._basic()} if self.mirror.username else {}
                async with self._client().get(realm, params=query, headers=headers) as answer:
                    try:
                        document = await answer.json(content_type=None)
                    except ValueError:
                        document = None
                    token, seconds = _token(answer.status, document)
                self.tokens.put(key, token, seconds)
            scope.key = key
        return token

    @asynccontextmanager
    async def _send(
        self, method: str, path: str, name: str, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer to ``method path``, authenticated as the upstream asks, checked."""
        from aiohttp import ClientError

        scope = self._scope(name)
        url = f"{self.mirror.url}{path}"
        try:
            for attempt in range(2):
                sent = dict(headers)
                token = self.tokens.get(scope.key)
                if token is not None:
                    sent["Authorization"] = f"Bearer {token}"
                elif scope.basic:
                    sent["Authorization"] = self._basic()
                response = await self._client().request(method, url, headers=sent)
                if response.status != 401 or attempt == 1 or (scope.basic and token is None):
                    break
                response.release()
                challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
                if challenge.scheme == "basic" and self.mirror.username:
                    scope.basic = True
                elif challenge.scheme == "bearer" and "realm" in challenge.params:
                    if token is not None:  # the token sent was refused (revoked, expired)
                        self.tokens.drop(scope.key)
                    await self._bearer(scope, challenge, name)
                else:
                    break
            try:
                _check(response.status, f"{method} {path}")
                yield response
            finally:
                response.release()
        except (ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"{self.mirror.url}: {type(exc).__name__}: {exc}") from exc

    async def manifest(self, name: str, reference: str, method: str = "GET") -> UpstreamManifest:
        """The manifest ``reference`` of upstream repository ``name`` (HEAD: no content)."""
        path = f"/v2/{name}/manifests/{reference}"
        async with self._send(method, path, name, {"Accept": MANIFEST_ACCEPT}) as response:
            content = await response.content.read(MAX_MANIFEST) if method == "GET" else b""
            if len(content) >= MAX_MANIFEST:
                raise UpstreamRefused("the upstream's manifest is larger than any stored here")
            media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
            digest = response.headers.get("Docker-Content-Digest")
        return UpstreamManifest(digest, media_type, content)

    @asynccontextmanager
    async def blob(self, name: str, digest: str) -> AsyncIterator[UpstreamBlob]:
        """The upstream's answer to GET of blob ``digest`` in repository ``name``: its length
        and its bytes, read as they are iterated."""
        async with self._send("GET", f"/v2/{name}/blobs/{digest}", name, {}) as response:
            yield UpstreamBlob(response.content_length, response.content.iter_chunked(CHUNK))


def _check(status: int, what: str) -> None:
    if status in (200, 206):
        return
    if status == 404:
        raise UpstreamNotFound(f"{what}: 404")
    if status == 429 or status >= 500:
        raise UpstreamUnavailable(f"{what}: {status}")
    raise UpstreamRefused(f"{what}: {status}")


def unavailable(mirror: Mirror, kind: str, what: str, failure: Exception) -> RegistryError:
    """The answer when ``what`` (of ``kind``: manifest, blob) is not cached and the upstream
    failed: 503 ``UNAVAILABLE``, counted and logged."""
    MIRROR_REQUESTS.labels(kind, "error").inc()
    MIRROR_UPSTREAM_ERRORS.labels(mirror.namespace).inc()
    log.warning("mirror %s: %s: %s", mirror.namespace, what, failure)
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        f"{what} is not cached, and the upstream {mirror.url} failed: {failure}",
        headers={"Retry-After": "10"},
    )


_upstreams: dict[Mirror, Upstream] = {}


def upstream(mirror: Mirror) -> Upstream:
    """The one :class:`Upstream` of ``mirror`` in this process."""
    found = _upstreams.get(mirror)
    if found is None:
        found = _upstreams[mirror] = Upstream(mirror)
    return found


async def close() -> None:
    """Close the upstreams' connections (at shutdown)."""
    for each in list(_upstreams.values()):
        if each._session is not None:
            await each._session.close()
    _upstreams.clear()
