"""The gateway's HTTP connections: time limits on every phase a client controls, and a cap on
the connections one client address may hold.

The gateway is the only public port, so a client that opens connections and then sends slowly
(or not at all) must not hold its resources without limit. uvicorn limits only the idle time
between requests; this protocol (uvicorn's httptools one, with these checks added; the
gateway is started with ``--http api_gateway.connections:GatewayProtocol``) also limits:

- a new connection that sends nothing, and a request whose header lines are not all in within
  ``REGISTRY_CLIENT_HEADER_TIMEOUT_SECONDS``: answered 408 and closed;
- a request body that stops: no byte for ``REGISTRY_CLIENT_BODY_TIMEOUT_SECONDS`` while the
  gateway is ready to read closes the connection (the service behind sees the request cut
  short and undoes it). Time when the gateway itself is not reading (the service is slower
  than the client) does not count;
- more than ``REGISTRY_MAX_CONNECTIONS_PER_CLIENT`` connections from one address at once:
  the one over the cap is answered 429 ``TOOMANYREQUESTS`` and closed. Connections from the
  trusted proxies (``REGISTRY_FORWARDED_ALLOW_IPS``) are not counted: they carry everyone's
  requests.

It also implements ASGI's zero-copy send extension (``api_gateway.zerocopy``): blob bytes the
gateway reads from storage go from the page cache to the client's socket by ``sendfile``.

And it answers what the HTTP parser refuses in the spec's error format, where uvicorn would
answer in plain text: a request target longer than ``REGISTRY_MAX_URL_BYTES`` gets 414
``URI_TOO_LONG`` (checked here, as the bytes arrive: uvicorn itself fails on targets over
64 KiB, where its URL parser's 16-bit offsets end), and a request the parser cannot read (raw
non-ASCII bytes in the target, a malformed request line or header) 400 ``UNSUPPORTED``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import sys
import time
from collections import Counter
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from api_gateway import zerocopy
from shared.errors import ErrorCode, error_body
from shared.observability import CLIENT_CONNECTIONS_REFUSED, CLIENTS_CUT_OFF
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Open connections per client address, in this process (the cap is per gateway replica).
_open: Counter[str] = Counter()

SWEEP_SECONDS = 1.0  # how often time limits are checked: a client is cut off up to this late

# The longest request target uvicorn can parse (http_parser_parse_url's offsets are 16-bit).
MAX_URL_BYTES = 65535


class _TargetTooLong(Exception):
    """Raised from the parser's callback to stop it; the answer is already chosen."""


def _trusted(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    found = []
    for item in settings.forwarded_allow_ips.split(","):
        item = item.strip()
        if item and item != "*":
            try:
                found.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                continue  # a host name or a socket path: not an address to compare
    return found


def _answer(status: int, reason: str, code: ErrorCode, detail: str, extra: str = "") -> bytes:
    body = json.dumps(error_body(code, detail)).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n"
        "docker-distribution-api-version: registry/2.0\r\n\r\n"
    ).encode() + body


class GatewayProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout = settings.client_header_timeout_seconds
        self._body_timeout = settings.client_body_timeout_seconds
        self._cap = settings.max_connections_per_client
        self._trusted_proxies = _trusted(settings) if self._cap else []
        self._max_url = min(settings.max_url_bytes, MAX_URL_BYTES)
        self._counted: str | None = None
        # What the connection waits for from the client ("headers", "body" or nothing) and
        # until when (monotonic). Checked by one sweep a second for every connection: a timer
        # per request cost a sixth of the gateway's request rate.
        self._waiting_for: str | None = None
        self._deadline = 0.0
        self._refusal: bytes | None = None
        self._files: zerocopy.FileSender | None = None

    # --- the cap per client address ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._files = zerocopy.FileSender(self.loop, transport, self.flow)
        host = self.client[0] if self.client else None
        if self._cap and host is not None and not self._is_trusted_proxy(host):
            if _open[host] >= self._cap:
                CLIENT_CONNECTIONS_REFUSED.inc()
                transport.write(
                    _answer(
                        429,
                        "Too Many Requests",
                        ErrorCode.TOOMANYREQUESTS,
                        f"more than {self._cap} connections from one address at once",
                        "retry-after: 1\r\n",
                    )
                )
                transport.close()
                return
            _open[host] += 1
            self._counted = host
        self._expect("headers", self._header_timeout)
        _Sweeper.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting_for = None
        if self._files is not None:
            self._files.lost()
        _Sweeper.forget(self)
        if self._counted is not None:
            _open[self._counted] -= 1
            if _open[self._counted] <= 0:
                del _open[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def _is_trusted_proxy(self, host: str) -> bool:
        if not self._trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted_proxies)

    # --- time limits ------------------------------------------------------------------------

    def _expect(self, what: str, seconds: float) -> None:
        if seconds > 0:
            self._waiting_for = what
            self._deadline = time.monotonic() + seconds
        else:
            self._waiting_for = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.scheme == "http":  # (under TLS the bytes must pass through the TLS layer)
            self.scope["extensions"] = zerocopy.EXTENSIONS
        self._expect("headers", self._header_timeout)

    # --- the zero-copy send extension ---------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        files = self._files
        assert files is not None

        async def app_sending_files(
            scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            async def send_or_send_file(message: Any) -> None:
                if message["type"] == zerocopy.EXTENSION:
                    await zerocopy.send_file_message(cycle, files, message)
                else:
                    await send(message)

            await app(scope, receive, send_or_send_file)

        super()._start_asgi_task(cycle, app_sending_files)

    # --- what the parser refuses --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._max_url:
            self._refusal = _answer(
                414,
                "URI Too Long",
                ErrorCode.URI_TOO_LONG,
                f"the request target is longer than {self._max_url} bytes",
            )
            raise _TargetTooLong  # the parser stops; uvicorn then calls send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refused, in the spec's error format. It
        is called while uvicorn handles the parser's exception, which says what was wrong."""
        answer = self._refusal
        if answer is None:
            error = sys.exc_info()[1]
            detail = (
                "the request target may hold printable ASCII characters only; "
                "percent-encode any other byte"
                if isinstance(error, httptools.HttpParserInvalidURLError)
                else f"malformed HTTP request ({error or msg})"
            )
            answer = _answer(400, "Bad Request", ErrorCode.UNSUPPORTED, detail)
        self.transport.write(answer)
        self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect("body", self._body_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        if self._waiting_for is not None:
            self._deadline = time.monotonic() + self._body_timeout

    def on_message_complete(self) -> None:
        self._waiting_for = None
        super().on_message_complete()

    def overdue(self, now: float) -> None:
        """Called by the sweep: cut the connection off if the client is late."""
        if self._waiting_for is None or now < self._deadline:
            return
        if self.transport.is_closing():
            self._waiting_for = None
        elif self._waiting_for == "headers":
            self._headers_too_slow()
        else:
            self._body_too_slow()

    def _headers_too_slow(self) -> None:
        self._waiting_for = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its own limits apply
        CLIENTS_CUT_OFF.labels("headers").inc()
        self.transport.write(
            _answer(
                408,
                "Request Timeout",
                ErrorCode.REQUEST_TIMEOUT,
                f"the request's headers did not arrive within {self._header_timeout:g} s",
            )
        )
        self.transport.close()

    def _body_too_slow(self) -> None:
        if self.flow.read_paused:
            # The gateway is not reading (the service takes the bytes slower than the client
            # sends them): not the client's delay.
            self._deadline = time.monotonic() + self._body_timeout
            return
        self._waiting_for = None
        CLIENTS_CUT_OFF.labels("body").inc()
        log.info("closing a connection whose request body stalled for %g s", self._body_timeout)
        self.transport.close()


class _Sweeper:
    """Once a second, each open connection of this process is asked whether its client is
    late (one timer for all of them, running while any connection is open)."""

    connections: ClassVar[set[GatewayProtocol]] = set()
    handle: ClassVar[asyncio.TimerHandle | None] = None

    @classmethod
    def watch(cls, connection: GatewayProtocol) -> None:
        cls.connections.add(connection)
        if cls.handle is None:
            cls.handle = connection.loop.call_later(SWEEP_SECONDS, cls.sweep, connection.loop)

    @classmethod
    def forget(cls, connection: GatewayProtocol) -> None:
        cls.connections.discard(connection)

    @classmethod
    def sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        for connection in list(cls.connections):
            try:
                connection.overdue(now)
            except Exception:  # one connection's trouble must not stop the others' checks
                log.exception("checking a connection's time limits failed")
        cls.handle = loop.call_later(SWEEP_SECONDS, cls.sweep, loop) if cls.connections else None
