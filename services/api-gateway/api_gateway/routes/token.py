"""``/auth/token``: the gateway's token endpoint (``REGISTRY_AUTH=token`` with its own key).

- ``GET /auth/token?service=&scope=...`` (the Docker registry token specification), Basic
  credentials of the users file, or none for an anonymous token (which carries the anonymous
  grants only); ``offline_token=true`` adds a refresh token for a user.
- ``POST /auth/token`` (the specification's OAuth2 form, as ``docker login`` uses it):
  ``grant_type=password`` with ``username`` and ``password`` (``access_type=offline`` adds a
  refresh token), or ``grant_type=refresh_token`` with ``refresh_token``; ``scope`` holds
  space-separated scopes.

Every answer is ``Cache-Control: no-store``. Scopes not granted are left out of the token, not
refused (the registry refuses the request that needs them); wrong credentials get 401.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NoReturn

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from api_gateway.auth import REFUSALS, BadCredentials, TokenIssuer, client_address, log
from api_gateway.forms import FormInvalid, FormTooLarge, read_form
from api_gateway.logins import LoginThrottled
from api_gateway.tokens import InvalidToken
from shared.errors import ErrorCode, RegistryError, error_body
from shared.users import User
from shared.web import Endpoint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _iso(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _oauth_error(status: int, code: ErrorCode, oauth: str, detail: str, **headers: str) -> Response:
    """The registry's error body, with OAuth2's ``error`` fields beside it (RFC 6749 5.2), so
    that clients parsing either understand it."""
    body: dict[str, Any] = {**error_body(code, detail), "error": oauth, "error_description": detail}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **headers})


def build_routes(issuer: TokenIssuer) -> list[BaseRoute]:
    """``GET`` and ``POST /auth/token`` for ``issuer``."""

    def check_service(service: str | None) -> None:
        if service is not None and service != issuer.service:
            raise RegistryError(
                ErrorCode.DENIED, "this token endpoint issues tokens for another service"
            )

    def unauthorized(reason: str, request: Request, exc: Exception) -> NoReturn:
        REFUSALS.labels(reason).inc()
        log.info("token request refused client=%s: %s", client_address(request), exc)
        raise RegistryError(
            ErrorCode.UNAUTHORIZED,
            str(exc),
            headers={"WWW-Authenticate": issuer.basic_challenge, **NO_STORE},
        )

    def answer(user: User | None, scopes: list[str], refresh: bool, oauth: bool) -> Response:
        access = issuer.grant(user.name if user else None, scopes)
        token, issued = issuer.keys.issue(user.name if user else "", access, issuer.ttl)
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": issuer.ttl,
            "issued_at": _iso(issued),
        }
        if oauth:
            body["token_type"] = "Bearer"
            body["scope"] = " ".join(
                f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access
            )
        else:
            body["token"] = token
        if refresh and user is not None:
            body["refresh_token"] = issuer.refresh_token(user)
        return JSONResponse(body, headers=NO_STORE)

    async def get_token(request: Request) -> Response:
        params = request.query_params
        check_service(params.get("service"))
        scopes = [s for value in params.getlist("scope") for s in value.split(" ") if s]
        header = request.headers.get("authorization")
        user: User | None = None
        if header is not None:
            try:
                name = await issuer.credentials.user(header, client_address(request))
            except LoginThrottled:
                REFUSALS.labels("login_throttled").inc()
                log.info("token request throttled client=%s", client_address(request))
                raise
            except BadCredentials as exc:
                unauthorized("bad_credentials", request, exc)
            user = issuer.users.get().users.get(name)
            if user is None:  # removed in between
                unauthorized("bad_credentials", request, BadCredentials("unknown user"))
        refresh = params.get("offline_token", "").lower() == "true"
        return answer(user, scopes, refresh, oauth=False)

    async def post_token(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(
                400,
                ErrorCode.UNSUPPORTED,
                "invalid_request",
                "the token endpoint takes an application/x-www-form-urlencoded form",
            )
        try:
            form = await read_form(request)
        except FormTooLarge as exc:
            return _oauth_error(400, ErrorCode.SIZE_INVALID, "invalid_request", str(exc))
        except FormInvalid as exc:
            return _oauth_error(400, ErrorCode.UNSUPPORTED, "invalid_request", str(exc))
        check_service(form.get("service"))
        scopes = [s for s in form.get("scope", "").split(" ") if s]
        grant_type = form.get("grant_type")
        if grant_type == "password":
            try:
                user = await issuer.credentials.check(
                    form.get("username", ""),
                    form.get("password", "").encode(),
                    client_address(request),
                )
            except LoginThrottled as exc:
                REFUSALS.labels("login_throttled").inc()
                log.info("token request throttled client=%s", client_address(request))
                return _oauth_error(
                    429,
                    ErrorCode.TOOMANYREQUESTS,
                    "slow_down",
                    str(exc.detail),
                    **{"Retry-After": str(exc.retry_after)},
                )
            except BadCredentials as exc:
                REFUSALS.labels("bad_credentials").inc()
                log.info("token request refused client=%s: %s", client_address(request), exc)
                return _oauth_error(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    "invalid_grant",
                    str(exc),
                    **{"WWW-Authenticate": issuer.basic_challenge},
                )
            offline = form.get("access_type") == "offline"
            return answer(user, scopes, offline, oauth=True)
        if grant_type == "refresh_token":
            try:
                user = issuer.refreshed_user(form.get("refresh_token", ""))
            except InvalidToken as exc:
                REFUSALS.labels("invalid_token").inc()
                log.info("refresh token refused client=%s: %s", client_address(request), exc)
                return _oauth_error(401, ErrorCode.UNAUTHORIZED, "invalid_grant", str(exc))
            return answer(user, scopes, False, oauth=True)
        return _oauth_error(
            400,
            ErrorCode.UNSUPPORTED,
            "unsupported_grant_type",
            "grant_type is password or refresh_token",
        )

    return [
        Endpoint("/auth/token", get_token, methods=["GET"]),
        Endpoint("/auth/token", post_token, methods=["POST"]),
    ]
