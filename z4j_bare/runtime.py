"""AgentRuntime: the agent's public face, wiring the parts the I/O thread drives.

Host threads never touch the network: their hooks append events to the durable buffer and
return. One I/O thread runs the state machine (``lifecycle.Lifecycle``), whose states do the
work: connect over a transport (``transport/``), handshake, run the session (``session.py``),
drain. Other threads talk to it only through ``_requests`` and ``stopping``; ``health()`` reads
what the I/O thread publishes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .backoff import Backoff
from .channels import Emit, FrameHandler, call_each, check_handler, executors, merge_health, merge_hello
from .commands import CommandChannel
from .controls import ControlFrames
from .engines.base import EngineAdapter, EventSink
from .framework import BareFrameworkAdapter
from .health import HealthCollector
from .lifecycle import Lifecycle, wall_text
from .logs import get_logger
from .outbox import Outbox
from .protocol import PROTOCOL_VERSION_TEXT, BackoffClass, FrameType, new_frame_id
from .safety import safe_call
from .statechart import RuntimeState
from .transport import Outgoing, Transport, TransportChoice
from .transport.clock import BrainClock

if TYPE_CHECKING:
    from .buffer import BufferStore
    from .config import Config
    from .redaction import Redactor
    from .session import Session

log = get_logger(__name__)

#: What the brain compares for version skew: the z4j core protocol level this agent implements.
COMPAT_AGENT_VERSION = "1.13.0"


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

        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        #: Set once by stop(): every wait of the I/O thread ends early on it.
        self.stopping = threading.Event()
        self._stopped = threading.Event()  # the first stop() has returned
        self.stop_deadline = 0.0
        self.reconnect_reason: str | None = None
        self._handlers: list[FrameHandler] = []
        self._thread: threading.Thread | None = None
        self._lifecycle_lock = threading.Lock()

        self.backoff = Backoff({
            BackoffClass.CONNECTION: config.backoff_max_connection,
            BackoffClass.PROTOCOL: config.backoff_max_protocol,
            BackoffClass.AUTH: config.backoff_max_auth,
            BackoffClass.INCOMPATIBLE: config.backoff_max_incompatible,
        })
        self.controls = ControlFrames(buffer, resend_after=config.resend_after_seconds)
        self.outbox = Outbox(buffer, max_batch_events=config.max_batch_events, max_inflight=config.max_inflight_frames,
                             resend_after=config.resend_after_seconds, on_control_row=self.controls.adopt)
        self.commands = CommandChannel(
            self.engines, buffer, self._key, self.controls.emit, workers=config.command_workers,
            timeout=config.command_timeout_seconds, dedupe_ttl=config.command_dedupe_ttl_seconds,
            purge_threshold=config.purge_threshold, orchestrated=config.orchestrated, redactor=redactor,
        )
        if schedulers:
            _add_schedule_channel(self, schedulers)
        self._health = HealthCollector(self.engines, interval=config.heartbeat_seconds)
        #: The brain's clock as measured at each connect (signatures, replay checks, status times).
        self.clock = BrainClock()
        self.transports = TransportChoice(config, self._key, self.stopping, self.clock)
        self.lifecycle = Lifecycle(self)

    def __repr__(self) -> str:
        return f"<AgentRuntime state={self.state} engines={sorted(self.engines)} brain={self.config.ws_url!r}>"

    # -- public API ----------------------------------------------------------------------------
    @property
    def state(self) -> RuntimeState:
        return self.lifecycle.state

    @property
    def trace(self) -> list[dict[str, Any]]:
        """Recent edges: source, dest, trigger, at (UTC), elapsed_ms in source; an edge caused by a
        failure adds failure_class and reason, and, into CONNECTING, the wait before the next
        attempt (retry_in_s, next_attempt_at); ``connected`` names the transport."""
        return self.lifecycle.trace

    @property
    def handlers(self) -> tuple[FrameHandler, ...]:
        return tuple(self._handlers)

    def start(self) -> AgentRuntime:
        with self._lifecycle_lock:
            if self._thread is not None or self.stopping.is_set():
                return self
            if os.getpid() != self._owner_pid:
                raise RuntimeError("this AgentRuntime was created in another process; call install_agent in this one")
            for name, adapter in self.engines.items():
                adapter.attach(self.sinks[name])
            safe_call(self.buffer.adopt_orphans, site="runtime.adopt_orphans")
            call_each(self._handlers, "start")
            self._health.start()
            self._thread = threading.Thread(target=self.lifecycle.run, name="z4j-agent-io", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Drain within ``timeout`` seconds, close cleanly, join. Idempotent; True if fully drained.

        Once a stop() has returned, later calls (the exit hook's too) return at once: whatever
        the I/O thread still does then is cut short, and a daemon thread never holds up exit."""
        timeout = self.config.stop_timeout if timeout is None else max(0.0, timeout)
        if os.getpid() != self._owner_pid:
            return False  # a forked child never owns the connection
        if self._stopped.is_set():
            return self.buffer.depth_after_ingest() == 0
        deadline = time.monotonic() + timeout
        with self._lifecycle_lock:
            thread = self._thread
            first = not self.stopping.is_set()
            if first:
                for adapter in self.engines.values():
                    safe_call(adapter.flush, site="runtime.flush_adapter")
                self.stop_deadline = deadline - min(0.5, timeout * 0.2)
                self.stopping.set()
                self._requests.put("stop")
                if thread is None:
                    # Never started: no I/O thread exists, and start() (same lock) now refuses to
                    # begin one, so this thread may move the machine INIT -> STOPPED itself.
                    self.lifecycle.trigger("stop")
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic() - 0.05))
            if thread.is_alive():
                transport = self.lifecycle.transport
                if transport is not None:
                    transport.abort()
                thread.join(max(0.0, deadline - time.monotonic()))
        if first:
            for adapter in self.engines.values():
                safe_call(adapter.detach, site="runtime.detach")
            self._health.stop()
            self.commands.shutdown()
            call_each(self._handlers, "stop")
            safe_call(self.buffer.checkpoint, site="runtime.checkpoint")
        left = self.buffer.depth_after_ingest()
        drained = left == 0
        if first:
            log.info("runtime.stopped", drained=drained, buffered=left)
            self._stopped.set()
        return drained

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every buffered row has been delivered (events acked); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.buffer.depth_after_ingest() == 0 and self.outbox.idle and self.controls.idle:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def request_reconnect(self) -> None:
        self._requests.put("reconnect")

    def add_frame_handler(self, handler: FrameHandler) -> Emit:
        """Register a channel of its own on the session (see ``z4j_bare.channels``) before start();
        returns its ``emit(frame_type, frame_id, payload=None, *, row_kind=None, events=None,
        settled=None, resend_after=None)``."""
        check_handler(handler)
        with self._lifecycle_lock:
            if self._thread is not None or self.stopping.is_set():
                raise RuntimeError("add_frame_handler() must be called before the runtime starts")
            self._handlers.append(handler)
            for executor in executors([handler]):
                self.commands.add_executor(executor)
        return self.controls.emit

    def health(self) -> dict[str, Any]:
        """Liveness/readiness snapshot; cheap and safe from any thread."""
        life = self.lifecycle
        session = life.session
        session_age = time.monotonic() - session.since if session is not None else None
        stats = self.outbox.stats
        loss = self.buffer.telemetry_loss()
        return merge_health({
            "state": self.state.value,
            "alive": bool(self._thread and self._thread.is_alive()),
            "connected": self.state is RuntimeState.RUNNING,
            "ready": self.state is RuntimeState.RUNNING,
            "transport": session.transport.name if session is not None else life.transport_in_use,
            "transport_mode": self.config.transport,
            "transport_fallback": self.transports.fallback,
            "session_id": session.info.session_id if session is not None else None,
            "session_age_seconds": None if session_age is None else round(session_age, 3),
            "liveness": session.liveness.snapshot() if session is not None else None,
            "clock_skew_seconds": self.clock.snapshot()["skew_seconds"],
            "clock_skew_source": self.clock.source,
            "backoff": dict(life.waiting) if life.waiting else None,
            "buffer_depth": self.buffer.depth(),
            "buffer_oldest_age_seconds": self.buffer.oldest_age(),
            "last_ack_at": wall_text(stats.last_flush_wall),
            "events_sent": stats.events_sent,
            "events_acked": stats.events_acked,
            "resends": stats.resends,
            "inflight_frames": self.outbox.inflight,
            "controls_pending": self.controls.pending,
            "failure_streaks": {cls.value: n for cls, n in self.backoff.streaks.items()},
            "last_failure": life.last_failure,
            "loss": loss,
            "dropped_events": dropped_events(loss),
            "trace": self.trace[-10:],
        }, self._handlers)

    # -- what the I/O thread asks for ------------------------------------------------------------
    @property
    def brain_url_shown(self) -> str:
        """The brain's address as log lines show it (no credentials): the URL of the transport tried."""
        transport = self.lifecycle.transport
        return getattr(transport, "url", None) or self.config.ws_url

    def next_request(self) -> str | None:
        """What a running session must do next: "stop", "reconnect", or None (carry on)."""
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = None
        if request is not None:
            self.reconnect_reason = None
            return request
        session = self.lifecycle.session
        reason = self.transports.should_leave(session.transport) if session is not None else None
        if reason is None:
            return None
        self.reconnect_reason = reason
        return "reconnect"

    def open_transport(self, hold: Callable[[Transport], None]) -> Transport:
        """Build and open this attempt's transport (see transport.select); ``hold`` learns it first.

        First, what the first events need and install_agent did not wait for (a deferred redactor
        builds once; later calls return at once), here on the I/O thread rather than on a thread
        of its own: a forking worker parent keeps every thread's malloc arena for good."""
        warm = getattr(self.redactor, "warm", None)
        if warm is not None:
            safe_call(warm, site="runtime.warm")
        return self.transports.open(hold)

    def hello_payload(self) -> dict[str, Any]:
        caps = {name: adapter.advertised_capabilities() for name, adapter in self.engines.items()}
        features = ["retry_by_reference"] if any(a.safe_retry_by_reference for a in self.engines.values()) else []
        return merge_hello({
            "protocol_version": PROTOCOL_VERSION_TEXT,
            "agent_version": COMPAT_AGENT_VERSION,
            "framework": self.framework.name,
            "engines": list(self.engines),
            "schedulers": [],
            "capabilities": caps,
            "host": {"name": self.config.agent_name} if self.config.agent_name else {},
            "worker_id": self.worker_id,
            "worker_role": self.config.worker_role,
            "worker_pid": self._owner_pid,
            "worker_started_at": wall_text(self._started_wall),
            "runtime_features": features,
        }, self._handlers)

    def status_frames(self, session: Session) -> list[Outgoing]:
        """The heartbeat and agent_status frames of one heartbeat tick."""
        loss = self.buffer.telemetry_loss()
        depth = self.buffer.depth()
        dropped = dropped_events(loss)
        heartbeat = Outgoing(FrameType.HEARTBEAT.value, new_frame_id("hb_"), {
            "buffer_size": depth,
            "last_flush_at": wall_text(self.clock.to_brain(self.outbox.stats.last_flush_wall)),
            "dropped_events": min(dropped, 10_000_000),
            "telemetry_loss": loss,
            "adapter_health": self._health.snapshot(),
        })
        streaks = self.backoff.streaks
        status = Outgoing(FrameType.AGENT_STATUS.value, new_frame_id("as_"), {
            "telemetry_loss": loss,
            "auth_failure_streak": streaks[BackoffClass.AUTH],
            "protocol_failure_streak": streaks[BackoffClass.PROTOCOL],
            "connection_failure_streak": streaks[BackoffClass.CONNECTION],
            "last_successful_connect_at": wall_text(self.clock.to_brain(self.lifecycle.last_connect_wall)),
            "current_session_age_seconds": round(time.monotonic() - session.since, 3),
            "buffer_depth": depth,
            "buffer_oldest_age_seconds": self.buffer.oldest_age(),
            "agent_version": COMPAT_AGENT_VERSION,
            "protocol_version": PROTOCOL_VERSION_TEXT,
            "engines": list(self.engines),
            "schedulers": list(self.hello_payload().get("schedulers", [])) if self._handlers else [],
            # Additive (brain 1.13 ignores fields it does not know): the skew this agent corrects for.
            "clock_skew_seconds": self.clock.snapshot()["skew_seconds"],
        })
        return [heartbeat, status]


def dropped_events(loss: dict[str, Any]) -> int:
    """The one dropped-events number (health and the heartbeat): the events the buffer's loss
    ledger counted as lost (failed appends, evictions, events that could not be built), in every
    process that writes this buffer, each counted once."""
    return int(loss["event_records"])


def _add_schedule_channel(runtime: AgentRuntime, schedulers: Sequence[Any]) -> None:
    """``schedulers=``: the schedule channel, registered like any other channel."""
    from .schedules.channel import ScheduleChannel

    channel = ScheduleChannel.beside(runtime.buffer.path, schedulers, runtime.redactor)
    channel.emit = runtime.add_frame_handler(channel)
