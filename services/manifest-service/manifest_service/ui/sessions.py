"""Web interface sessions signed out before they expire.

The gateway keeps sessions in signed cookies and never reads the database: signing out there
deletes the browser's cookie, and has this service record the session's id as ended
(``ui_ended_sessions``, kept until the session would have expired anyway). Every page and post
the gateway forwards for a session names it (``UI_SESSION_HEADER``); one signed out is served
as anonymous, so that a copy of its cookie, made before, signs nobody in on any replica. Its
pages still carry the session's form token: the sign-in form posts it (the gateway, which does
not know the session ended, asks for it), and nothing else is done for it.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import db
from shared.models import EndedWebSession, utcnow
from shared.numbers import NumberInvalid, parse_decimal
from shared.web import ACTOR_HEADER, UI_SESSION_EXPIRES_HEADER, UI_SESSION_HEADER

log = logging.getLogger(__name__)
_INSERT = insert(EndedWebSession)
_ACTOR, _SESSION = ACTOR_HEADER.encode(), UI_SESSION_HEADER.encode()
_OF_THE_SESSION = {_ACTOR, _SESSION}
# Set in the request's state when the database could not say whether its session ended.
UNKNOWN = "web_session_unknown"
# The latest time a cookie can carry (datetime's last second); a later one is that.
LAST_SECOND = 253402300799
# Ended sessions are forgotten this long after they expire: a gateway whose clock is behind
# still counts them as valid meanwhile.
CLOCK_MARGIN = dt.timedelta(hours=1)


def end(session_id: str, expires_at: dt.datetime) -> None:
    """Record the session as ended until it expires (the time its cookie carries), then forget
    those that expired more than ``CLOCK_MARGIN`` ago: apart, and at best (on MySQL, deleting
    a range and inserting after it in one transaction makes two sign-outs deadlock; a purge
    that fails is the next sign-out's)."""
    with db.transaction() as session:
        row = {"session_id": session_id, "expires_at": expires_at}
        db.insert_new(session.connection(), _INSERT, row)  # ended already: nothing to add
    try:
        with db.transaction() as session:
            forgotten = EndedWebSession.expires_at < utcnow() - CLOCK_MARGIN
            session.execute(delete(EndedWebSession).where(forgotten))
    except SQLAlchemyError as exc:
        log.warning("ended web sessions not purged: %s", exc)


def ended(session_id: str) -> bool:
    with db.reading() as connection:
        query = select(EndedWebSession.session_id).where(EndedWebSession.session_id == session_id)
        return connection.execute(query).first() is not None


async def _ended(session_id: str, scope: Scope) -> bool:
    """Whether the session was signed out; when the database cannot say, it counts as signed
    out (its pages are anonymous ones until it can), and the request's state says so."""
    try:
        return await db.read(ended, session_id)
    except SQLAlchemyError as exc:
        log.warning("whether a web session ended could not be read: %s", exc)
        scope.setdefault("state", {})[UNKNOWN] = True
        return True


class SignedOutSessions:
    """ASGI middleware: a request for a session signed out reaches the pages as an anonymous
    one (the session's headers are dropped). A user named without a session id comes from a
    gateway older than sessions with ids (during an upgrade, manifest services first), which
    checked the session as it did before."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            if any(name == _ACTOR for name, _ in headers):
                session_id = next((v for name, v in headers if name == _SESSION), b"")
                if session_id and await _ended(session_id.decode("latin-1"), scope):
                    kept = [(name, v) for name, v in headers if name not in _OF_THE_SESSION]
                    scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


async def sign_out(request: Request) -> Response:
    """``POST /ui/logout``, forwarded by the gateway for a signed-in session: it ends (204), or
    503 when that cannot be recorded now (the gateway keeps the session and says so)."""
    if request.scope.get("state", {}).get(UNKNOWN):
        return Response("whether the session ended could not be read", status_code=503)
    session_id = request.headers.get(UI_SESSION_HEADER)
    if not session_id or not request.headers.get(ACTOR_HEADER):
        return Response(status_code=204)  # ended already
    try:
        seconds = parse_decimal(request.headers.get(UI_SESSION_EXPIRES_HEADER, ""))
    except NumberInvalid:
        return Response("the session's expiry is missing", status_code=400)
    expires_at = dt.datetime.fromtimestamp(min(seconds, LAST_SECOND), dt.UTC).replace(tzinfo=None)
    try:
        await db.write(end, session_id, expires_at)
    except SQLAlchemyError as exc:
        log.warning("a web sign-out could not be recorded: %s", exc)
        return Response("the sign-out could not be recorded", status_code=503)
    return Response(status_code=204)
