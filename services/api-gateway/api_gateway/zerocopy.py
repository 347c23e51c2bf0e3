"""ASGI's zero-copy send extension on the gateway's connections: a response body sent from a
file by the kernel (``sendfile``), from the page cache to the socket, never through Python.

The application sees ``"http.response.zerocopysend"`` in ``scope["extensions"]`` and, after
``http.response.start``, sends ``{"type": "http.response.zerocopysend", "file": <file>,
"offset": int, "count": int, "more_body": bool}`` (the ASGI extension's message; ``offset``
defaults to the file's position, ``count`` to the rest of the file). The gateway sends blob
bytes it reads from storage this way (``api_gateway.proxy``).

uvicorn implements the extension nowhere, and its event loop (uvloop) has no ``sendfile`` for
its transports, so it is done here: the transport's buffer is drained first (the status line
and headers are in it), then ``os.sendfile`` runs on a duplicate of the socket's descriptor
(the loop refuses to watch a descriptor a transport owns), waiting for the socket to take
more when it is full. Pieces are sent from worker threads (the kernel's copy runs there, on
both cores when several pulls run at once, and a piece the page cache does not hold never
makes the event loop wait for the disk); only small ones the page cache holds are sent from
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, BinaryIO

import anyio
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from shared.blobs import TransferAborted
from shared.observability import SENDFILE_BYTES, ZERO_COPY_SEND
from shared.storage.filesystem import in_page_cache

EXTENSION = ZERO_COPY_SEND
EXTENSIONS: dict[str, dict[object, object]] = {EXTENSION: {}}

# Bytes per sendfile call at most: other connections get the event loop between calls.
PIECE = 4 * 1024 * 1024
# Pieces from this size on are sent from a worker thread even from the page cache: the
# kernel's copy into the socket is most of a pull's CPU, and threads spread concurrent pulls
# over the cores (the hop costs less than the copy of such a piece).
THREAD_FROM = 256 * 1024


class ConnectionLost(Exception):
    """The connection ended while a file was being sent."""


class FileSender:
    """Sends files on one connection. The protocol calls ``lost()`` from its
    ``connection_lost``: a send waiting for the socket ends then."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, flow: FlowControl
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._flow = flow
        self._waiter: asyncio.Future[None] | None = None
        self._lost = False

    def lost(self) -> None:
        self._lost = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionLost())

    async def _drained(self) -> None:
        """Wait until the transport has written all it holds: the socket is the kernel's
        alone then. The transport pauses the protocol's writing while it holds more than its
        high-water mark and resumes it at its low one: both are 0 for the wait."""
        transport = self._transport
        if transport.get_write_buffer_size():
            low, high = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=0, low=0)
            try:
                await self._flow.drain()  # connection_lost resumes it too
            finally:
                if not transport.is_closing():
                    transport.set_write_buffer_limits(high=high, low=low)
        if self._lost:
            raise ConnectionLost()

    async def _writable(self, fd: int) -> None:
        """Wait until the socket ``fd`` takes more bytes (or the connection is lost)."""
        waiter = self._waiter = self._loop.create_future()
        self._loop.add_writer(fd, _settle, waiter)
        try:
            await waiter
        finally:
            self._loop.remove_writer(fd)
            self._waiter = None

    async def send(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file`` from ``offset`` on. Raises ConnectionLost when the
        client goes away, and EOFError when the file ends early."""
        await self._drained()
        socket = self._transport.get_extra_info("socket")
        if socket is None or self._lost:
            raise ConnectionLost()
        source = file.fileno()
        out = os.dup(socket.fileno())
        try:
            while count > 0:
                if self._lost:
                    raise ConnectionLost()
                piece = min(count, PIECE)
                try:
                    if piece < THREAD_FROM and in_page_cache(source, offset, offset + piece - 1):
                        sent = os.sendfile(out, source, offset, piece)
                    else:
                        sent = await _in_thread(os.sendfile, out, source, offset, piece)
                except BlockingIOError:
                    await self._writable(out)  # the socket is full: until it takes more
                    continue
                except (BrokenPipeError, ConnectionError) as exc:
                    raise ConnectionLost() from exc
                if sent == 0:
                    raise EOFError(f"the file ended {count} bytes early")
                offset += sent
                count -= sent
                await asyncio.sleep(0)  # other connections' turn
        finally:
            os.close(out)


async def send_file_message(
    cycle: RequestResponseCycle, files: FileSender, message: dict[str, Any]
) -> None:
    """Answer one ``http.response.zerocopysend`` message of the response ``cycle``, as
    uvicorn's own ``send`` answers ``http.response.body``."""
    if cycle.disconnected:
        return  # as uvicorn does with any message once the client has gone
    if not cycle.response_started or cycle.response_complete:
        raise RuntimeError(f"Unexpected ASGI message {EXTENSION!r} outside a response's body")
    file: BinaryIO = message["file"]
    offset = message.get("offset")
    if offset is None:
        offset = file.tell()
    count = message.get("count")
    if count is None:
        count = os.fstat(file.fileno()).st_size - offset
    if count and cycle.scope["method"] != "HEAD":
        if cycle.chunked_encoding:
            cycle.transport.write(b"%x\r\n" % count)
        elif count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        try:
            await files.send(file, offset, count)
        except ConnectionLost:
            cycle.disconnected = True
            cycle.transport.close()
            return
        except EOFError as exc:
            raise TransferAborted(f"{file.name}: {exc}") from exc
        SENDFILE_BYTES.inc(count)
        if cycle.chunked_encoding:
            cycle.transport.write(b"\r\n")
        else:
            cycle.expected_content_length -= count
    await cycle.send(
        {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
    )


async def _in_thread(function: Callable[..., int], *args: int) -> int:
    """``function(*args)`` in a worker thread. When the awaiting task is cancelled (a
    shutdown's deadline), it still waits for the thread: the descriptors the call uses are
    closed by the caller right after, and must not be while the thread may use them (or
    their numbers, reused meanwhile)."""
    running = asyncio.ensure_future(anyio.to_thread.run_sync(function, *args))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        while not running.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([running])
        raise


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
