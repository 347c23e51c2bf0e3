"""The web interface's routes at the gateway: ``/`` sends a browser to ``/ui/``; every ``/ui/``
page is forwarded to the manifest service, which renders it (the gateway never reads the
database), naming the signed-in user. The gateway signs users in and out itself (the users file
and the password check are its own) and checks every form's CSRF token before forwarding it."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute

from api_gateway.auth import REFUSALS, AuthSetup, BadCredentials, client_address
from api_gateway.logins import LoginThrottled
from api_gateway.proxy import forward
from api_gateway.routing import refuse_traversal
from api_gateway.sessions import FormRefused, Session, Sessions, checked_form, make_sessions
from shared.errors import ErrorCode, RegistryError
from shared.settings import get_settings
from shared.web import (
    ACTOR_HEADER,
    UI_CSRF_HEADER,
    UI_SESSION_EXPIRES_HEADER,
    UI_SESSION_HEADER,
    Endpoint,
    request_id,
)

log = logging.getLogger("registry.ui")
# What a browser's Sec-Fetch-Site says of a post from the registry's own pages.
_SAME_ORIGIN = ("same-origin", "none")
# A next page that could leave /ui/ once resolved, or name another host.
_TRAVERSAL_OR_HOST = re.compile(r"(^|/)\.\.?(/|$)|//|\\|%2e|%2f|%5c|[\x00-\x1f]", re.IGNORECASE)


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a page of the interface, never another site."""
    if value and value.startswith("/ui/") and not _TRAVERSAL_OR_HOST.search(value):
        return value
    return "/ui/"


async def _form(request: Request, session: Session | None) -> dict[str, str] | Response:
    """The post's fields once its CSRF token is checked, or the 403 that refuses it."""
    try:
        return await checked_form(request, session)
    except FormRefused as exc:
        REFUSALS.labels("form_refused").inc()
        return PlainTextResponse(str(exc), status_code=403)


def _see(location: str) -> Response:
    return RedirectResponse(location, status_code=303)


def build_routes(
    setup: AuthSetup, extra_headers: Sequence[tuple[str, str]] = ()
) -> list[BaseRoute]:
    settings = get_settings()
    manifest_service = settings.service_url("manifest")
    sessions: Sessions | None = make_sessions(settings) if setup.users is not None else None
    if setup.users is not None and sessions is None:
        log.warning(
            "the web interface's sign-in is off: set REGISTRY_UI_SESSION_SECRET (or "
            "REGISTRY_INTERNAL_SECRET), the same on every gateway replica"
        )

    def signed_in(request: Request) -> Session | None:
        if sessions is None or setup.users is None:
            return None
        return sessions.session(request, setup.users.get())

    async def to_interface(request: Request) -> Response:
        return await _to_interface(request, signed_in(request))

    async def _to_interface(request: Request, session: Session | None) -> Response:
        """The request forwarded to the manifest service, for ``session``."""
        headers = list(extra_headers)
        if session is not None:
            # The manifest service looks up whether the session was signed out.
            headers.append((ACTOR_HEADER, session.user))
            headers.append((UI_SESSION_HEADER, session.id))
            headers.append((UI_SESSION_EXPIRES_HEADER, str(session.expires)))
            headers.append((UI_CSRF_HEADER, session.form_token))
        path = (request.scope.get("raw_path", b"").decode("latin-1") or request.url.path).split(
            "?", 1
        )[0]
        # Forwarded with the internal secret: only a path that stays under /ui/ once resolved
        # (no dot segment, encoded or not), never one that reaches the API around its guard.
        refuse_traversal(path)
        if not path.startswith("/ui/"):
            raise RegistryError(ErrorCode.NOT_FOUND, "no such page")
        return await forward(
            request.app.state.http
            if request.method in ("GET", "HEAD")
            else request.app.state.http_writes,
            manifest_service,
            path,
            request,
            request_id(request),
            extra_headers=headers,
        )

    async def home(request: Request) -> Response:
        return _see("/ui/")

    async def post(request: Request) -> Response:
        session = signed_in(request)
        fields = await _form(request, session)
        if isinstance(fields, Response):
            return fields
        return await _to_interface(request, session)

    async def login(request: Request) -> Response:
        fields = await _form(request, signed_in(request))
        if isinstance(fields, Response):
            return fields
        next_page = _safe_next(fields.get("next"))
        if sessions is None or setup.credentials is None:
            return _see("/ui/login")
        name = fields.get("username", "")
        try:
            user = await setup.credentials.check(
                name, fields.get("password", "").encode(), client_address(request)
            )
        except LoginThrottled:
            REFUSALS.labels("login_throttled").inc()
            return _see("/ui/login?" + urlencode({"failed": "throttled", "next": next_page}))
        except BadCredentials:
            REFUSALS.labels("bad_credentials").inc()
            log.info("web sign-in refused client=%s", client_address(request))
            return _see("/ui/login?" + urlencode({"failed": "credentials", "next": next_page}))
        response = _see(next_page)
        sessions.start(response, user)
        log.info("web sign-in user=%s client=%s", user.name, client_address(request))
        return response

    async def logout(request: Request) -> Response:
        session = signed_in(request)
        if session is not None:
            fields = await _form(request, session)
            if isinstance(fields, Response):
                return fields
            # Recorded as ended in the database (by the manifest service), where every replica
            # looks: a copy of the cookie signs nobody in either.
            try:
                ended: Response | None = await _to_interface(request, session)
            except RegistryError:
                ended = None
            if ended is not None and ended.background is not None:
                await ended.background()  # its connection back to the pool
            if ended is None or ended.status_code != 204:
                log.warning(
                    "web sign-out of user=%s not recorded (the manifest service answered %s)",
                    session.user,
                    "nothing" if ended is None else ended.status_code,
                )
                return PlainTextResponse(
                    "Signing out could not be recorded: you are still signed in. Try again in "
                    "a moment.",
                    status_code=503,
                )
            log.info("web sign-out user=%s client=%s", session.user, client_address(request))
        elif request.headers.get("sec-fetch-site") not in _SAME_ORIGIN:
            # Without a session (signed out in another tab, or expired) there is nothing to
            # end, and a page left open has the session's token: a post the browser says came
            # from the registry's own pages drops the cookie whatever its token. Another
            # site's, or one a browser does not say of, needs the cookie's token.
            fields = await _form(request, None)
            if isinstance(fields, Response):
                return fields
        response = _see("/ui/")
        if sessions is not None:
            sessions.end(response)
        return response

    return [
        Endpoint("/", home, methods=["GET", "HEAD"]),
        Endpoint("/ui", home, methods=["GET", "HEAD"]),
        Endpoint("/ui/login", login, methods=["POST"]),
        Endpoint("/ui/logout", logout, methods=["POST"]),
        Endpoint("/ui/{path:path}", to_interface, methods=["GET", "HEAD"]),
        Endpoint("/ui/{path:path}", post, methods=["POST"]),
    ]
