"""The web interface's sign-in sessions and its forms' CSRF check, at the gateway.

A session is a cookie (``registry_session``: HttpOnly, SameSite=Strict, path ``/ui``) holding
the user's name and a seal of their password hash, signed with ``REGISTRY_UI_SESSION_SECRET``
(or a key derived from the internal secret) and timed: any gateway replica with the same key
reads it, none keeps it in memory. A session of a user no longer in the users file, or whose
password changed since, counts as nobody's.

Every form post under ``/ui/`` must carry the ``csrf`` field. Signed in, it must be the
session's form token, a MAC of the session cookie that the gateway hands each page it forwards
(``UI_CSRF_HEADER``): a page of another site can read neither, and one that can set cookies for
the registry's host (a sibling subdomain) cannot make one for a session it does not have.
Signed out (the sign-in form) it must equal the ``registry_csrf`` cookie the page set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from api_gateway.forms import FormInvalid, read_form
from shared.settings import Settings
from shared.users import User, UserStore
from shared.web import UI_CSRF_COOKIE, UI_CSRF_FIELD

SESSION_COOKIE = "registry_session"


def session_key(settings: Settings) -> str | None:
    """The key sessions are signed with, or None (no sign-in possible)."""
    explicit = settings.ui_session_secret.get_secret_value()
    if explicit:
        return explicit
    internal = settings.internal_secret.get_secret_value()
    if internal:
        return hmac.new(internal.encode(), b"registry web sessions", hashlib.sha256).hexdigest()
    return None


@dataclass(frozen=True)
class Session:
    """A valid session: its user, its id (which signing out records as ended) and the CSRF
    token of its forms."""

    user: str
    id: str
    form_token: str


@dataclass(frozen=True)
class Sessions:
    serializer: URLSafeTimedSerializer
    key: bytes
    max_age: int
    secure: bool  # cookies only over HTTPS (the public URL is https)

    def session(self, request: Request, users: UserStore) -> Session | None:
        """The session the request's cookie holds, or None: also when its user is no longer
        in ``users`` or their password changed since they signed in. (Whether it was signed
        out is in the database, which the manifest service reads: ``manifest_service.ui``.)"""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        try:
            value = self.serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(value, dict):
            return None
        name, seal, session_id = value.get("user"), value.get("seal"), value.get("id")
        found = users.users.get(name) if isinstance(name, str) else None
        if found is None or not isinstance(seal, str) or not isinstance(session_id, str):
            return None
        if not hmac.compare_digest(seal, self._seal(found)):
            return None
        # The form token: a MAC of the cookie, which only the registry can compute.
        mac = hmac.new(self.key, b"form token\0" + cookie.encode(), hashlib.sha256)
        return Session(found.name, session_id, mac.hexdigest()[:43])

    def start(self, response: Response, user: User) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.serializer.dumps(
                {"user": user.name, "seal": self._seal(user), "id": secrets.token_urlsafe(24)}
            ),
            max_age=self.max_age,
            path="/ui",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def _seal(self, user: User) -> str:
        """What ties a session to the user's password: a new password ends their sessions."""
        return hmac.new(self.key, user.password_hash, hashlib.sha256).hexdigest()[:32]

    def end(self, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE, path="/ui", secure=self.secure, httponly=True, samesite="strict"
        )


def make_sessions(settings: Settings) -> Sessions | None:
    key = session_key(settings)
    if key is None:
        return None
    return Sessions(
        URLSafeTimedSerializer(key, salt="registry-ui-session"),
        key.encode(),
        settings.ui_session_seconds,
        settings.public_url.startswith("https://"),
    )


class FormRefused(Exception):
    """A form post that may not go on: too large, or without the right CSRF token."""


def accepted_tokens(
    request: Request, session: Session | None, *, sign_in: bool = False
) -> list[str]:
    """The CSRF tokens a form post may carry: signed in, the session's; signed out, the
    ``registry_csrf`` cookie's value. The sign-in form may carry either: a page rendered for a
    session the manifest service found signed out carries the cookie's."""
    cookie = request.cookies.get(UI_CSRF_COOKIE, "")
    if session is None:
        return [cookie]
    return [session.form_token, cookie] if sign_in else [session.form_token]


async def checked_form(request: Request, accepted: list[str]) -> dict[str, str]:
    """The fields of a form post (first value of each), once its CSRF token is checked: one of
    ``accepted``. The body stays readable for forwarding (Starlette keeps it), so it needs a
    Content-Length."""
    if request.headers.get("content-length") is None:
        raise FormRefused("a form post needs a Content-Length of at most 16 KiB")
    try:
        fields = await read_form(request)
    except FormInvalid as exc:
        raise FormRefused(str(exc)) from None
    sent = fields.get(UI_CSRF_FIELD, "").encode()
    if not sent or not any(t and hmac.compare_digest(t.encode(), sent) for t in accepted):
        raise FormRefused("the form's CSRF token is missing or wrong: reload the page and retry")
    return fields
