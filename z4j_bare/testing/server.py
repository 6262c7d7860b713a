"""The brain's network side: an asyncio loop in a daemon thread, one TCP port, a storage thread.

Each accepted connection is read up to the end of its request line: the WebSocket path goes to
the ``websockets`` server (upgrade, then the mounted handler); any other request is plain HTTP
for ``router`` (see http_api.py). ``websockets`` cannot take request bodies, which the HTTP
endpoints need, hence the split before it parses anything.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from functools import partial
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

from ..logs import get_logger
from .http_api import HttpRouter
from .http_conn import HttpConnection

log = get_logger(__name__)

T = TypeVar("T")
MAX_REQUEST_LINE = 8192
CloseHook = Callable[[int, str], Awaitable[None]]


class BrainServer:
    """Owns the loop thread and the listener; ``call``/``spawn``/``run_blocking`` for the other pieces."""

    def __init__(self, host: str, port: int, *, ssl_context: Any = None, server_header: str,
                 idle_timeout: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.router = HttpRouter()
        self._server_header = server_header
        self._idle_timeout = idle_timeout
        self._clock = clock  # the brain's wall clock, for Date headers
        self._ws_path: str | None = None
        self._ws_handler: Callable[[ServerConnection], Awaitable[None]] | None = None
        self._ws_gate: Callable[[ServerConnection, Any], Awaitable[Any]] | None = None
        self._ws_close: Callable[[ServerConnection, int, str], Awaitable[None]] | None = None
        self._close_hooks: list[CloseHook] = []
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._server: Any = None
        self.closing = False
        self._live: set[ServerConnection] = set()
        self._background: set[asyncio.Task] = set()

    def mount_websocket(self, path: str, handler: Callable[[ServerConnection], Awaitable[None]], *,
                        gate: Callable[[ServerConnection, Any], Awaitable[Any]],
                        close: Callable[[ServerConnection, int, str], Awaitable[None]]) -> None:
        """The one WebSocket path: ``gate`` is websockets' process_request, ``close`` closes an open socket."""
        self._ws_path, self._ws_handler, self._ws_gate, self._ws_close = path, handler, gate, close

    def add_close_hook(self, hook: CloseHook) -> None:
        """``await hook(code, reason)`` when the listener closes (pause/stop), before sockets are closed."""
        self._close_hooks.append(hook)

    # -- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def paused(self) -> bool:
        return self._loop is not None and self._server is None

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    # -- running work on the loop --------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T | None:
        """Run ``coro`` on the loop and wait for it; from the loop itself it is spawned (returns None)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("LocalBrain is not running: call start() first")
        if self.on_loop_thread():
            self.spawn(coro)
            return None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """A background task on the loop (from the loop), kept until done; cancelled at stop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the storage thread (one thread: storage work is serialized)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lifecycle:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run_loop, args=(loop,), name="z4j-local-brain", daemon=True)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="z4j-local-brain-store")
            self._loop, self._thread = loop, thread
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self.open_listener(), loop).result(10)
            except OSError as exc:
                self._shutdown_loop()
                raise OSError(
                    exc.errno, f"LocalBrain could not listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                    "pass another port= (0 picks a free one) or stop the process using it"
                ) from exc
            except BaseException:
                self._shutdown_loop()
                raise

    def stop(self, code: int, reason: str) -> bool:
        """Close the listener and every connection, stop the thread; False if it was not running."""
        with self._lifecycle:
            if self._loop is None:
                return False
            try:
                asyncio.run_coroutine_threadsafe(self.close_listener(code, reason), self._loop).result(15)
            except Exception:
                log.warning("brain.stop_unclean", exc_info=True)
            self._shutdown_loop()
            return True

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            for conn in list(self._live):  # e.g. a TCP peer that never sent its HTTP request
                conn.transport.abort()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, asyncio.sleep(0), return_exceptions=True))
            loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread, pool = self._loop, self._thread, self._pool
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        if pool is not None:
            pool.shutdown(wait=True)
        self._loop = self._thread = self._pool = None
        self._server = None

    async def open_listener(self) -> None:
        if self._server is not None:
            return
        self.closing = False
        self._server = await serve(
            self._ws_handler,
            self.host,
            self.port,
            create_connection=_connection_class(self),
            process_request=self._ws_gate,
            process_response=self._date_header,
            ssl=self.ssl_context,
            max_size=None,  # oversize is judged per session so it can close 4400 like the real brain
            ping_interval=60,
            ping_timeout=60,
            open_timeout=None,
            close_timeout=5,
            compression=None,
            server_header=self._server_header,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close_listener(self, code: int, reason: str) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        self.closing = True
        server.close(close_connections=False)
        for hook in list(self._close_hooks):
            await hook(code, reason)
        for conn in list(self._live):
            if conn.protocol.state is State.OPEN and self._ws_close is not None:
                await self._ws_close(conn, code, reason)
            else:
                conn.transport.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 10)
        except TimeoutError:
            for conn in list(self._live):
                conn.transport.abort()

    # -- what the connection class calls -------------------------------------------------------

    def _track(self, conn: ServerConnection, live: bool) -> None:
        if live:
            self._live.add(conn)
        else:
            self._live.discard(conn)

    def _is_websocket(self, request_line: bytes) -> bool:
        parts = request_line.split(b" ")
        target = parts[1] if len(parts) == 3 else b""
        return target.partition(b"?")[0].decode("latin-1") == self._ws_path

    def _http(self, transport: asyncio.Transport) -> HttpConnection:
        return HttpConnection(transport, self.router, server=self._server_header, idle_timeout=self._idle_timeout,
                              clock=self._clock)

    def _date_header(self, conn: ServerConnection, request: Any, response: Any) -> None:
        """websockets' process_response: the upgrade answer's Date in the brain's own time."""
        del response.headers["Date"]
        response.headers["Date"] = formatdate(self._clock(), usegmt=True)


def _connection_class(owner: BrainServer) -> type[ServerConnection]:
    class _BrainConnection(ServerConnection):
        """Tracked from TCP accept (so stop() can abort connections that never finish the upgrade),
        and split by request line: the WebSocket path stays with websockets, the rest is plain HTTP."""

        _head = b""
        _routed = False
        _plain: HttpConnection | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            owner._track(self, True)

        def connection_lost(self, exc: Exception | None) -> None:
            owner._track(self, False)
            if self._plain is not None:
                self._plain.lost()
            super().connection_lost(exc)  # also ends websockets' wait for a handshake request

        def data_received(self, data: bytes) -> None:
            if self._plain is not None:
                self._plain.feed(data)
                return
            if self._routed:
                super().data_received(data)
                return
            head = self._head + data
            line_end = head.find(b"\r\n")
            if line_end < 0 and len(head) <= MAX_REQUEST_LINE:
                self._head = head
                return
            self._routed, self._head = True, b""
            if line_end >= 0 and not owner._is_websocket(head[:line_end]):
                self._plain = owner._http(self.transport)
                self._plain.feed(head)
            else:  # the upgrade, or a request line websockets will refuse by itself
                super().data_received(head)

        def eof_received(self) -> bool | None:
            if self._plain is not None:
                return self._plain.eof()
            return super().eof_received()

    return _BrainConnection
