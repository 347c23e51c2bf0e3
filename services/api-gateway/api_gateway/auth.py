"""Authentication and authorization at the gateway (``REGISTRY_AUTH``: htpasswd or token).

With ``none`` (the default) nothing here is built and the routes are those of an anonymous
registry. Otherwise every ``/v2/`` request is matched to the access it needs (:func:`need`:
pull for reads, push for uploads and manifest PUTs, delete for DELETEs, ``registry:catalog:*``
for the catalog) and the gateway answers it, before anything is forwarded, with

- 401 ``UNAUTHORIZED`` and a ``WWW-Authenticate`` challenge when the request is anonymous (and
  the access is not anonymous), carries wrong credentials or an invalid token, or (token mode,
  as the reference registry) a token without the access (``error="insufficient_scope"``);
- 403 ``DENIED`` when a user who logged in with Basic credentials is not granted the access.

A cross-repository mount (``POST .../blobs/uploads/?mount=<digest>&from=<repository>``) needs
pull on ``from`` as well: without it the gateway drops ``mount`` and ``from`` and the request
becomes an ordinary upload (202), which is what the reference registry does in effect; the
blob is neither linked nor its presence revealed.

Credentials and tokens are never logged, echoed or counted by value. Passwords are checked
with bcrypt (constant-time); a successful check is remembered under a keyed HMAC of the
``Authorization`` header (so that not every request of a push pays bcrypt's cost) until the
users file changes or five minutes pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

from cachetools import TLRUCache, TTLCache
from prometheus_client import Counter
from starlette.requests import Request

from api_gateway import routing
from api_gateway.logins import LoginThrottle, LoginThrottled
from shared.errors import ErrorCode, RegistryError
from shared.reference import MAX_NAME_LENGTH, NAME_RE
from shared.settings import Settings
from shared.users import NOTHING, User, UsersFile, check_password

if TYPE_CHECKING:
    # (Imported where token authentication is configured: the JWT and cryptography libraries
    # stay out of a gateway that does not use them.)
    from api_gateway.tokens import TokenKeys

log = logging.getLogger("registry.auth")

REFUSALS = Counter(
    "registry_auth_refusals_total",
    "Requests the gateway refused for authentication or authorization, by reason",
    ["reason"],
)

PULL = frozenset({"pull"})
EVERYTHING = frozenset({"*"})
CACHE_SECONDS = 300.0
CACHE_ENTRIES = 10_000
MAX_SCOPES = 64


# --- what a request needs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Need:
    resource_type: str  # "repository" or "registry"
    name: str
    actions: frozenset[str]  # every one is needed
    scope: str  # the challenge's scope: what a client should ask a token for

    def describe(self) -> str:
        return f"{'/'.join(sorted(self.actions))} access to {self.resource_type} {self.name}"


CATALOG_NEED = Need("registry", "catalog", EVERYTHING, "registry:catalog:*")

# (route name, method) -> (action needed, the actions the challenge's scope asks for). Every
# route and method of routing.ROUTES is here (a test checks it); one that is not is refused.
RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("upload start", "POST"): ("push", "pull,push"),
    **{("upload", m): ("push", "pull,push") for m in ("GET", "PATCH", "PUT", "DELETE")},
    ("blob", "GET"): ("pull", "pull"),
    ("blob", "HEAD"): ("pull", "pull"),
    ("blob", "DELETE"): ("delete", "delete"),
    ("manifest", "GET"): ("pull", "pull"),
    ("manifest", "HEAD"): ("pull", "pull"),
    ("manifest", "PUT"): ("push", "pull,push"),
    ("manifest", "DELETE"): ("delete", "delete"),
    ("tags", "GET"): ("pull", "pull"),
    ("referrers", "GET"): ("pull", "pull"),
}


def need(match: routing.Match, method: str) -> Need:
    """The access ``method`` on ``match`` needs."""
    if match.route.name == "catalog" and method == "GET":
        return CATALOG_NEED
    rule = RULES.get((match.route.name, method))
    if rule is None or match.name is None:
        # A route added to the table without an access rule: refused, never let through.
        raise RegistryError(ErrorCode.DENIED, "no access rule for this request")
    action, scope = rule
    return Need("repository", match.name, frozenset({action}), f"repository:{match.name}:{scope}")


def granted(needed: frozenset[str], allowed: frozenset[str]) -> bool:
    return needed <= allowed or "*" in allowed


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request (``user`` None: nobody logged in) and what they may do."""

    user: str | None
    access: Callable[[str, str], frozenset[str]]  # (resource type, name) -> actions


def _valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def _allowed(request: Request, match: routing.Match, principal: Principal) -> str | None:
    """For a request the principal may make: who made it (``request.state.user``, forwarded
    to the services, whose notifications name it as the actor) and the query to forward."""
    request.state.user = principal.user
    return mount_query(request, match, principal)


def mount_query(request: Request, match: routing.Match, principal: Principal) -> str | None:
    """The query to forward instead of the client's: a mount from a repository the principal
    cannot pull from loses ``mount`` and ``from`` and becomes an ordinary upload."""
    if match.route.name != "upload start":
        return None
    params = request.query_params
    if "mount" not in params and "from" not in params:
        return None
    sources = params.getlist("from")
    if (
        len(sources) == 1
        and len(params.getlist("mount")) == 1
        and _valid_name(sources[0])
        and granted(PULL, principal.access("repository", sources[0]))
    ):
        return None
    REFUSALS.labels("mount_not_allowed").inc()
    return urlencode([(k, v) for k, v in params.multi_items() if k not in ("mount", "from")])


# --- errors ----------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _refuse(reason: str, code: ErrorCode, detail: str, challenge: str | None = None) -> NoReturn:
    REFUSALS.labels(reason).inc()
    headers = {"WWW-Authenticate": challenge} if challenge is not None else None
    raise RegistryError(code, detail, headers=headers)


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


# --- Basic credentials -----------------------------------------------------------------------


class BadCredentials(Exception):
    """The Authorization header is not valid Basic credentials of a user (never says which)."""


def parse_basic(header: str) -> tuple[str, bytes]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise BadCredentials("not Basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadCredentials("malformed Basic credentials") from None
    name, colon, password = decoded.partition(b":")
    if not colon:
        raise BadCredentials("malformed Basic credentials")
    try:
        return name.decode("utf-8"), password
    except UnicodeDecodeError:
        raise BadCredentials("malformed Basic credentials") from None


class BasicCredentials:
    """Checks Basic credentials against the users file; remembers successes (see above)."""

    def __init__(self, users: UsersFile) -> None:
        self.users = users
        self._key = secrets.token_bytes(32)
        self._known: TTLCache[bytes, tuple[str, int]] = TTLCache(
            maxsize=CACHE_ENTRIES, ttl=CACHE_SECONDS
        )
        # bcrypt is slow by design: a few checks at once, in threads, and clients that keep
        # failing neither queue ahead of the others nor check without limit (logins.py).
        self.throttle = LoginThrottle()

    async def user(self, header: str, address: str) -> str:
        """The name of the user the header's credentials are right for, or BadCredentials
        (LoginThrottled when ``address`` or the user failed too often lately)."""
        key = hmac.new(self._key, header.encode("latin-1"), hashlib.sha256).digest()
        store = self.users.get()
        version = self.users.version
        known = self._known.get(key)
        if known is not None and known[1] == version:
            return known[0]
        name, password = parse_basic(header)
        user = store.users.get(name)
        ok = await self.throttle.check(address, name, lambda: check_password(user, password))
        if not ok:
            raise BadCredentials("wrong user name or password")
        self._known[key] = (name, version)
        return name

    async def check(self, name: str, password: bytes, address: str) -> User:
        """The user ``name`` if ``password`` is theirs (the token endpoint's password grant)."""
        user = self.users.get().users.get(name)
        ok = await self.throttle.check(address, name, lambda: check_password(user, password))
        if not ok or user is None:
            raise BadCredentials("wrong user name or password")
        return user


# --- the guards ------------------------------------------------------------------------------


class Guard:
    """What the routes ask: may this request go on (and with which query)?"""

    async def check_base(self, request: Request) -> None:
        """``GET /v2/``: 200 for a client that authenticated, 401 with the challenge otherwise
        (how ``docker login`` and ``podman login`` find out how and whether to log in)."""
        raise NotImplementedError

    async def check(self, request: Request, match: routing.Match) -> str | None:
        """Raise the spec's error when the request may not go on; return the query to forward
        when it differs from the client's (a mount the client may not make)."""
        raise NotImplementedError


class HtpasswdGuard(Guard):
    def __init__(self, users: UsersFile, credentials: BasicCredentials, realm: str) -> None:
        self.users = users
        self.credentials = credentials
        self.challenge = f"Basic realm={_quoted(realm)}"

    async def principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is None:
            store = self.users.get()
            return Principal(None, lambda kind, name: store.access(None, kind, name))
        try:
            user = await self.credentials.user(header, client_address(request))
        except LoginThrottled as exc:
            log.info("login throttled client=%s: %s", client_address(request), exc.detail)
            REFUSALS.labels("login_throttled").inc()
            raise
        except BadCredentials as exc:
            log.info("authentication failed client=%s: %s", client_address(request), exc)
            _refuse("bad_credentials", ErrorCode.UNAUTHORIZED, str(exc), self.challenge)
        store = self.users.get()
        return Principal(user, lambda kind, name: store.access(user, kind, name))

    async def check_base(self, request: Request) -> None:
        principal = await self.principal(request)
        if principal.user is None:
            _refuse("unauthenticated", ErrorCode.UNAUTHORIZED, "log in", self.challenge)

    async def check(self, request: Request, match: routing.Match) -> str | None:
        principal = await self.principal(request)
        needed = need(match, request.method)
        if not granted(needed.actions, principal.access(needed.resource_type, needed.name)):
            if principal.user is None:
                _refuse(
                    "unauthenticated",
                    ErrorCode.UNAUTHORIZED,
                    f"{needed.describe()} needs a login",
                    self.challenge,
                )
            log.info(
                "access denied user=%s needed=%s client=%s",
                principal.user,
                needed.scope,
                client_address(request),
            )
            _refuse("denied", ErrorCode.DENIED, f"no {needed.describe()}")
        return _allowed(request, match, principal)


class TokenGuard(Guard):
    def __init__(self, keys: TokenKeys, realm: str, service: str) -> None:
        self.keys = keys
        self.realm = realm
        self.service = service
        # A verified token is remembered until it expires.
        self._verified: TLRUCache[bytes, tuple[Principal, float]] = TLRUCache(
            maxsize=CACHE_ENTRIES, ttu=lambda _key, value, _now: value[1], timer=time.time
        )

    def _challenge(self, scope: str | None, error: str | None = None) -> str:
        challenge = f"Bearer realm={_quoted(self.realm)},service={_quoted(self.service)}"
        if scope is not None:
            challenge += f",scope={_quoted(scope)}"
        if error is not None:
            challenge += f",error={_quoted(error)}"
        return challenge

    async def principal(self, request: Request, scope: str | None) -> Principal | None:
        """The token's principal; None without a token; 401 for an invalid one."""
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            _refuse(
                "bad_credentials",
                ErrorCode.UNAUTHORIZED,
                "this registry takes bearer tokens from its token endpoint",
                self._challenge(scope),
            )
        key = hashlib.sha256(token.encode("latin-1")).digest()
        cached = self._verified.get(key)
        if cached is not None:
            return cached[0]
        from api_gateway.tokens import InvalidToken, access_of

        try:
            claims = self.keys.verify(token)
            access = access_of(claims)
        except InvalidToken as exc:
            log.info("token refused client=%s: %s", client_address(request), exc)
            _refuse(
                "invalid_token",
                ErrorCode.UNAUTHORIZED,
                str(exc),
                self._challenge(scope, "invalid_token"),
            )
        subject = claims.get("sub")
        principal = Principal(
            subject if isinstance(subject, str) and subject else None,
            lambda kind, name: access.get((kind, name), NOTHING),
        )
        self._verified[key] = (principal, float(claims["exp"]))
        return principal

    async def check_base(self, request: Request) -> None:
        if await self.principal(request, None) is None:
            _refuse(
                "unauthenticated",
                ErrorCode.UNAUTHORIZED,
                "log in",
                self._challenge(None),
            )

    async def check(self, request: Request, match: routing.Match) -> str | None:
        needed = need(match, request.method)
        principal = await self.principal(request, needed.scope)
        if principal is None:
            _refuse(
                "unauthenticated",
                ErrorCode.UNAUTHORIZED,
                f"{needed.describe()} needs a token",
                self._challenge(needed.scope),
            )
        if not granted(needed.actions, principal.access(needed.resource_type, needed.name)):
            log.info(
                "insufficient scope user=%s needed=%s client=%s",
                principal.user,
                needed.scope,
                client_address(request),
            )
            _refuse(
                "insufficient_scope",
                ErrorCode.UNAUTHORIZED,
                f"the token grants no {needed.describe()}",
                self._challenge(needed.scope, "insufficient_scope"),
            )
        return _allowed(request, match, principal)


# --- the token issuer ------------------------------------------------------------------------


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``type[(class)]:name:action,action`` (a name may hold a colon: a host's port)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    kind = re.sub(r"\([a-z0-9]+\)$", "", kind)
    if not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


class TokenIssuer:
    """The gateway's own token endpoint: grants a user (or anonymous) the intersection of the
    scopes asked for and the users file's grants."""

    def __init__(
        self,
        keys: TokenKeys,
        users: UsersFile,
        credentials: BasicCredentials,
        settings: Settings,
    ) -> None:
        self.keys = keys
        self.users = users
        self.credentials = credentials
        self.service = settings.auth_service
        self.ttl = settings.auth_token_ttl_seconds
        self.refresh_ttl = settings.auth_refresh_token_ttl_seconds
        self.basic_challenge = f"Basic realm={_quoted(settings.auth_realm)}"

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        store = self.users.get()
        access: dict[tuple[str, str], set[str]] = {}
        for scope in scopes[:MAX_SCOPES]:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, asked = parsed
            if kind == "repository" and not _valid_name(name):
                continue
            allowed = store.access(user, kind, name)
            given = set(allowed) if "*" in asked else set(asked) & allowed
            if given:
                access.setdefault((kind, name), set()).update(given)
        return [
            {"type": kind, "name": name, "actions": sorted(actions)}
            for (kind, name), actions in access.items()
        ]

    def refresh_token(self, user: User) -> str:
        return self.keys.issue_refresh(user.name, user.password_hash, self.refresh_ttl)

    def refreshed_user(self, token: str) -> User:
        """The user a refresh token is for, if it is valid and the user still exists with the
        same password; else InvalidToken."""
        from api_gateway.tokens import InvalidToken

        claims = self.keys.verify_refresh(token)
        user = self.users.get().users.get(claims["sub"])
        stamp = claims.get("pwd")
        if (
            user is None
            or not isinstance(stamp, str)
            or not hmac.compare_digest(stamp, self.keys.password_stamp(user.password_hash))
        ):
            raise InvalidToken("refresh token no longer valid")
        return user


# --- configuration ---------------------------------------------------------------------------


@dataclass
class AuthSetup:
    guard: Guard | None
    issuer: TokenIssuer | None
    # The registry's own users (None: authentication off, or an external token issuer only),
    # and the password check the web interface's sign-in shares with the API.
    users: UsersFile | None = None
    credentials: BasicCredentials | None = None


def _users_file(settings: Settings) -> UsersFile:
    if not settings.auth_users_file:
        raise RuntimeError(f"REGISTRY_AUTH={settings.auth} needs REGISTRY_AUTH_USERS_FILE")
    return UsersFile(Path(settings.auth_users_file))


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def token_realm(settings: Settings) -> str:
    """Where the Bearer challenge sends clients for a token: ``REGISTRY_AUTH_TOKEN_REALM``;
    else this gateway's ``/auth/token`` at ``REGISTRY_PUBLIC_URL``, else at the address it
    listens on. Never at the request's Host header: whoever sends a request could then choose
    where the clients that follow the challenge send their credentials."""
    if settings.auth_token_realm:
        return settings.auth_token_realm
    if settings.public_url:
        return settings.public_url.rstrip("/") + "/auth/token"
    host = settings.gateway_host.strip()
    if host in WILDCARD_HOSTS:
        raise RuntimeError(
            f"REGISTRY_AUTH=token with the gateway listening on every address ({host or '*'}) "
            "needs REGISTRY_PUBLIC_URL (or REGISTRY_AUTH_TOKEN_REALM): the URL clients reach "
            "the token endpoint at"
        )
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{settings.gateway_port}/auth/token"


def configure(settings: Settings) -> AuthSetup:
    """The guard (and token issuer) ``settings`` ask for; a misconfiguration fails startup."""
    if settings.auth == "none":
        return AuthSetup(None, None)
    if settings.auth == "htpasswd":
        users = _users_file(settings)
        credentials = BasicCredentials(users)
        return AuthSetup(
            HtpasswdGuard(users, credentials, settings.auth_realm), None, users, credentials
        )
    from api_gateway.tokens import keys_from_settings

    keys = keys_from_settings(
        private_key_file=settings.auth_token_private_key_file,
        public_key_file=settings.auth_token_public_key_file,
        issuer=settings.auth_token_issuer,
        audience=settings.auth_service,
    )
    if keys.signing is None:
        # An external issuer only: clients are sent to its endpoint.
        if not settings.auth_token_realm:
            raise RuntimeError(
                "REGISTRY_AUTH=token with an external issuer (a public key file and no private "
                "key) needs REGISTRY_AUTH_TOKEN_REALM, the issuer's token endpoint"
            )
        return AuthSetup(TokenGuard(keys, settings.auth_token_realm, settings.auth_service), None)
    users = _users_file(settings)
    credentials = BasicCredentials(users)
    guard = TokenGuard(keys, token_realm(settings), settings.auth_service)
    return AuthSetup(guard, TokenIssuer(keys, users, credentials, settings), users, credentials)
