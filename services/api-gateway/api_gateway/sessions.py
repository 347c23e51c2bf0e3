"""The web interface's sign-in sessions and its forms' CSRF check, at the gateway.

A session is a cookie (``registry_session``: HttpOnly, SameSite=Strict, path ``/ui``) holding
the user's name and a seal of their password hash, signed with ``REGISTRY_UI_SESSION_SECRET``
(or a key derived from the internal secret) and timed: any gateway replica with the same key
reads it, none keeps it in memory. A session of a user no longer in the users file, or whose
password changed since, counts as nobody's.

A session carries an id and the time it expires (both signed); signing out records the id as
ended in the database, where the manifest service looks it up for every page (the gateway never
reads the database): ``manifest_service.ui.sessions``.

Every form post under ``/ui/`` must carry the ``csrf`` field. With a session, it must be the
session's form token, a MAC of the session cookie that the gateway hands each page it forwards
(``UI_CSRF_HEADER``): a page of another site can read neither, and one that can set cookies for
the registry's host (a sibling subdomain) cannot make one for a session it does not have.
Without one (the sign-in form) it must equal the ``registry_csrf`` cookie the page set: that
much a sibling host could forge (sign a visitor in to an account of its own), as it could toss
a session cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
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
    """A valid session: its user, its id (which signing out records as ended), when it expires
    (seconds since the epoch) and the CSRF token of its forms."""

    user: str
    id: str
    expires: int
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
        expires = value.get("expires")
        if not isinstance(expires, int) or expires <= time.time():
            return None  # the lifetime it was given (a longer one set since does not extend it)
        found = users.users.get(name) if isinstance(name, str) else None
        if found is None or not isinstance(seal, str) or not isinstance(session_id, str):
            return None
        if not hmac.compare_digest(seal, self._seal(found)):
            return None
        # The form token: a MAC of the cookie, which only the registry can compute.
        mac = hmac.new(self.key, b"form token\0" + cookie.encode(), hashlib.sha256)
        return Session(found.name, session_id, expires, mac.hexdigest()[:43])

    def start(self, response: Response, user: User) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.serializer.dumps(
                {
                    "user": user.name,
                    "seal": self._seal(user),
                    "id": secrets.token_urlsafe(24),
                    "expires": int(time.time()) + self.max_age,
                }
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


async def checked_form(request: Request, session: Session | None) -> dict[str, str]:
    """The fields of a form post (first value of each), once its CSRF token is checked: the
    session's, or without one the ``registry_csrf`` cookie's value. The body stays readable for
    forwarding (Starlette keeps it), so it needs a Content-Length."""
    if request.headers.get("content-length") is None:
        raise FormRefused("a form post needs a Content-Length of at most 16 KiB")
    try:
        fields = await read_form(request)
    except FormInvalid as exc:
        raise FormRefused(str(exc)) from None
    expected = request.cookies.get(UI_CSRF_COOKIE, "") if session is None else session.form_token
    sent = fields.get(UI_CSRF_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise FormRefused("the form's CSRF token is missing or wrong: reload the page and retry")
    return fields
