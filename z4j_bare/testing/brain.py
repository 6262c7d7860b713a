"""LocalBrain: a small, protocol-faithful z4j brain on 127.0.0.1 for tests, demos and trials.

Threads: the websockets asyncio server runs on its own event loop in a daemon thread
(``z4j-local-brain``); SQLite writes run on one storage thread so verifying the next frame
overlaps storing the previous one. The public methods are thread-safe and may be called from
any thread except the brain's own loop (listeners run there: keep them quick).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from ..logs import get_logger
from ..protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION_TEXT,
    CloseCode,
    FrameType,
    ProtocolError,
    SignatureError,
    derive_project_secret,
    encode_hmac_secret,
    parse_frame,
    token_digest,
    utc_now_text,
)
from . import wire
from .faults import BrainFaults
from .records import (
    COMPLETED,
    DISPATCHED,
    FAILED,
    PENDING,
    REDELIVERABLE_ACTIONS,
    RETRY_FAMILY,
    AgentCredentials,
    AgentRow,
    CommandRecord,
    MutableCommand,
)
from .session import Session
from .store import BrainStore

log = get_logger(__name__)

BRAIN_VERSION = "1.13.0"
MIN_FRAME_SIZE = 1024
MAX_FRAME_SIZE = 64 * 1024 * 1024
INGEST_QUEUE_FRAMES = 64
# Events parsed but not yet stored, per session, before the receive loop waits for the storage
# thread: the parsed frames are objects the garbage collector tracks, and letting 64 frames of
# 4000 events pile up made each full collection walk a million of them. Two big frames still
# overlap (one stored while the next is verified); a lone frame of any size is always taken.
INGEST_QUEUE_EVENTS = 8192
PENDING_DRAIN_LIMIT = 500
FRAME_LOG_MAX = 10_000
FRAME_LOG_MAX_BYTES = 64 * 1024 * 1024
_EVENT_FILTERS = ("engine", "kind", "task_id")
_STOP = object()


def _positive(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"LocalBrain({name}=...) must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"LocalBrain({name}={value!r}) is out of range: use a value {bound}")
    return value


class LocalBrain:
    """The server side of protocol.md: WebSocket ``/ws/agent``, storage, commands, fault knobs."""

    def __init__(
        self,
        db_path: str | Path = ":memory:",
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval: int = 10,
        max_frame_size: int = DEFAULT_MAX_FRAME_BYTES,
        idle_timeout: float = 90.0,
        command_timeout: float = 60.0,
        master_secret: str | None = None,
        *,
        strict_verify: bool = False,
        ssl_context: Any = None,
    ) -> None:
        self.host = host
        # An ssl.SSLContext with the server certificate makes the brain speak wss:// / https://.
        self.ssl_context = ssl_context
        self.strict_verify = bool(strict_verify)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"LocalBrain(port={port!r}) must be an int in 0..65535 (0 picks a free port)")
        self._port = port
        self.heartbeat_interval = int(_positive("heartbeat_interval", heartbeat_interval, low=1, high=3600))
        self.max_frame_size = int(_positive("max_frame_size", max_frame_size, low=MIN_FRAME_SIZE, high=MAX_FRAME_SIZE))
        self.idle_timeout = float(_positive("idle_timeout", idle_timeout, low=0.05))
        self.command_timeout = float(_positive("command_timeout", command_timeout, low=0.05))
        if master_secret is not None and (not isinstance(master_secret, str) or not master_secret):
            raise ValueError("LocalBrain(master_secret=...) must be a non-empty string or None (random)")
        self._master = master_secret or secrets.token_urlsafe(32)
        self._store = BrainStore(db_path)
        self.faults = BrainFaults(self)
        self.close_codes: list[int] = []
        self.dropped_connections = 0

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._projects: dict[str, str] = {}
        self._agents: dict[str, AgentRow] = {}
        self._by_digest: dict[str, AgentRow] = {}
        self._commands: dict[str, MutableCommand] = {}
        self._sessions: dict[str, Session] = {}
        self._slots: dict[tuple[str, str | None], Session] = {}
        self._frames_in: deque[tuple] = deque()
        self._frames_in_bytes = 0
        self._frames_out: deque[tuple] = deque(maxlen=FRAME_LOG_MAX)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._operator_id = str(uuid.uuid4())

        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._server: Any = None
        self._closing = False
        self._live: set[ServerConnection] = set()
        self._background: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"LocalBrain(url={self.url if self._port else None!r}, state={state}, db={self._store.path!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalBrain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None

    @property
    def paused(self) -> bool:
        return self._loop is not None and self._server is None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("LocalBrain.url: the port is chosen at start(); call start() first or pass port=")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    def start(self) -> LocalBrain:
        """Start listening (idempotent). Returns self."""
        with self._lifecycle:
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run_loop, args=(loop,), name="z4j-local-brain", daemon=True)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="z4j-local-brain-store")
            self._loop, self._thread = loop, thread
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self._open_listener(), loop).result(10)
            except OSError as exc:
                self._shutdown_loop()
                raise OSError(
                    exc.errno, f"LocalBrain could not listen on {self.host}:{self._port} ({exc.strerror or exc}); "
                    "pass another port= (0 picks a free one) or stop the process using it"
                ) from exc
            except BaseException:
                self._shutdown_loop()
                raise
            log.info("brain.started", url=self.url, db=self._store.path)
            return self

    def stop(self) -> None:
        """Close every session (1001) and the listener, stop the thread (idempotent).

        Storage stays readable: ``events()``, ``tasks()`` and friends work after stop.
        """
        with self._lifecycle:
            if self._loop is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(
                    self._close_listener(CloseCode.GOING_AWAY, "brain shutting down"), self._loop
                ).result(15)
            except Exception:
                log.warning("brain.stop_unclean", exc_info=True)
            self._shutdown_loop()
            self._store.flush()  # the task projection reaches the file even if nobody read it
            log.info("brain.stopped")

    def close(self) -> None:
        """Stop and close the storage."""
        self.stop()
        self._store.close()

    def pause(self) -> None:
        """Behave like a brain that is down: sessions closed (1001), connections refused."""
        self._call(self._close_listener(CloseCode.GOING_AWAY, "brain paused"))

    def resume(self) -> None:
        """Listen again on the same port after ``pause()``."""
        self._call(self._open_listener())

    def restart(self) -> None:
        """``pause()`` then ``resume()``: same port, same storage, same agents and commands."""
        self.pause()
        self.resume()

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

    def _on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _call(self, coro: Any, timeout: float = 15.0) -> Any:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("LocalBrain is not running: call start() first")
        if self._on_loop_thread():
            self._spawn(coro)
            return None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _open_listener(self) -> None:
        if self._server is not None:
            return
        self._closing = False
        live = self._live

        class _TrackedConnection(ServerConnection):
            # Tracked from TCP accept so stop() can abort connections that never finish the upgrade.
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                live.add(self)

            def connection_lost(self, exc: Exception | None) -> None:
                live.discard(self)
                super().connection_lost(exc)

        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            create_connection=_TrackedConnection,
            process_request=self._process_request,
            ssl=self.ssl_context,
            max_size=None,  # oversize is judged per session so it can close 4400 like the real brain
            ping_interval=60,
            ping_timeout=60,
            open_timeout=None,
            close_timeout=5,
            compression=None,
            server_header=f"z4j-local-brain/{BRAIN_VERSION}",
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self, code: int, reason: str) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        self._closing = True
        server.close(close_connections=False)
        await self._close_sessions_async(code, reason, None)
        for conn in list(self._live):
            if conn.protocol.state is State.OPEN:
                await self._close_ws(conn, code, reason)
            else:
                conn.transport.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 10)
        except TimeoutError:
            for conn in list(self._live):
                conn.transport.abort()

    # -- agents --------------------------------------------------------------------------------

    def mint_agent(self, name: str = "agent-1", project: str = "default") -> AgentCredentials:
        """Create an agent like ``POST /projects/{slug}/agents``; the token is shown only here."""
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("mint_agent(name=...) must be a string of 1..64 characters")
        if not isinstance(project, str) or not 1 <= len(project) <= 63:
            raise ValueError("mint_agent(project=...) must be a project slug of 1..63 characters")
        brain_url = self.url
        with self._lock:
            project_uuid = self._projects.setdefault(project, str(uuid.uuid4()))
            key = derive_project_secret(self._master, project_uuid)
            token = secrets.token_urlsafe(32)
            row = AgentRow(
                agent_id=str(uuid.uuid4()), name=name, project_id=project, project_uuid=project_uuid,
                token_digest=token_digest(self._master, token), key=key,
            )
            self._agents[row.agent_id] = row
            self._by_digest[row.token_digest] = row
        log.info("brain.agent_minted", agent_id=row.agent_id, name=name, project=project)
        return AgentCredentials(
            brain_url=brain_url, token=token, hmac_secret=encode_hmac_secret(key), project_id=project,
            agent_id=row.agent_id, project_uuid=project_uuid, name=name,
        )

    def revoke_agent(self, agent_id: str) -> None:
        """Revoke the token; open sessions of the agent are closed with 4003."""
        with self._lock:
            row = self._agent_row(agent_id)
            row.revoked = True
            self._bump()
        if self.running:
            self._close_sessions(CloseCode.REVOKED, "agent revoked", agent_id)

    def agents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [row.as_dict() for row in self._agents.values()]

    def agent(self, agent_id: str) -> dict[str, Any]:
        with self._lock:
            return self._agent_row(agent_id).as_dict()

    def wait_for_agent_online(self, agent_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            for row in self.agents():
                if row["online"] and (agent_id is None or row["agent_id"] == agent_id):
                    return row
            return None

        def describe() -> str:
            who = f"agent {agent_id}" if agent_id else "any agent"
            return (
                f"timed out after {timeout:g} s waiting for {who} to complete a handshake; "
                f"agents: {[(a['name'], a['online'], a['sessions']) for a in self.agents()]}; "
                f"recent close codes: {self.close_codes[-5:]}; brain {'paused' if self.paused else 'listening'} at "
                f"{self.url if self._port else '(not started)'}"
            )

        return self._wait(ready, timeout, describe)

    def _agent_row(self, agent_id: str) -> AgentRow:
        row = self._agents.get(agent_id)
        if row is None:
            raise ValueError(f"unknown agent_id {agent_id!r}: use an id returned by mint_agent()")
        return row

    # -- events and tasks ----------------------------------------------------------------------

    def events(self, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> list[dict[str, Any]]:
        """Stored events in arrival order, ``data`` decoded."""
        return self._store.events(engine=engine, kind=kind, task_id=task_id)

    def event_count(self, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> int:
        return self._store.event_count(engine=engine, kind=kind, task_id=task_id)

    def wait_for_events(self, n: int, timeout: float = 10.0, **filters: Any) -> list[dict[str, Any]]:
        """Wait until at least ``n`` stored events match ``filters`` (engine, kind, task_id)."""
        unknown = set(filters) - set(_EVENT_FILTERS)
        if unknown:
            raise ValueError(f"wait_for_events: unknown filter(s) {sorted(unknown)}; use {list(_EVENT_FILTERS)}")

        def ready() -> list[dict[str, Any]] | None:
            return self._store.events(**filters) if self._store.event_count(**filters) >= n else None

        def describe() -> str:
            return (
                f"timed out after {timeout:g} s waiting for {n} events matching {filters or 'any'}: "
                f"have {self._store.event_count(**filters)}; stored by kind: {self._store.kind_counts()}; "
                f"agents online: {[a['name'] for a in self.agents() if a['online']]}; "
                f"recent close codes: {self.close_codes[-5:]}"
            )

        return self._wait(ready, timeout, describe)

    def task(self, engine: str, task_id: str) -> dict[str, Any] | None:
        """The projection row for one task (state, task_name, queue, worker, args, result, ...)."""
        return self._store.task(engine, task_id)

    def tasks(self, state: str | None = None, engine: str | None = None) -> list[dict[str, Any]]:
        return self._store.tasks(state=state, engine=engine)

    def wait_for_task_state(self, engine: str, task_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            row = self._store.task(engine, task_id)
            return row if row is not None and row["state"] == state else None

        def describe() -> str:
            row = self._store.task(engine, task_id)
            kinds = [e["kind"] for e in self._store.events(engine=engine, task_id=task_id)]
            current = row["state"] if row else "no row"
            return (
                f"timed out after {timeout:g} s waiting for task {engine}:{task_id} to reach {state}: "
                f"currently {current}; events for it: {kinds}"
            )

        return self._wait(ready, timeout, describe)

    # -- commands ------------------------------------------------------------------------------

    def send_command(
        self,
        action: str,
        parameters: dict[str, Any] | None = None,
        *,
        agent_id: str | None = None,
        target: dict[str, Any] | None = None,
        engine: str | None = None,
    ) -> str:
        """Queue a command for an agent and push it if the agent is connected; returns its id."""
        if not isinstance(action, str) or not 1 <= len(action) <= 80:
            raise ValueError("send_command(action=...) must be a string of 1..80 characters")
        params = dict(parameters or {})
        if engine is not None and "engine" not in params and action not in ("bulk_retry", "requeue_dead_letter"):
            params["engine"] = engine
        try:
            params = json.loads(json.dumps(params, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"send_command(parameters=...) must be JSON-serializable: {exc}") from None
        tgt = dict(target) if target is not None else _default_target(action, params, engine)
        now = time.time()
        with self._lock:
            row = self._resolve_agent(agent_id)
            cmd = MutableCommand(
                id=str(uuid.uuid4()), action=action, agent_id=row.agent_id, parameters=params, target=tgt,
                created_at=now, deadline=now + self.command_timeout,
                timeout_seconds=max(1, min(3600, math.ceil(self.command_timeout))), issued_by=self._operator_id,
            )
            self._commands[cmd.id] = cmd
            self._bump()
        log.info("brain.command_created", command_id=cmd.id, action=action, agent_id=row.agent_id)
        if self.running:
            try:
                self._call(self._dispatch_pending(row.agent_id), timeout=5.0)
            except Exception:
                log.warning("brain.command_dispatch_failed", command_id=cmd.id, exc_info=True)
        return cmd.id

    def command(self, command_id: str) -> CommandRecord:
        with self._lock:
            cmd = self._commands.get(command_id)
            if cmd is None:
                raise KeyError(f"unknown command id {command_id!r}")
            if cmd.expire(time.time()):
                self._bump()
            return cmd.snapshot()

    def commands(self) -> list[CommandRecord]:
        with self._lock:
            return [self.command(cid) for cid in list(self._commands)]

    def wait_for_command(self, command_id: str, timeout: float = 30.0) -> CommandRecord:
        """Wait for completed / failed / timeout."""
        def ready() -> CommandRecord | None:
            rec = self.command(command_id)
            return rec if rec.terminal else None

        def describe() -> str:
            rec = self.command(command_id)
            with self._lock:
                withheld = self._commands[command_id].withheld_reason
            agent = self.agent(rec.agent_id)
            return (
                f"timed out after {timeout:g} s waiting for command {rec.action} ({command_id}) to finish: "
                f"status {rec.status}, acked {rec.acked}, deliveries {rec.deliveries}"
                + (f", withheld: {withheld}" if withheld else "")
                + f"; agent {agent['name']} online {agent['online']}"
            )

        return self._wait(ready, timeout, describe)

    def _resolve_agent(self, agent_id: str | None) -> AgentRow:
        if agent_id is not None:
            return self._agent_row(agent_id)
        usable = [a for a in self._agents.values() if not a.revoked]
        if len(usable) == 1:
            return usable[0]
        online = [a for a in usable if a.open_sessions]
        if len(online) == 1:
            return online[0]
        raise ValueError(
            f"send_command: {len(usable)} agents exist ({len(online)} online); pass agent_id= to choose one"
        )

    # -- wire-level introspection --------------------------------------------------------------

    def frames_received(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """The last 10,000 inbound frames (64 MiB cap), oldest first, including rejected ones."""
        with self._lock:
            entries = list(self._frames_in)
        return [_log_entry(e) for e in entries if type is None or _entry_type(e) == type]

    def frames_sent(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        with self._lock:
            entries = list(self._frames_out)
        return [_log_entry(e) for e in entries if type is None or _entry_type(e) == type]

    def add_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(record)`` on the brain's loop for each frame, stored event and close."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    # -- internals: waiting and notification ---------------------------------------------------

    def _bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _wait(self, ready: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
        if self._on_loop_thread():
            raise RuntimeError("LocalBrain wait_for_* cannot be called from a brain listener")
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._version
            result = ready()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(describe())
            with self._changed:
                if self._version == seen:
                    self._changed.wait(min(remaining, 0.25))

    def _emit(self, record: dict[str, Any]) -> None:
        for callback in list(self._listeners):
            try:
                callback(record)
            except Exception:
                log.warning("brain.listener_failed", exc_info=True)

    def _log_in(self, raw: bytes, ftype: str | None, frame_id: str | None, sess: Session | None,
                agent: AgentRow | None = None) -> None:
        agent = sess.agent if sess is not None else agent
        entry = (time.time(), ftype, frame_id, agent.agent_id if agent else None,
                 sess.session_id if sess else None, raw)
        with self._lock:
            self._frames_in.append(entry)
            self._frames_in_bytes += len(raw)
            while len(self._frames_in) > FRAME_LOG_MAX or (
                self._frames_in_bytes > FRAME_LOG_MAX_BYTES and len(self._frames_in) > 1
            ):
                self._frames_in_bytes -= len(self._frames_in.popleft()[5])
        if self._listeners:
            self._emit({"at": entry[0], "direction": "in", "type": ftype, "id": frame_id,
                        "agent_id": entry[3], "agent": agent.name if agent else None})

    def _log_out(self, data: bytes, ftype: str, frame_id: str, sess: Session) -> None:
        with self._lock:
            self._frames_out.append((time.time(), ftype, frame_id, sess.agent.agent_id, sess.session_id, data))

    # -- internals: connections (brain loop) ---------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Any) -> Any:
        if urlsplit(request.path).path != "/ws/agent":
            return conn.respond(404, "z4j agents connect to /ws/agent\n")
        while self.faults.stall and not self._closing and conn.transport is not None and not conn.transport.is_closing():
            await asyncio.sleep(0.05)
        if self._closing:
            conn.transport.abort()
            return conn.respond(503, "brain is shutting down\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            await self._serve_connection(ws)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("brain.session_failed")
            await self._close_ws(ws, CloseCode.INTERNAL_ERROR, "internal error")

    async def _close_ws(self, ws: ServerConnection, code: int, reason: str) -> None:
        if ws.protocol.state is not State.OPEN:
            return
        with self._lock:
            self.close_codes.append(code)
            self._bump()
        if self._listeners:
            self._emit({"at": time.time(), "direction": "out", "type": "close", "code": code, "reason": reason})
        try:
            await ws.close(code, reason[:120])
        except Exception:
            ws.transport.abort()

    async def _close_session(self, sess: Session, code: int, reason: str) -> None:
        sess.closing = True
        log.info("brain.session_closing", agent_id=sess.agent.agent_id, session_id=sess.session_id, code=code)
        await self._close_ws(sess.ws, code, reason)

    async def _close_sessions_async(self, code: int, reason: str, agent_id: str | None) -> int:
        targets = [s for s in list(self._sessions.values()) if agent_id is None or s.agent.agent_id == agent_id]
        await asyncio.gather(*(self._close_session(s, code, reason) for s in targets))
        return len(targets)

    def _close_sessions(self, code: int, reason: str, agent_id: str | None) -> int:
        return self._call(self._close_sessions_async(code, reason, agent_id)) or 0

    async def _recv(self, ws: ServerConnection) -> bytes | None:
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await ws.recv(decode=False)
        except TimeoutError:
            await self._close_ws(ws, CloseCode.IDLE_TIMEOUT, "idle timeout")
            return None

    def _authenticate(self, header: str | None) -> AgentRow | None:
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            row = self._by_digest.get(token_digest(self._master, token))
        return None if row is None or row.revoked else row

    async def _serve_connection(self, ws: ServerConnection) -> None:
        code = self.faults._take_reject()
        if code is not None:
            await self._close_ws(ws, code, "rejected by fault knob")
            return
        agent = self._authenticate(ws.request.headers.get("Authorization"))
        if agent is None:
            await self._close_ws(ws, CloseCode.UNAUTHORIZED, "invalid bearer token")
            return
        raw = await self._recv(ws)
        if raw is None:
            return
        max_frame = self.faults.advertise_max_frame_size or self.max_frame_size
        if len(raw) > max_frame:
            self._log_in(raw, None, None, None, agent)
            await self._close_ws(ws, CloseCode.BAD_FRAME, "frame too large")
            return
        try:
            frame = parse_frame(raw)
        except ProtocolError:
            self._log_in(raw, None, None, None, agent)
            await self._close_ws(ws, CloseCode.BAD_FRAME, "first frame must be hello")
            return
        self._log_in(raw, frame.type.value, frame.id, None, agent)
        if frame.type is not FrameType.HELLO:
            await self._close_ws(ws, CloseCode.BAD_FRAME, "first frame must be hello")
            return
        hello = frame.payload
        if hello.get("protocol_version") != PROTOCOL_VERSION_TEXT:
            await self._close_ws(ws, CloseCode.UPGRADE_REQUIRED, "unsupported protocol_version")
            return
        if agent.revoked:
            await self._close_ws(ws, CloseCode.UNAUTHORIZED, "agent revoked")
            return
        with self._lock:
            agent.hello = hello
            agent.last_seen_at = time.time()
            self._bump()
        while self.faults.stall_hello_ack and not self._closing and ws.protocol.state is State.OPEN:
            await asyncio.sleep(0.05)
        if ws.protocol.state is not State.OPEN or self._closing:
            return
        sess = Session(ws, agent, hello, self.faults.advertise_max_frame_size or self.max_frame_size,
                       strict=self.strict_verify, on_send=self._log_out)
        ack_id = "hack_" + uuid.UUID(sess.session_id).hex[:12]
        ack = wire.unsigned(FrameType.HELLO_ACK.value, ack_id, {
            "protocol_version": hello["protocol_version"],
            "brain_version": BRAIN_VERSION,
            "agent_id": agent.agent_id,
            "project_id": agent.project_uuid,
            "session_id": sess.session_id,
            "heartbeat_interval_seconds": self.heartbeat_interval,
            "max_frame_size_bytes": sess.max_frame_size,
        }, ts=utc_now_text())
        await sess.send_raw(ack, FrameType.HELLO_ACK.value, ack_id)
        with self._lock:
            displaced = self._slots.get(sess.slot)
            self._slots[sess.slot] = sess
            self._sessions[sess.session_id] = sess
            agent.open_sessions.add(sess.session_id)
            agent.sessions += 1
            self._bump()
        log.info("brain.session_opened", agent_id=agent.agent_id, session_id=sess.session_id,
                 worker_id=sess.worker_id, engines=hello.get("engines"))
        try:
            if displaced is not None and displaced is not sess:
                await self._close_session(displaced, CloseCode.DISPLACED, "displaced by a newer connection")
            if agent.revoked:
                await self._close_session(sess, CloseCode.REVOKED, "agent revoked")
                return
            await self._dispatch_pending(agent.agent_id)
            await self._receive_loop(sess)
        finally:
            with self._lock:
                self._sessions.pop(sess.session_id, None)
                if self._slots.get(sess.slot) is sess:
                    del self._slots[sess.slot]
                agent.open_sessions.discard(sess.session_id)
                self._bump()
            log.info("brain.session_closed", agent_id=agent.agent_id, session_id=sess.session_id,
                     close_code=ws.close_code)

    async def _receive_loop(self, sess: Session) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(INGEST_QUEUE_FRAMES)
        backlog = _IngestBacklog()
        self._spawn(self._ingest_worker(sess, queue, backlog))
        try:
            while True:
                raw = await self._recv(sess.ws)
                if raw is None:
                    return
                if self.faults._take_drop():
                    self._log_in(raw, None, None, sess)
                    self.dropped_connections += 1
                    log.info("brain.connection_dropped", agent_id=sess.agent.agent_id, session_id=sess.session_id)
                    sess.ws.transport.abort()
                    return
                if len(raw) > sess.max_frame_size:
                    self._log_in(raw, None, None, sess)
                    await self._close_session(sess, CloseCode.BAD_FRAME, "frame too large")
                    return
                try:
                    frame, events_text = sess.verifier.verify(raw)
                except SignatureError as exc:
                    self._log_in(raw, None, None, sess)
                    log.warning("brain.frame_rejected", agent_id=sess.agent.agent_id, reason=str(exc), code=4403)
                    await self._close_session(sess, CloseCode.FORBIDDEN, "signature or replay check failed")
                    return
                except ProtocolError as exc:
                    self._log_in(raw, None, None, sess)
                    log.warning("brain.frame_rejected", agent_id=sess.agent.agent_id, reason=str(exc), code=4400)
                    await self._close_session(sess, CloseCode.BAD_FRAME, "malformed frame")
                    return
                self._log_in(raw, frame.type.value, frame.id, sess)
                sess.agent.last_seen_at = time.time()
                if frame.type is FrameType.EVENT_BATCH:
                    if not isinstance(frame.payload.get("events"), list):
                        await self._close_session(sess, CloseCode.BAD_FRAME, "event_batch.events must be a list")
                        return
                    await backlog.reserve(len(frame.payload["events"]))
                    await queue.put((frame, events_text))
                else:
                    self._handle_control(sess, frame)
        finally:
            try:
                queue.put_nowait(_STOP)
            except asyncio.QueueFull:
                self._spawn(queue.put(_STOP))

    async def _ingest_worker(self, sess: Session, queue: asyncio.Queue[Any], backlog: _IngestBacklog) -> None:
        loop = asyncio.get_running_loop()
        agent = sess.agent
        while True:
            item = await queue.get()
            if item is _STOP:
                return
            frame, events_text = item
            events = frame.payload["events"]
            try:
                accepted, summaries = await loop.run_in_executor(self._pool, partial(
                    self._ingest, events, events_text, frame_id=frame.id, project_id=agent.project_uuid,
                    agent_id=agent.agent_id, summaries=bool(self._listeners),
                ))
            except Exception:
                # Like the real brain on a transient DB failure: no ack, the agent resends.
                log.exception("brain.ingest_failed", agent_id=agent.agent_id, frame_id=frame.id)
                continue
            finally:
                backlog.release(len(events))
            self._bump()
            if self._listeners:
                now = time.time()
                for s in summaries:
                    self._emit({"at": now, "direction": "in", "type": "event", "agent_id": agent.agent_id,
                                "agent": agent.name, **s})
            payload = {"acked_id": frame.id, "received": len(events), "accepted": accepted,
                       "rejected": len(events) - accepted}
            if self.faults.withhold_acks:
                continue
            delay = self.faults.ack_delay
            if delay and delay > 0:
                loop.call_later(delay, lambda p=payload: self._spawn(self._send_ack(sess, p)))
            else:
                await self._send_ack(sess, payload)

    def _ingest(self, events: list[Any], events_text: bytes | None, **kwargs: Any) -> tuple[int, list[dict[str, Any]]]:
        if events_text is None:  # not the fast layout: any faithful JSON text of the events will do
            events_text = json.dumps(events, ensure_ascii=False).encode("utf-8")
        return self._store.ingest(events, events_text, **kwargs)

    async def _send_ack(self, sess: Session, payload: dict[str, Any]) -> None:
        frame_id = ("eba_" + payload["acked_id"])[:64]
        try:
            await sess.send_signed(FrameType.EVENT_BATCH_ACK.value, frame_id, payload)
        except ConnectionClosed:
            return

    def _handle_control(self, sess: Session, frame: Any) -> None:
        agent = sess.agent
        payload = frame.payload
        now = time.time()
        with self._lock:
            if frame.type is FrameType.HEARTBEAT:
                agent.last_heartbeat = payload
                agent.heartbeats += 1
            elif frame.type is FrameType.AGENT_STATUS:
                agent.last_agent_status = payload
                agent.agent_statuses += 1
            elif frame.type is FrameType.COMMAND_ACK:
                cmd = self._commands.get(frame.id)
                if cmd is not None and cmd.agent_id == agent.agent_id:
                    cmd.expire(now)
                    cmd.acked = True
                    cmd.ack_payload = payload
            elif frame.type is FrameType.COMMAND_RESULT:
                self._record_result(agent, frame.id, payload, now)
            else:
                log.debug("brain.frame_ignored", type=frame.type.value, agent_id=agent.agent_id)
            self._bump()

    def _record_result(self, agent: AgentRow, command_id: str, payload: dict[str, Any], now: float) -> None:
        try:
            uuid.UUID(command_id)
        except ValueError:
            return
        cmd = self._commands.get(command_id)
        if cmd is None or cmd.agent_id != agent.agent_id:
            return
        cmd.expire(now)
        if cmd.status not in (PENDING, DISPATCHED):
            return
        cmd.status = COMPLETED if payload.get("status") == "success" else FAILED
        result = payload.get("result")
        cmd.result = result if isinstance(result, dict) else None
        error = payload.get("error")
        cmd.error = error if isinstance(error, str) else None
        cmd.result_payload = payload
        cmd.completed_at = now
        log.info("brain.command_finished", command_id=cmd.id, action=cmd.action, status=cmd.status)

    # -- internals: command delivery (brain loop) ----------------------------------------------

    def _pick_session(self, cmd: MutableCommand) -> Session | None:
        candidates = sorted(
            (s for s in self._sessions.values() if s.agent.agent_id == cmd.agent_id and not s.closing),
            key=lambda s: s.opened_at, reverse=True,
        )
        if cmd.action in RETRY_FAMILY:
            engine = cmd.target.get("engine") or cmd.parameters.get("engine")
            if engine:
                capable = [s for s in candidates if "retry_by_reference_v1" in s.capabilities_for(engine)]
                if candidates and not capable:
                    cmd.withheld_reason = f"no session advertises retry_by_reference_v1 for engine {engine!r}"
                candidates = capable
        return candidates[0] if candidates else None

    def _deliverable(self, cmd: MutableCommand) -> bool:
        if cmd.status == PENDING:
            return True
        # Re-drive only what the real brain re-drives, and only once its session is gone.
        return (
            cmd.status == DISPATCHED and cmd.action in REDELIVERABLE_ACTIONS
            and cmd.dispatched_session not in self._sessions
        )

    async def _dispatch_pending(self, agent_id: str) -> None:
        now = time.time()
        with self._lock:
            queued = [c for c in self._commands.values() if c.agent_id == agent_id][:PENDING_DRAIN_LIMIT * 4]
        sent = 0
        for cmd in queued:
            if sent >= PENDING_DRAIN_LIMIT:
                break
            with self._lock:
                cmd.expire(now)
                if not self._deliverable(cmd):
                    continue
                sess = self._pick_session(cmd)
                if sess is None:
                    continue
                cmd.status = DISPATCHED
                cmd.dispatched_at = time.time()
                cmd.deliveries += 1
                cmd.delivery_claim_token = secrets.token_hex(16)
                cmd.dispatched_session = sess.session_id
                cmd.withheld_reason = None
                payload = {
                    "action": cmd.action, "target": cmd.target, "parameters": cmd.parameters,
                    "timeout_seconds": cmd.timeout_seconds, "issued_by": cmd.issued_by,
                    "delivery_claim_token": cmd.delivery_claim_token,
                }
                self._bump()
            try:
                await sess.send_signed(FrameType.COMMAND.value, cmd.id, payload)
            except ConnectionClosed:
                with self._lock:
                    if cmd.status == DISPATCHED and cmd.dispatched_session == sess.session_id:
                        cmd.status = PENDING
                        cmd.dispatched_session = None
                continue
            sent += 1
            log.info("brain.command_dispatched", command_id=cmd.id, action=cmd.action, session_id=sess.session_id)

    # -- internals: fault frames (brain loop) --------------------------------------------------

    def _send_fault_frames(self, kind: str, agent_id: str | None, options: dict[str, Any]) -> int:
        return self._call(self._send_faults_async(kind, agent_id, options)) or 0

    async def _send_faults_async(self, kind: str, agent_id: str | None, options: dict[str, Any]) -> int:
        count = 0
        for sess in list(self._sessions.values()):
            if agent_id is not None and sess.agent.agent_id != agent_id:
                continue
            try:
                await self._send_fault(sess, kind, options)
                count += 1
            except ConnectionClosed:
                pass
        return count

    async def _send_fault(self, sess: Session, kind: str, options: dict[str, Any]) -> None:
        ack_type = FrameType.EVENT_BATCH_ACK.value
        fid = "eba_ev_fault_" + secrets.token_hex(8)
        if kind == "tampered":
            await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), tamper=True)
        elif kind == "replayed":
            if sess.last_sent is None:
                await sess.send_signed(ack_type, fid, wire.harmless_ack_payload())
            await sess.send_raw(sess.last_sent, "replayed", fid)
        elif kind == "stale":
            ts = wire.past_ts(float(options.get("skew", 120.0)))
            await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), ts=ts)
        elif kind == "v3":
            await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), v=3)
        elif kind == "oversized":
            size = int(options.get("size", DEFAULT_MAX_FRAME_BYTES + 1024))
            payload = {**wire.harmless_ack_payload(), "padding": "x" * size}
            await sess.send_signed(ack_type, fid, payload)
        elif kind in ("error_fatal", "error"):
            fid = "err_fault_" + secrets.token_hex(8)
            payload = {
                "code": options.get("code", "scheduler_upgrade_required"),
                "message": options.get("message", "error frame sent by the local brain's fault knob"),
                "fatal": kind == "error_fatal",
            }
            await sess.send_signed(FrameType.ERROR.value, fid, payload)
        else:  # unsigned_command
            fid = str(uuid.uuid4())
            data = wire.unsigned(FrameType.COMMAND.value, fid, wire.fake_command_payload(), ts=utc_now_text())
            await sess.send_raw(data, FrameType.COMMAND.value, fid)
        log.info("brain.fault_frame_sent", kind=kind, agent_id=sess.agent.agent_id, session_id=sess.session_id)


class _IngestBacklog:
    """How many events of one session are parsed and waiting for (or in) storage (brain loop only)."""

    __slots__ = ("events", "_room")

    def __init__(self) -> None:
        self.events = 0
        self._room = asyncio.Event()

    async def reserve(self, n: int) -> None:
        while self.events and self.events + n > INGEST_QUEUE_EVENTS:
            self._room.clear()
            await self._room.wait()
        self.events += n

    def release(self, n: int) -> None:
        self.events -= n
        self._room.set()


def _default_target(action: str, params: dict[str, Any], engine: str | None) -> dict[str, Any]:
    """The target the real brain attaches for this action (protocol.md section 6.2)."""
    flt = params.get("filter") if isinstance(params.get("filter"), dict) else None
    eng = (flt or {}).get("engine") or params.get("engine") or engine
    if action == "bulk_retry" or flt is not None:
        target: dict[str, Any] = {"type": "bulk", "id": None}
    elif action == "rate_limit":
        target = {"type": "task", "id": params.get("task_name")}
    elif "task_id" in params:
        target = {"type": "task", "id": f"{eng}:{params['task_id']}"}
    elif "worker_name" in params:
        target = {"type": "worker", "id": params["worker_name"]}
    elif "queue" in params and action == "purge_queue":
        target = {"type": "queue", "id": params["queue"]}
    elif "schedule_id" in params:
        target = {"type": "schedule", "id": params["schedule_id"]}
    elif "scheduler" in params:
        target = {"type": "scheduler", "id": params["scheduler"]}
    else:
        target = {"type": "project", "id": None}
    if eng:
        target["engine"] = eng
    if params.get("scheduler"):
        target["scheduler"] = params["scheduler"]
    return target


def _entry_type(entry: tuple) -> str | None:
    if entry[1] is not None:
        return entry[1]
    try:
        obj = json.loads(entry[5])
    except (ValueError, UnicodeDecodeError):
        return None
    return obj.get("type") if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None


def _log_entry(entry: tuple) -> dict[str, Any]:
    at, ftype, frame_id, agent_id, session_id, raw = entry
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        frame = None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {
        "at": at, "type": ftype or _entry_type(entry), "id": frame_id, "agent_id": agent_id,
        "session_id": session_id, "size": len(raw), "frame": frame, "text": text,
        "accepted": ftype is not None,
    }
