"""LocalBrain: a small, protocol-faithful z4j brain on 127.0.0.1 for tests, demos and trials.

This class is the public test API; the work is done by its pieces (see docs/architecture.md):
``server`` (loop thread, port, HTTP router), ``AgentSocket`` (the ``/ws/agent`` endpoint),
``hub`` (open sessions), ``frames`` (inbound frame table), ``ingest`` (event batches),
``delivery`` (commands), ``registry`` (agents) and ``faults``.

Threads: the websockets asyncio server runs on its own event loop in a daemon thread
(``z4j-local-brain``); SQLite writes run on one storage thread so verifying the next frame
overlaps storing the previous one. The public methods are thread-safe and may be called from
any thread except the brain's own loop (listeners run there: keep them quick).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..logs import get_logger
from ..protocol import DEFAULT_MAX_FRAME_BYTES, CloseCode, FrameType
from .agents import AgentRegistry
from .changes import Changes
from .delivery import CommandDelivery
from .dispatch import FrameDispatch
from .faults import BrainFaults
from .framelog import FrameLog, Listeners
from .lanes import BatchIngest
from .longpoll import LongPollEndpoint
from .records import AgentCredentials, CommandRecord
from .schedule_desk import ScheduleDesk
from .server import BrainServer
from .sessions import SessionHub
from .settings import BrainSettings
from .store import BrainStore
from .wsagent import BRAIN_VERSION, AgentSocket

log = get_logger(__name__)

_EVENT_FILTERS = ("engine", "kind", "task_id")


def _setting(name: str) -> Any:
    return property(lambda self: getattr(self.settings, name), lambda self, value: setattr(self.settings, name, value))


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
        clock_offset: float = 0.0,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"LocalBrain(port={port!r}) must be an int in 0..65535 (0 picks a free port)")
        self.settings = BrainSettings.checked(
            heartbeat_interval=heartbeat_interval, max_frame_size=max_frame_size, idle_timeout=idle_timeout,
            command_timeout=command_timeout, strict_verify=strict_verify, clock_offset=clock_offset,
        )
        if master_secret is not None and (not isinstance(master_secret, str) or not master_secret):
            raise ValueError("LocalBrain(master_secret=...) must be a non-empty string or None (random)")
        self._store = BrainStore(db_path)
        self.changes = Changes()
        self.listeners = Listeners()
        self.frame_log = FrameLog(self.listeners)
        # An ssl.SSLContext with the server certificate makes the brain speak wss:// / https://.
        self.server = BrainServer(host, port, ssl_context=ssl_context, server_header=f"z4j-local-brain/{BRAIN_VERSION}",
                                  idle_timeout=lambda: self.settings.idle_timeout, clock=self.settings.now)
        self.registry = AgentRegistry(self.changes, master_secret or secrets.token_urlsafe(32))
        self.hub = SessionHub(self.changes, self.listeners)
        self.faults = BrainFaults(self._store, self.hub, self.server)
        self.delivery = CommandDelivery(self.changes, self.registry, self.hub, self.settings)
        self.ingest = BatchIngest(self._store, self.server, self.changes, self.listeners, self.faults)
        self.frames = FrameDispatch()
        self.frames.add(FrameType.EVENT_BATCH, self.ingest.on_event_batch)
        self.frames.add(FrameType.HEARTBEAT, self.registry.on_heartbeat)
        self.frames.add(FrameType.AGENT_STATUS, self.registry.on_agent_status)
        self.frames.add(FrameType.COMMAND_ACK, self.delivery.on_ack)
        self.frames.add(FrameType.COMMAND_RESULT, self.delivery.on_result)
        self.schedules = ScheduleDesk(self)  # the Schedules page: activation, snapshots, control, mutation
        self.socket = AgentSocket(
            settings=self.settings, server=self.server, agents=self.registry, hub=self.hub, frames=self.frames,
            ingest=self.ingest, commands=self.delivery, faults=self.faults, frame_log=self.frame_log,
        )
        # HTTPS long-poll (GET /api/v1/agent/commands, POST /api/v1/agent/events) on the same port.
        self.longpoll = LongPollEndpoint(
            settings=self.settings, server=self.server, agents=self.registry, hub=self.hub, frames=self.frames,
            ingest=self.ingest, commands=self.delivery, faults=self.faults, frame_log=self.frame_log,
        )
        self.server.add_close_hook(lambda code, reason: self.hub.close_matching(code, reason))

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"LocalBrain(url={self.url if self.port else None!r}, state={state}, db={self._store.path!r})"

    # -- settings (read by the pieces per connection or frame) ---------------------------------

    host = property(lambda self: self.server.host)
    ssl_context = property(lambda self: self.server.ssl_context)
    heartbeat_interval = _setting("heartbeat_interval")
    max_frame_size = _setting("max_frame_size")
    idle_timeout = _setting("idle_timeout")
    command_timeout = _setting("command_timeout")
    strict_verify = _setting("strict_verify")
    clock_offset = _setting("clock_offset")  # seconds ahead of the host (negative: behind)

    @property
    def close_codes(self) -> list[int]:
        return self.hub.close_codes

    @property
    def dropped_connections(self) -> int:
        return self.socket.dropped_connections

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> LocalBrain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.server.running

    @property
    def paused(self) -> bool:
        return self.server.paused

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("LocalBrain.url: the port is chosen at start(); call start() first or pass port=")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> LocalBrain:
        """Start listening (idempotent). Returns self."""
        if not self.server.running:
            self.server.start()
            log.info("brain.started", url=self.url, db=self._store.path)
        return self

    def stop(self) -> None:
        """Close every session (1001) and the listener, stop the thread (idempotent).

        Storage stays readable: ``events()``, ``tasks()`` and friends work after stop.
        """
        if self.server.stop(CloseCode.GOING_AWAY, "brain shutting down"):
            self._store.flush()  # the task projection reaches the file even if nobody read it
            log.info("brain.stopped")

    def close(self) -> None:
        """Stop and close the storage."""
        self.stop()
        self._store.close()

    def pause(self) -> None:
        """Behave like a brain that is down: sessions closed (1001), connections refused."""
        self.server.call(self.server.close_listener(CloseCode.GOING_AWAY, "brain paused"))

    def resume(self) -> None:
        """Listen again on the same port after ``pause()``."""
        self.server.call(self.server.open_listener())

    def restart(self) -> None:
        """``pause()`` then ``resume()``: same port, same storage, same agents and commands."""
        self.pause()
        self.resume()

    # -- agents --------------------------------------------------------------------------------

    def mint_agent(self, name: str = "agent-1", project: str = "default") -> AgentCredentials:
        """Create an agent like ``POST /projects/{slug}/agents``; the token is shown only here."""
        return self.registry.mint(name, project, self.url)

    def revoke_agent(self, agent_id: str) -> None:
        """Revoke the token; open sessions of the agent are closed with 4003."""
        self.registry.revoke(agent_id)
        if self.running:
            self.server.call(self.hub.close_matching(CloseCode.REVOKED, "agent revoked", agent_id))

    def agents(self) -> list[dict[str, Any]]:
        with self.changes.lock:
            return [row.as_dict() for row in self.registry.rows()]

    def agent(self, agent_id: str) -> dict[str, Any]:
        with self.changes.lock:
            return self.registry.get(agent_id).as_dict()

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
                f"{self.url if self.port else '(not started)'}"
            )

        return self.wait_until(ready, timeout, describe)

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

        return self.wait_until(ready, timeout, describe)

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

        return self.wait_until(ready, timeout, describe)

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
        cmd = self.delivery.create(action, parameters, agent_id=agent_id, target=target, engine=engine)
        if self.running:
            try:
                self.server.call(self.delivery.dispatch_pending(cmd.agent_id), timeout=5.0)
            except Exception:
                log.warning("brain.command_dispatch_failed", command_id=cmd.id, exc_info=True)
        return cmd.id

    def command(self, command_id: str) -> CommandRecord:
        return self.delivery.record(command_id)

    def commands(self) -> list[CommandRecord]:
        return self.delivery.records()

    def wait_for_command(self, command_id: str, timeout: float = 30.0) -> CommandRecord:
        """Wait for completed / failed / timeout."""
        def ready() -> CommandRecord | None:
            rec = self.command(command_id)
            return rec if rec.terminal else None

        def describe() -> str:
            rec = self.command(command_id)
            withheld = self.delivery.withheld_reason(command_id)
            agent = self.agent(rec.agent_id)
            return (
                f"timed out after {timeout:g} s waiting for command {rec.action} ({command_id}) to finish: "
                f"status {rec.status}, acked {rec.acked}, deliveries {rec.deliveries}"
                + (f", withheld: {withheld}" if withheld else "")
                + f"; agent {agent['name']} online {agent['online']}"
            )

        return self.wait_until(ready, timeout, describe)

    # -- wire-level introspection --------------------------------------------------------------

    def frames_received(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        """The last 10,000 inbound frames (64 MiB cap), oldest first, including rejected ones."""
        return self.frame_log.received(type)

    def frames_sent(self, type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
        return self.frame_log.sent(type)

    def add_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call ``callback(record)`` on the brain's loop for each frame, stored event and close."""
        self.listeners.add(callback)

    def remove_listener(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.listeners.remove(callback)

    def wait_until(self, ready: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
        """``ready()``'s first true value, re-checked on every change the brain stores; TimeoutError
        (with ``describe()``) after ``timeout`` seconds. Not from a brain listener."""
        if self.server.on_loop_thread():
            raise RuntimeError("LocalBrain wait_for_* cannot be called from a brain listener")
        return self.changes.wait(ready, timeout, describe)
