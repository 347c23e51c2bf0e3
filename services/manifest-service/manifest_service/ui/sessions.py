"""Web interface sessions signed out before they expire.

The gateway keeps sessions in signed cookies and never reads the database: signing out there
deletes the browser's cookie, and has this service record the session's id as ended
(``ui_ended_sessions``, kept until the session would have expired anyway). Every page and post
the gateway forwards for a session names it (``UI_SESSION_HEADER``); one signed out is served
as anonymous, so that a copy of its cookie, made before, signs nobody in on any replica.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, insert, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shared import db
from shared.models import EndedWebSession, utcnow
from shared.settings import get_settings
from shared.web import ACTOR_HEADER, UI_CSRF_HEADER, UI_SESSION_HEADER

_INSERT = insert(EndedWebSession)
_ACTOR, _SESSION = ACTOR_HEADER.encode(), UI_SESSION_HEADER.encode()
_OF_THE_SESSION = {_ACTOR, _SESSION, UI_CSRF_HEADER.encode()}


def end(session_id: str) -> None:
    """Record the session as ended, then forget those that have expired since (apart: on
    MySQL, deleting a range and inserting after it in one transaction makes two sign-outs
    deadlock)."""
    now = utcnow()
    expires_at = now + dt.timedelta(seconds=get_settings().ui_session_seconds)
    with db.transaction() as session:
        row = {"session_id": session_id, "expires_at": expires_at}
        db.insert_new(session.connection(), _INSERT, row)  # ended already: nothing to add
    with db.transaction() as session:
        session.execute(delete(EndedWebSession).where(EndedWebSession.expires_at < now))


def ended(session_id: str) -> bool:
    with db.reading() as connection:
        query = select(EndedWebSession.session_id).where(EndedWebSession.session_id == session_id)
        return connection.execute(query).first() is not None


class SignedOutSessions:
    """ASGI middleware: a request for a session without an id, or one signed out, reaches the
    pages as an anonymous one (the session's headers are dropped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            if any(name == _ACTOR for name, _ in headers):
                session_id = next((v for name, v in headers if name == _SESSION), b"")
                if not session_id or await db.read(ended, session_id.decode("latin-1")):
                    kept = [(name, v) for name, v in headers if name not in _OF_THE_SESSION]
                    scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


async def sign_out(request: Request) -> Response:
    """``POST /ui/logout``, forwarded by the gateway for a signed-in session: it ends."""
    session_id = request.headers.get(UI_SESSION_HEADER)
    if session_id and request.headers.get(ACTOR_HEADER):
        await db.write(end, session_id)
    return Response(status_code=204)
