"""Talking to a mirrored namespace's upstream registry (``shared.mirrors``): manifests and blobs
fetched by the services that pull them through.

Authentication follows what the upstream asks for in its ``WWW-Authenticate`` challenge:
nothing (anonymous), ``Basic`` (the mirror's username and password), or ``Bearer``: a token
from the challenge's realm for its service and scope (the Docker token specification, with the
mirror's credentials when it has some, anonymously otherwise), kept in this process until it
expires. A failure the client cannot act on (unreachable, a timeout, 429 or 5xx) is
:class:`UpstreamUnavailable`; an answer that names nothing (404) is :class:`UpstreamNotFound`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache

import httpx

from shared.errors import ErrorCode, RegistryError
from shared.mirrors import Mirror
from shared.observability import MIRROR_REQUESTS, MIRROR_UPSTREAM_ERRORS

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
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Tokens are used until this long before they expire.
TOKEN_MARGIN_SECONDS = 10.0
DEFAULT_TOKEN_SECONDS = 60.0


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

    def get(self, key: tuple[str, str, str]) -> str | None:
        found = self._tokens.get(key)
        if found is None or found[1] <= time.monotonic():
            self._tokens.pop(key, None)
            return None
        return found[0]

    def drop(self, key: tuple[str, str, str] | None) -> None:
        if key is not None:
            self._tokens.pop(key, None)

    def put(self, key: tuple[str, str, str], token: str, seconds: float) -> None:
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[key] = (token, time.monotonic() + max(0.0, seconds - TOKEN_MARGIN_SECONDS))


class _Auth(httpx.Auth):
    """The challenge flow: a request without credentials (or with the token kept for its
    scope), and on 401 the credentials the challenge asks for."""

    def __init__(self, mirror: Mirror, tokens: _Tokens, scope: str) -> None:
        self.mirror = mirror
        self.tokens = tokens
        self.scope = scope
        self._last_key: tuple[str, str, str] | None = None
        self._fetching = asyncio.Lock()
        self._basic_asked = False

    def _basic(self) -> str:
        pair = f"{self.mirror.username}:{self.mirror.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        # Only the token's answer is read whole: a blob's body is left to stream.
        kept = self._kept()
        if kept is not None:
            request.headers["Authorization"] = f"Bearer {kept}"
        elif self._basic_asked:
            request.headers["Authorization"] = self._basic()
        response = yield request
        if response.status_code != 401 or self._basic_asked:
            return  # answered, or the mirror's credentials refused
        if kept is not None:  # the token was refused (revoked, expired early): a new one
            self.tokens.drop(self._last_key)
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        if challenge.scheme == "basic" and self.mirror.username:
            # Sent at once from now on: one request instead of two.
            self._basic_asked = True
            request.headers["Authorization"] = self._basic()
            yield request
            return
        if challenge.scheme != "bearer" or "realm" not in challenge.params:
            return
        realm = challenge.params["realm"]
        service = challenge.params.get("service", "")
        scope = challenge.params.get("scope", self.scope)
        key = (realm, service, scope)
        # One token request at a time: the requests that met the challenge meanwhile use the
        # token it brings.
        async with self._fetching:
            token = self.tokens.get(key)
            if token is None:
                query = {"scope": scope} if scope else {}
                if service:
                    query["service"] = service
                token_request = httpx.Request("GET", realm, params=query)
                if self.mirror.username:
                    token_request.headers["Authorization"] = self._basic()
                token_response = yield token_request
                await token_response.aread()
                token, seconds = _token(token_response)
                self.tokens.put(key, token, seconds)
            self._last_key = key
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def _kept(self) -> str | None:
        return self.tokens.get(self._last_key) if self._last_key is not None else None


def _token(response: httpx.Response) -> tuple[str, float]:
    """The token of a token service's answer, and for how many seconds it is good."""
    if response.status_code != 200:
        raise UpstreamRefused(f"the upstream's token service answered {response.status_code}")
    try:
        document = response.json()
        token = document.get("token") or document["access_token"]
        seconds = float(document.get("expires_in", DEFAULT_TOKEN_SECONDS))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UpstreamRefused("the upstream's token service answered no token") from None
    if not isinstance(token, str):
        raise UpstreamRefused("the upstream's token service answered no token")
    return token, seconds


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str | None  # Docker-Content-Digest, when the upstream sent it
    media_type: str
    content: bytes


class Upstream:
    """One mirror's upstream: its HTTP connections and the tokens it was given."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.tokens = _Tokens()
        self._auths: dict[str, _Auth] = {}
        self.client = httpx.AsyncClient(
            base_url=mirror.url, timeout=TIMEOUT, follow_redirects=True, trust_env=False
        )

    def _auth(self, name: str) -> _Auth:
        auth = self._auths.get(name)
        if auth is None:
            if len(self._auths) > 10_000:
                self._auths.clear()
            auth = self._auths[name] = _Auth(self.mirror, self.tokens, f"repository:{name}:pull")
        return auth

    @asynccontextmanager
    async def _send(
        self, method: str, path: str, name: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        try:
            async with self.client.stream(
                method, path, headers=headers, auth=self._auth(name)
            ) as response:
                _check(response, f"{method} {path}")
                yield response
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{self.mirror.url}: {type(exc).__name__}: {exc}") from exc

    async def manifest(self, name: str, reference: str, method: str = "GET") -> UpstreamManifest:
        """The manifest ``reference`` of upstream repository ``name`` (HEAD: no content)."""
        path = f"/v2/{name}/manifests/{reference}"
        async with self._send(method, path, name, {"Accept": MANIFEST_ACCEPT}) as response:
            content = await response.aread() if method == "GET" else b""
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        return UpstreamManifest(response.headers.get("docker-content-digest"), media_type, content)

    @asynccontextmanager
    async def blob(self, name: str, digest: str) -> AsyncIterator[httpx.Response]:
        """The answer to GET of blob ``digest`` in upstream repository ``name``, its body not
        yet read (``aiter_bytes``)."""
        async with self._send("GET", f"/v2/{name}/blobs/{digest}", name) as response:
            yield response


def _check(response: httpx.Response, what: str) -> None:
    status = response.status_code
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


@cache
def upstream(mirror: Mirror) -> Upstream:
    """The one :class:`Upstream` of ``mirror`` in this process."""
    return Upstream(mirror)
