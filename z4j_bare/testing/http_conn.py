"""HTTP/1.1 on one accepted connection whose first request is not the WebSocket upgrade.

Bodies need ``Content-Length`` (no chunked uploads: 411); keep-alive is the default for
HTTP/1.1 and requests on a connection are answered in order. A client that closes its side
is gone: the handler in flight is cancelled. A connection idle for the brain's
``idle_timeout`` between requests is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..logs import get_logger
from .http_api import HttpRequest, HttpResponse, HttpRouter, Route

log = get_logger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128


class HttpConnection:
    """Fed by the server's connection object (``feed``, ``eof``, ``lost``); writes to its transport."""

    def __init__(self, transport: asyncio.Transport, router: HttpRouter, *, server: str,
                 idle_timeout: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self._transport = transport
        self._router = router
        self._server = server
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._buf = bytearray()
        self._task: asyncio.Task | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._done = False
        self._discard = 0  # bytes of a refused body still to read before hanging up

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        if self._discard:
            self._discard_body(len(data))
            return
        self._buf += data
        if self._task is None:
            self._next()

    def eof(self) -> bool:
        """The client closed its side: take it as gone (what long-poll clients do when they give up)."""
        self.lost()
        return False  # asyncio closes the transport

    def lost(self) -> None:
        self._done = True
        self._cancel_idle()
        if self._task is not None:
            self._task.cancel()

    def _next(self) -> None:
        """Start on the next complete request in the buffer, or wait for more bytes."""
        self._cancel_idle()
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                self._fail(431, "request head too large")
            else:
                self._arm_idle()
            return
        try:
            method, target, version, headers = _parse_head(bytes(self._buf[:end]))
        except ValueError as exc:
            self._fail(400, str(exc))
            return
        found = self._router.find(method, target.partition("?")[0])
        if "transfer-encoding" in headers:
            self._fail(411, "send the body with Content-Length (chunked uploads are not supported)")
            return
        length = headers.get("content-length", "0")
        if not length.isdigit():
            self._fail(400, "bad Content-Length")
            return
        size = int(length)
        if isinstance(found, Route) and size > found.max_body:
            # Read (and drop) the body before hanging up: closing with unread bytes resets the
            # connection, and the client would see the reset instead of the 413.
            self._respond_and_drain(413, f"request body over {found.max_body} bytes", end + 4 + size)
            return
        if len(self._buf) < end + 4 + size:
            self._arm_idle()  # the rest of the body is on its way
            return
        body = bytes(self._buf[end + 4:end + 4 + size])
        del self._buf[:end + 4 + size]
        keep_alive = _keep_alive(version, headers.get("connection", ""))
        request = HttpRequest(method, target, headers, body, self._transport.get_extra_info("peername"))
        self._task = asyncio.get_running_loop().create_task(self._serve(found, request, keep_alive))

    async def _serve(self, found: Route | HttpResponse, request: HttpRequest, keep_alive: bool) -> None:
        try:
            response = found if isinstance(found, HttpResponse) else await self._router.respond(found, request)
        finally:
            self._task = None
        if self._done:
            return
        self._transport.write(response.encode(keep_alive=keep_alive, server=self._server, now=self._clock()))
        if keep_alive:
            self._next()
        else:
            self._finish()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request the brain cannot read and hang up (the stream position is lost)."""
        log.info("brain.http_rejected", status=status, reason=message)
        self._transport.write(HttpResponse.text(status, message + "\n").encode(keep_alive=False, server=self._server, now=self._clock()))
        self._finish()

    def _respond_and_drain(self, status: int, message: str, request_bytes: int) -> None:
        log.info("brain.http_rejected", status=status, reason=message)
        self._transport.write(HttpResponse.text(status, message + "\n").encode(keep_alive=False, server=self._server, now=self._clock()))
        self._discard = request_bytes
        buffered = len(self._buf)
        self._buf.clear()
        self._discard_body(buffered)

    def _discard_body(self, n: int) -> None:
        self._discard = max(0, self._discard - n)
        if self._discard:
            self._cancel_idle()
            self._arm_idle()
        else:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._cancel_idle()
        self._transport.close()

    def _arm_idle(self) -> None:
        self._idle = asyncio.get_running_loop().call_later(self._idle_timeout(), self._finish)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise ValueError("bad request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        raise ValueError("bad request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise ValueError("too many headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not sep or not name or name != name.rstrip() or " " in name:
            raise ValueError("bad header line")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method, target, version, headers


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {t.strip().lower() for t in connection.split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
