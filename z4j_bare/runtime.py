"""AgentRuntime: one I/O thread owns the state machine and the WebSocket.

Host threads never touch the socket: their hooks append events to the durable buffer and
return. The I/O thread connects (tenacity drives reconnects, per-class backoff), performs the
hello/hello_ack handshake, then loops: send queued command acks/results, heartbeats, batches of
buffered events; read and verify inbound frames; resend batches the brain did not ack. Other
threads talk to it only through ``_requests`` and ``_stop_event``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenacity import RetryError, Retrying, retry_if_exception_type

from .backoff import Backoff, SessionEnded
from .commands import CommandChannel, control_row
from .engines.base import EngineAdapter, EventSink
from .framework import BareFrameworkAdapter
from .health import HealthCollector
from .logs import get_logger
from .outbox import Outbox
from .protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION_TEXT,
    BackoffClass,
    FrameType,
    ProtocolError,
    SessionBinding,
    Signer,
    Verifier,
    classify_error_frame,
    encode_unsigned,
    new_frame_id,
    parse_frame,
    utc_now_text,
)
from .safety import safe_call
from .statechart import RuntimeState, machine_transitions
from .transport import Connection, TlsSettings, TransportError

if TYPE_CHECKING:
    from .buffer import BufferStore
    from .config import Config
    from .redaction import Redactor

log = get_logger(__name__)

#: What the brain compares for version skew: the z4j core protocol level this agent implements.
COMPAT_AGENT_VERSION = "1.13.0"
IDLE_POLL_SECONDS = 0.05
PING_EVERY_SECONDS = 30.0
# A sibling agent of this deployment that died leaves its buffer file; look for such orphans.
ADOPT_EVERY_SECONDS = 60.0
INGEST_WHILE_AWAY_SECONDS = 1.0
TRACE_LEN = 64


def _session_end(exc: BaseException, phase: str) -> SessionEnded:
    if isinstance(exc, SessionEnded):
        return exc
    if isinstance(exc, (TransportError, ProtocolError, TimeoutError)):
        return SessionEnded(getattr(exc, "backoff", BackoffClass.CONNECTION), f"{phase} failed: {exc}")
    log.error("runtime.unexpected_error", phase=phase, error_type=type(exc).__name__)
    return SessionEnded(BackoffClass.PROTOCOL, f"{phase} failed: unexpected {type(exc).__name__}")


_FAILURE_WHAT = {
    BackoffClass.CONNECTION: "lost the session with the brain at {url}",
    BackoffClass.AUTH: "the brain at {url} refused this agent's credentials (check Z4J_TOKEN and "
                       "Z4J_HMAC_SECRET; `z4j-bare doctor` says which)",
    BackoffClass.INCOMPATIBLE: "the brain at {url} does not accept this agent's protocol version",
    BackoffClass.PROTOCOL: "the session with the brain at {url} broke",
}


def _failure_summary(cls: BackoffClass, reason: str, url: str, retry_in: float) -> str:
    """The sentence a person reads in the host's log: what is wrong and when the agent retries."""
    if cls is BackoffClass.CONNECTION and reason.startswith("connect failed"):
        what = f"cannot reach the brain at {url}"
    else:
        what = _FAILURE_WHAT.get(cls, "the session with the brain at {url} ended").format(url=url)
    return (f"{what}; retrying in {retry_in:g} s (events wait in the local buffer; repeats are logged "
            "below WARNING until a session opens)")


def _wall(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _MachineModel:
    """The object ``transitions`` drives; only the I/O thread fires its triggers."""

    state: RuntimeState


class AgentRuntime:
    def __init__(
        self,
        *,
        config: Config,
        engines: Sequence[EngineAdapter],
        buffer: BufferStore,
        redactor: Redactor,
        framework: BareFrameworkAdapter | None = None,
        schedulers: Sequence[Any] | None = None,
    ) -> None:
        from transitions import Machine

        names = [e.name for e in engines]
        if (not engines and not schedulers) or len(set(names)) != len(names) or not all(names):
            raise ValueError("install_agent needs at least one engine or scheduler adapter, engines each with a "
                             f"distinct name (got engines {names}, schedulers {len(schedulers or [])})")
        self.config = config
        self.engines: dict[str, EngineAdapter] = {e.name: e for e in engines}
        self.buffer = buffer
        self.redactor = redactor
        self.framework = framework or BareFrameworkAdapter()
        self._key = config.key
        self._owner_pid = os.getpid()
        self._started_wall = time.time()
        self.worker_id = f"{self.framework.name}-{self._owner_pid}-{int(self._started_wall * 1000)}"
        self.sinks = {name: EventSink(name, buffer, redactor) for name in self.engines}

        self._fsm = _MachineModel()
        Machine(
            model=self._fsm, states=list(RuntimeState), transitions=machine_transitions(), initial=RuntimeState.INIT,
            auto_transitions=False, send_event=True, after_state_change=self._on_transition,
        )
        self._entered_at = time.monotonic()
        self._trace: deque[dict[str, Any]] = deque(maxlen=TRACE_LEN)
        self._trace_lock = threading.Lock()

        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self._controls: deque[tuple[str, str, dict]] = deque()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._stop_deadline = 0.0
        self._lifecycle_lock = threading.Lock()

        self._backoff = Backoff({
            BackoffClass.CONNECTION: config.backoff_max_connection,
            BackoffClass.PROTOCOL: config.backoff_max_protocol,
            BackoffClass.AUTH: config.backoff_max_auth,
            BackoffClass.INCOMPATIBLE: config.backoff_max_incompatible,
        })
        self.outbox = Outbox(buffer, max_batch_events=config.max_batch_events, max_inflight=config.max_inflight_frames,
                             resend_after=config.resend_after_seconds)
        self.commands = CommandChannel(
            self.engines, buffer, self._key, self._emit_control, workers=config.command_workers,
            timeout=config.command_timeout_seconds, dedupe_ttl=config.command_dedupe_ttl_seconds,
            purge_threshold=config.purge_threshold, orchestrated=config.orchestrated, redactor=redactor,
        )
        self.schedules = _schedule_channel(schedulers, buffer, redactor)
        if self.schedules is not None:
            self.commands.add_executor(self.schedules)
        self._health = HealthCollector(self.engines, interval=config.heartbeat_seconds)
        self._session: dict[str, Any] = {}
        self._last_connect_wall: float | None = None
        self._last_failure: str | None = None
        self._heartbeat_interval = float(config.heartbeat_seconds)

    def __repr__(self) -> str:
        return f"<AgentRuntime state={self.state} engines={sorted(self.engines)} brain={self.config.ws_url!r}>"

    # -- public API ----------------------------------------------------------------------------
    @property
    def state(self) -> RuntimeState:
        return self._fsm.state

    @property
    def trace(self) -> list[dict[str, Any]]:
        """Recent edges: source, dest, trigger, at (UTC), elapsed_ms in source."""
        with self._trace_lock:
            return list(self._trace)

    def start(self) -> AgentRuntime:
        with self._lifecycle_lock:
            if self._thread is not None:
                return self
            if os.getpid() != self._owner_pid:
                raise RuntimeError("this AgentRuntime was created in another process; call install_agent in this one")
            for name, adapter in self.engines.items():
                adapter.attach(self.sinks[name])
            safe_call(self.buffer.adopt_orphans, site="runtime.adopt_orphans")
            if self.schedules is not None:
                self.schedules.start()
            self._health.start()
            self._thread = threading.Thread(target=self._main, name="z4j-agent-io", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Drain within ``timeout`` seconds, close cleanly, join. Idempotent; True if fully drained."""
        timeout = self.config.stop_timeout if timeout is None else max(0.0, timeout)
        if os.getpid() != self._owner_pid:
            return False  # a forked child never owns the connection
        deadline = time.monotonic() + timeout
        with self._lifecycle_lock:
            thread = self._thread
            first = not self._stop_event.is_set()
            if first:
                for adapter in self.engines.values():
                    safe_call(adapter.flush, site="runtime.flush_adapter")
                self._stop_deadline = deadline - min(0.5, timeout * 0.2)
                self._stop_event.set()
                self._requests.put("stop")
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic() - 0.05))
            if thread.is_alive():
                conn = self._conn
                if conn is not None:
                    conn.abort()
                thread.join(max(0.0, deadline - time.monotonic()))
        elif first and self.state is not RuntimeState.STOPPED:
            self._fsm.trigger("stop")  # never started: INIT -> STOPPED
        if first:
            for adapter in self.engines.values():
                safe_call(adapter.detach, site="runtime.detach")
            self._health.stop()
            self.commands.shutdown(wait=False)
            if self.schedules is not None:
                safe_call(self.schedules.stop, site="runtime.stop_schedules")
            safe_call(self.buffer.checkpoint, site="runtime.checkpoint")
        drained = self.buffer.depth() == 0
        if first:
            log.info("runtime.stopped", drained=drained, buffered=self.buffer.depth())
        return drained

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every buffered row has been delivered (events acked); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.buffer.depth() == 0 and self.outbox.idle and not self._controls:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def request_reconnect(self) -> None:
        self._requests.put("reconnect")

    def health(self) -> dict[str, Any]:
        """Liveness/readiness snapshot; cheap and safe from any thread."""
        session_age = time.monotonic() - self._session["since"] if self._session else None
        stats = self.outbox.stats
        return {
            "state": self.state.value,
            "alive": bool(self._thread and self._thread.is_alive()),
            "connected": self.state is RuntimeState.RUNNING,
            "ready": self.state is RuntimeState.RUNNING,
            "session_id": self._session.get("session_id"),
            "session_age_seconds": None if session_age is None else round(session_age, 3),
            "buffer_depth": self.buffer.depth(),
            "buffer_oldest_age_seconds": self.buffer.oldest_age(),
            "last_ack_at": _wall(stats.last_flush_wall),
            "events_sent": stats.events_sent,
            "events_acked": stats.events_acked,
            "resends": stats.resends,
            "inflight_frames": self.outbox.inflight,
            "failure_streaks": {cls.value: n for cls, n in self._backoff.streaks.items()},
            "last_failure": self._last_failure,
            "loss": self.buffer.telemetry_loss(),
            "events_lost_in_hooks": sum(s.lost for s in self.sinks.values()),
            "schedulers": self.schedules.health() if self.schedules is not None else {},
            "trace": self.trace[-10:],
        }

    # -- state machine plumbing ----------------------------------------------------------------
    def _on_transition(self, event: Any) -> None:
        now = time.monotonic()
        record = {
            "source": RuntimeState[event.transition.source].value,
            "dest": RuntimeState[event.transition.dest].value,
            "trigger": event.event.name,
            "at": utc_now_text(),
            "elapsed_ms": round((now - self._entered_at) * 1000, 2),
        }
        self._entered_at = now
        with self._trace_lock:
            self._trace.append(record)
        # A reconnect storm repeats CONNECTING -> CONNECTING: below INFO, like its repeated failures.
        (log.debug if record["source"] == record["dest"] else log.info)("runtime.transition", **record)

    # -- the I/O thread ------------------------------------------------------------------------
    def _main(self) -> None:
        self._fsm.trigger("start")
        retrying = Retrying(
            wait=self._backoff.wait,
            sleep=self._backoff_sleep,
            stop=lambda _state: self._stop_event.is_set(),
            retry=retry_if_exception_type(SessionEnded),
            before_sleep=self._log_failure,
        )
        try:
            retrying(self._session_attempt)
        except (RetryError, SessionEnded):
            pass
        except Exception as exc:  # noqa: BLE001 - the thread must end in STOPPED whatever happens
            log.error("runtime.crashed", error_type=type(exc).__name__)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self.state is RuntimeState.DRAINING:
                self._fsm.trigger("drained")
            elif self.state is not RuntimeState.STOPPED:
                self._fsm.trigger("stop")

    def _backoff_sleep(self, seconds: float) -> None:
        """Wait out a reconnect delay (stop() cuts it short). Meanwhile spooled events keep moving
        into the buffer, so its caps hold through a long outage and the reconnect starts sending
        at once."""
        deadline = time.monotonic() + seconds
        while not self._stop_event.is_set():
            safe_call(self.buffer.ingest, site="runtime.ingest")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop_event.wait(min(left, INGEST_WHILE_AWAY_SECONDS))

    def _log_failure(self, retry_state: Any) -> None:
        exc = retry_state.outcome.exception()
        self._last_failure = str(exc)
        cls = getattr(exc, "backoff", BackoffClass.CONNECTION)
        streak = self._backoff.streaks.get(cls, 0)
        level = "warning" if streak <= 1 else ("info" if streak % 10 == 0 else "debug")
        delay = round(self._backoff.last_delay, 2)
        getattr(log, level)("runtime.session_failed", summary=_failure_summary(cls, str(exc), self.config.ws_url, delay),
                            backoff_class=str(cls), reason=str(exc), retry_in_s=delay, streak=streak)

    def _session_attempt(self) -> None:
        """One connect + handshake + session. Every way it can end becomes a state edge; a failure
        also becomes SessionEnded, whose backoff class tenacity's wait reads."""
        if self._stop_event.is_set():
            return
        conn = Connection(self.config.ws_url, self.config.token.reveal(), timeout=self.config.connect_timeout,
                          tls=TlsSettings(self.config.tls_verify, self.config.ca_bundle))
        try:
            conn.open()
        except Exception as exc:  # noqa: BLE001 - whatever it is, try again later
            self._fsm.trigger("connect_failed")
            raise _session_end(exc, "connect") from None
        self._conn = conn
        self._fsm.trigger("connected")
        try:
            signer, verifier = self._handshake(conn)
        except Exception as exc:  # noqa: BLE001
            self._close_session(conn, 1000)
            if self._stop_event.is_set():
                return
            self._fsm.trigger("session_lost")
            raise _session_end(exc, "handshake") from None
        self._backoff.reset()
        self._last_connect_wall = time.time()
        self._fsm.trigger("handshake_ok")
        try:
            outcome = self._run(conn, signer, verifier)
        except Exception as exc:  # noqa: BLE001 - a bug or a full disk ends the session, not the agent
            self._close_session(conn, 1002)
            self._fsm.trigger("session_lost")
            raise _session_end(exc, "session") from None
        if outcome == "reconnect":
            self._close_session(conn, 1000)
            self._fsm.trigger("reconnect")
            raise SessionEnded(BackoffClass.CONNECTION, "reconnect requested", immediate=True)
        self._fsm.trigger("stop")
        try:
            self._drain(conn, signer, verifier)
        finally:
            self._close_session(conn, 1000)
            self._fsm.trigger("drained")

    def _close_session(self, conn: Connection, code: int) -> None:
        conn.close(code)
        self._conn = None
        self._session = {}
        if self.schedules is not None:
            self.schedules.session_closed()

    def _hello_payload(self) -> dict[str, Any]:
        caps = {name: adapter.advertised_capabilities() for name, adapter in self.engines.items()}
        features = ["retry_by_reference"] if any(a.safe_retry_by_reference for a in self.engines.values()) else []
        schedules = self.schedules.hello_fields() if self.schedules is not None else {}
        caps.update(schedules.get("capabilities", {}))
        features += schedules.get("runtime_features", [])
        return {
            "protocol_version": PROTOCOL_VERSION_TEXT,
            "agent_version": COMPAT_AGENT_VERSION,
            "framework": self.framework.name,
            "engines": list(self.engines),
            "schedulers": list(schedules.get("schedulers", [])),
            "capabilities": caps,
            "host": {"name": self.config.agent_name} if self.config.agent_name else {},
            "worker_id": self.worker_id,
            "worker_role": self.config.worker_role,
            "worker_pid": self._owner_pid,
            "worker_started_at": _wall(self._started_wall),
            "runtime_features": features,
        }

    def _handshake(self, conn: Connection) -> tuple[Signer, Verifier]:
        conn.send(encode_unsigned(FrameType.HELLO, new_frame_id("hello_", 16), self._hello_payload()))
        deadline = time.monotonic() + self.config.handshake_timeout
        data = None
        while data is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no hello_ack within {self.config.handshake_timeout:.0f} s")
            data = conn.recv(min(remaining, 0.25))
            if data is None and self._stop_event.is_set():
                raise TimeoutError("stopping during handshake")
        frame = parse_frame(data)
        if frame.type is not FrameType.HELLO_ACK:
            raise ProtocolError(f"expected hello_ack, got {frame.type.value}")
        p = frame.payload
        if str(p.get("protocol_version")) != PROTOCOL_VERSION_TEXT:
            conn.close(1002)
            raise TransportError(f"brain speaks protocol {p.get('protocol_version')!r}, this agent speaks 2",
                                 BackoffClass.INCOMPATIBLE)
        ids = [p.get("agent_id"), p.get("project_id"), p.get("session_id")]
        if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in ids):
            raise ProtocolError("hello_ack lacks agent_id, project_id or session_id")
        binding = SessionBinding(*ids)
        interval = p.get("heartbeat_interval_seconds")
        self._heartbeat_interval = float(interval) if isinstance(interval, (int, float)) and 1 <= interval <= 3600 else float(self.config.heartbeat_seconds)
        max_frame = p.get("max_frame_size_bytes")
        max_frame = max_frame if isinstance(max_frame, int) and 1024 <= max_frame <= 64 * 2**20 else DEFAULT_MAX_FRAME_BYTES
        conn.handshake_phase = False
        self._session = {"session_id": binding.session_id, "agent_id": binding.agent_id, "project_id": binding.project_id,
                         "since": time.monotonic(), "max_frame": max_frame, "brain_version": p.get("brain_version")}
        self.outbox.reset(max_frame)
        if self.schedules is not None:
            self.schedules.session_opened(max_frame)
        log.info("runtime.session_open", session_id=binding.session_id, brain_version=p.get("brain_version"),
                 heartbeat_s=self._heartbeat_interval, max_frame=max_frame)
        return Signer(self._key, binding), Verifier(self._key, binding)

    def _run(self, conn: Connection, signer: Signer, verifier: Verifier) -> str:
        next_beat = 0.0
        next_ping = time.monotonic() + PING_EVERY_SECONDS
        next_adopt = time.monotonic() + ADOPT_EVERY_SECONDS
        send = conn.send
        while True:
            request = self._next_request()
            if request is not None:
                return request
            now = time.monotonic()
            self._send_controls(signer, send)
            if now >= next_beat:
                self._send_heartbeat(signer, send)
                next_beat = now + self._heartbeat_interval
            if now >= next_ping:
                conn.ping()
                next_ping = now + PING_EVERY_SECONDS
            if now >= next_adopt:
                safe_call(self.buffer.adopt_orphans, site="runtime.adopt_orphans")
                next_adopt = now + ADOPT_EVERY_SECONDS
            if self.schedules is not None:
                self.schedules.pump(signer.sign_event_batch, send)  # after the command acks/results above
            moved = self.outbox.pump(signer, send)
            self.outbox.resend_due(signer, send)
            self._receive(conn, verifier, 0.0 if moved else IDLE_POLL_SECONDS)

    def _drain(self, conn: Connection, signer: Signer, verifier: Verifier) -> None:
        """Deliver what is buffered while the deadline allows; the rest stays on disk."""
        send = conn.send
        try:
            while time.monotonic() < self._stop_deadline:
                self._send_controls(signer, send)
                moved = self.outbox.pump(signer, send, linger=False)
                if not moved and self.outbox.idle and not self._controls and self.buffer.depth() == 0:
                    return
                self._receive(conn, verifier, min(IDLE_POLL_SECONDS, max(0.0, self._stop_deadline - time.monotonic())))
        except Exception as exc:  # noqa: BLE001 - whatever is left stays buffered for the next process
            log.warning("runtime.drain_interrupted", reason=str(_session_end(exc, "drain")))

    def _next_request(self) -> str | None:
        try:
            return self._requests.get_nowait()
        except queue.Empty:
            return None

    def _receive(self, conn: Connection, verifier: Verifier, timeout: float) -> None:
        data = conn.recv(timeout)
        while data is not None:
            self._handle_inbound(conn, verifier, data)
            data = conn.recv(0.0)

    def _handle_inbound(self, conn: Connection, verifier: Verifier, data: bytes) -> None:
        try:
            frame = verifier.verify(data)
        except ProtocolError as exc:
            # Never act on a frame that failed verification; end the session (fresh seq/nonce windows).
            log.warning("runtime.inbound_rejected", error_type=type(exc).__name__, reason=str(exc))
            raise SessionEnded(BackoffClass.CONNECTION, f"inbound frame rejected: {exc}") from None
        match frame.type:
            case FrameType.EVENT_BATCH_ACK:
                acked = frame.payload.get("acked_id")
                if isinstance(acked, str) and acked and not self.outbox.on_ack(acked) and self.schedules is not None:
                    self.schedules.on_ack(acked)
            case FrameType.COMMAND:
                self.commands.submit(frame)
            case FrameType.ERROR:
                code = str(frame.payload.get("code", ""))
                fatal = frame.payload.get("fatal") is True
                cls = classify_error_frame(code, fatal)
                log.warning("runtime.error_frame", code=code, fatal=fatal, message=str(frame.payload.get("message", ""))[:200])
                if cls is not None:
                    raise SessionEnded(cls, f"fatal error frame from brain: {code}")
            case _:
                log.debug("runtime.inbound_ignored", type=frame.type.value)

    # -- control frames, heartbeats --------------------------------------------------------------
    def _emit_control(self, kind: str, frame_id: str, payload: dict[str, Any]) -> None:
        """Called by the command channel from any thread: durable first, then the priority path."""
        self.buffer.append(kind, control_row(frame_id, payload))
        self._controls.append((kind, frame_id, payload))

    def _send_controls(self, signer: Signer, send: Any) -> None:
        while self._controls:
            kind, frame_id, payload = self._controls[0]
            self.outbox.send_control_now(kind, frame_id, payload, signer, send)
            self._controls.popleft()

    def _send_heartbeat(self, signer: Signer, send: Any) -> None:
        loss = self.buffer.telemetry_loss()
        depth = self.buffer.depth()
        dropped = int(loss.get("event_records", 0)) + sum(s.lost for s in self.sinks.values())
        send(signer.sign(FrameType.HEARTBEAT, new_frame_id("hb_"), {
            "buffer_size": depth,
            "last_flush_at": _wall(self.outbox.stats.last_flush_wall),
            "dropped_events": min(dropped, 10_000_000),
            "telemetry_loss": loss,
            "adapter_health": self._health.snapshot(),
        }))
        session_age = time.monotonic() - self._session["since"] if self._session else None
        send(signer.sign(FrameType.AGENT_STATUS, new_frame_id("as_"), {
            "telemetry_loss": loss,
            "auth_failure_streak": self._backoff.streaks[BackoffClass.AUTH],
            "protocol_failure_streak": self._backoff.streaks[BackoffClass.PROTOCOL],
            "connection_failure_streak": self._backoff.streaks[BackoffClass.CONNECTION],
            "last_successful_connect_at": _wall(self._last_connect_wall),
            "current_session_age_seconds": None if session_age is None else round(session_age, 3),
            "buffer_depth": depth,
            "buffer_oldest_age_seconds": self.buffer.oldest_age(),
            "agent_version": COMPAT_AGENT_VERSION,
            "protocol_version": PROTOCOL_VERSION_TEXT,
            "engines": list(self.engines),
            "schedulers": self.schedules.names if self.schedules is not None else [],
        }))


def _schedule_channel(schedulers: Sequence[Any] | None, buffer: BufferStore, redactor: Redactor) -> Any:
    """The schedule channel for ``schedulers=`` (None without any): its store sits beside the buffer."""
    if not schedulers:
        return None
    from .schedules.channel import ScheduleChannel, check_adapters
    from .schedules.store import ScheduleStore

    check_adapters(schedulers)
    return ScheduleChannel(schedulers, ScheduleStore.beside(buffer.path), redactor)
