"""The web interface (``/ui/``): pages for people, over the same database as the API."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class Interface:
    """The interface's application, built at its first request: a process that never serves a
    page does not load Jinja2 and the templates."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:
            from manifest_service.ui.routes import build_app

            self.app = build_app()
        await self.app(scope, receive, send)
