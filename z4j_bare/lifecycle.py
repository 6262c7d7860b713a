"""The runtime's state machine and the work of each state, on the I/O thread.

``Lifecycle`` is the model ``transitions`` drives. Entering a state records the edge in the trace
(``record_edge``), then runs the state's callback, named after it (``on_enter_connecting``,
``on_enter_handshake``, ``on_enter_running``, ``on_enter_draining``, ``on_enter_stopped``). The
callback does the state's work and fires the next trigger from the table in ``statechart.py``;
the machine is queued, so that trigger runs after the callback returns, in order, never
recursing. ``run`` (the I/O thread's function) fires ``start`` and returns when the machine has
reached STOPPED.

Reconnects: ``backoff.Reconnects`` is tenacity's retry loop, one attempt per entry into
CONNECTING; the edge that leads back to CONNECTING carries the failure, and the wait tenacity
then sleeps is shown on that edge in the trace and in ``health()["backoff"]``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from transitions import EventData, Machine

from .backoff import Reconnects, SessionEnded
from .channels import notify_session
from .logs import get_logger
from .protocol import BackoffClass, ProtocolError, utc_now_text, utc_text
from .safety import safe_call
from .session import Session, SessionHost
from .statechart import RuntimeState, machine_states, machine_transitions
from .transport import Transport, TransportError

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from .backoff import Backoff
    from .transport import TransportChoice


class LifecycleHost(SessionHost, Protocol):
    """What the state machine's callbacks use of the runtime (``AgentRuntime`` is one)."""

    backoff: Backoff
    transports: TransportChoice
    stopping: threading.Event
    stop_deadline: float
    reconnect_reason: str | None

    @property
    def brain_url_shown(self) -> str: ...

    def open_transport(self, hold: Callable[[Transport], None]) -> Transport: ...

    def hello_payload(self) -> dict[str, Any]: ...

    def next_request(self) -> str | None: ...

# The runtime's records keep the one logger name operators filter on, whichever module logs them.
log = get_logger("z4j_bare.runtime")

TRACE_LEN = 64
INGEST_WHILE_AWAY_SECONDS = 1.0


def session_end(exc: BaseException, phase: str) -> SessionEnded:
    """Any way a phase can fail, as the SessionEnded whose class picks the backoff."""
    if isinstance(exc, SessionEnded):
        return exc
    if isinstance(exc, (TransportError, ProtocolError, TimeoutError)):
        paced = isinstance(exc, TimeoutError) or getattr(exc, "timed_out", False)
        return SessionEnded(getattr(exc, "backoff", BackoffClass.CONNECTION), f"{phase} failed: {exc}", paced=paced)
    log.error("runtime.unexpected_error", phase=phase, error_type=type(exc).__name__)
    return SessionEnded(BackoffClass.PROTOCOL, f"{phase} failed: unexpected {type(exc).__name__}")


_FAILURE_WHAT = {
    BackoffClass.CONNECTION: "lost the session with the brain at {url}",
    BackoffClass.AUTH: "the brain at {url} refused this agent's credentials (check Z4J_TOKEN and "
                       "Z4J_HMAC_SECRET; `z4j-bare doctor` says which)",
    BackoffClass.INCOMPATIBLE: "the brain at {url} does not accept this agent's protocol version",
    BackoffClass.PROTOCOL: "the session with the brain at {url} broke",
}


def failure_summary(cls: BackoffClass, reason: str, url: str, retry_in: float) -> str:
    """The sentence a person reads in the host's log: what is wrong and when the agent retries."""
    if cls is BackoffClass.CONNECTION and reason.startswith("connect failed"):
        what = f"cannot reach the brain at {url}"
    else:
        what = _FAILURE_WHAT.get(cls, "the session with the brain at {url} ended").format(url=url)
    return (f"{what}; retrying in {retry_in:g} s (events wait in the local buffer; repeats are logged "
            "below WARNING until a session opens)")


def wall_text(ts: float | None) -> str | None:
    return None if ts is None else utc_text(ts)


class Lifecycle:
    """The machine's model. Only the I/O thread fires its triggers (and stop() on a runtime that
    never started, under the runtime's lifecycle lock, when no I/O thread exists)."""

    state: RuntimeState

    def __init__(self, runtime: LifecycleHost) -> None:
        self._rt = runtime
        Machine(model=self, states=machine_states(), transitions=machine_transitions(), initial=RuntimeState.INIT,
                auto_transitions=False, send_event=True, queued=True)
        self._entered_at = time.monotonic()
        self._trace: deque[dict[str, Any]] = deque(maxlen=TRACE_LEN)
        self._trace_lock = threading.Lock()
        self._reconnects = Reconnects(runtime.backoff, stopping=runtime.stopping, sleep=self._wait_out,
                                      before_sleep=self._note_wait)
        self.transport: Transport | None = None
        self.session: Session | None = None
        #: While CONNECTING waits out a backoff: failure class, reason, next attempt (for health()).
        self.waiting: dict[str, Any] | None = None
        self.last_failure: str | None = None
        self.last_connect_wall: float | None = None
        self.transport_in_use: str | None = None

    # -- the I/O thread ------------------------------------------------------------------------
    def run(self) -> None:
        """Start the machine; return once it is STOPPED."""
        try:
            self.trigger("start")
        except Exception as exc:  # noqa: BLE001 - a bug in a callback: leave through the table all the same
            log.error("runtime.crashed", state=self.state.value, error_type=type(exc).__name__)
            self._leave_after_crash()

    def _leave_after_crash(self) -> None:
        self._close_transport(1011)
        exit_trigger = {RuntimeState.DRAINING: "drained", RuntimeState.RUNNING: "stop"}.get(self.state, "stop")
        self._rt.stopping.set()
        try:
            if self.state is not RuntimeState.STOPPED:
                self.trigger(exit_trigger)
        except Exception as exc:  # noqa: BLE001
            log.error("runtime.crashed_again", state=self.state.value, error_type=type(exc).__name__)

    @property
    def trace(self) -> list[dict[str, Any]]:
        with self._trace_lock:
            return list(self._trace)

    # -- entering any state --------------------------------------------------------------------
    def record_edge(self, event: EventData) -> None:
        now = time.monotonic()
        record: dict[str, Any] = {
            "source": RuntimeState[event.transition.source].value,
            "dest": RuntimeState[event.transition.dest].value,
            "trigger": event.event.name,
            "at": utc_now_text(),
            "elapsed_ms": round((now - self._entered_at) * 1000, 2),
        }
        failure = event.kwargs.get("failure")
        if isinstance(failure, SessionEnded):
            record["failure_class"] = failure.backoff.value
            record["reason"] = failure.reason
        for key in ("transport", "fallback"):
            if key in event.kwargs:
                record[key] = event.kwargs[key]
        self._entered_at = now
        with self._trace_lock:
            self._trace.append(record)
        # A reconnect storm repeats CONNECTING -> CONNECTING: below INFO, like its repeated failures.
        (log.debug if record["source"] == record["dest"] else log.info)("runtime.transition", **record)

    # -- each state's work -----------------------------------------------------------------------
    def on_enter_connecting(self, event: EventData) -> None:
        failure = event.kwargs.get("failure")
        if isinstance(failure, SessionEnded):
            self.last_failure = failure.reason
        if not self._reconnects.next_attempt(failure):
            self.trigger("stop")
            return
        try:
            transport = self._rt.open_transport(self._hold)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the next attempt waits its class out
            self.transport = None
            self.trigger("connect_failed", failure=session_end(exc, "connect"))
            return
        fallback = self._rt.transports.fallback if transport.name == "longpoll" else None
        extra = {"fallback": fallback["reason"]} if fallback else {}
        self.trigger("connected", transport=transport.name, **extra)

    def on_enter_handshake(self, event: EventData) -> None:
        transport = self.transport
        assert transport is not None
        try:
            info = transport.handshake(self._rt.hello_payload(), self._rt.config.handshake_timeout)
        except Exception as exc:  # noqa: BLE001
            self._close_transport(1000)
            if self._rt.stopping.is_set():
                self.trigger("stop")
            else:
                self.trigger("session_lost", failure=session_end(exc, "handshake"))
            return
        self._rt.backoff.reset()
        self.last_connect_wall = time.time()
        self.session = Session(self._rt, transport, info)
        self._rt.outbox.reset(info.max_frame)
        self._rt.controls.reset()
        log.info("runtime.session_open", transport=transport.name, session_id=info.session_id,
                 brain_version=info.brain_version, heartbeat_s=info.heartbeat_interval, max_frame=info.max_frame)
        notify_session(self._rt.handlers, info)
        self.trigger("handshake_ok")

    def on_enter_running(self, event: EventData) -> None:
        session = self.session
        assert session is not None
        try:
            request = session.run(self._rt.next_request)
        except Exception as exc:  # noqa: BLE001 - a bug or a full disk ends the session, not the agent
            failure = session_end(exc, "session")
            self._end_session(1000 if isinstance(exc, (SessionEnded, TransportError)) else 1002)
            self.trigger("session_lost", failure=failure)
            return
        if request == "stop":
            self.trigger("stop")
            return
        self._end_session(1000)
        reason = self._rt.reconnect_reason or "reconnect requested"
        self.trigger("reconnect", failure=SessionEnded(BackoffClass.CONNECTION, reason, immediate=True))

    def on_enter_draining(self, event: EventData) -> None:
        session = self.session
        drained = False
        try:
            if session is not None:
                drained = session.drain(self._rt.stop_deadline)
        except Exception as exc:  # noqa: BLE001 - whatever is left stays buffered for the next process
            log.warning("runtime.drain_interrupted", reason=str(session_end(exc, "drain")))
        finally:
            self._end_session(1000)
        self.trigger("drained", drained=drained)

    def on_enter_stopped(self, event: EventData) -> None:
        self.waiting = None
        self._end_session(1000)

    # -- helpers -------------------------------------------------------------------------------
    def _hold(self, transport: Transport) -> None:
        """The transport an attempt is opening, so that stop() can abort it mid-connect."""
        self.transport = transport
        self.transport_in_use = transport.name

    def _end_session(self, code: int) -> None:
        if self.session is not None:
            self.session = None
            notify_session(self._rt.handlers, None)
        self._close_transport(code)

    def _close_transport(self, code: int) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            safe_call(transport.close, code, site="runtime.close_transport")

    def _note_wait(self, retry_state: RetryCallState) -> None:
        """tenacity's before_sleep: publish the wait (health(), the trace's last edge, the log)."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        cls = getattr(exc, "backoff", BackoffClass.CONNECTION)
        delay = float(retry_state.upcoming_sleep or 0.0)
        streak = self._rt.backoff.streaks.get(cls, 0)
        self.waiting = {"failure_class": cls.value, "reason": str(exc), "retry_in_s": round(delay, 3),
                        "next_attempt_at": wall_text(time.time() + delay), "streak": streak,
                        "transport": self.transport_in_use}
        self.last_failure = str(exc)
        with self._trace_lock:
            if self._trace and self._trace[-1]["dest"] == RuntimeState.CONNECTING.value:
                self._trace[-1].update(retry_in_s=self.waiting["retry_in_s"],
                                       next_attempt_at=self.waiting["next_attempt_at"])
        if isinstance(exc, SessionEnded) and exc.immediate:
            return
        level = "warning" if streak <= 1 else ("info" if streak % 10 == 0 else "debug")
        retry_in = round(delay, 2)
        getattr(log, level)("runtime.session_failed",
                            summary=failure_summary(cls, str(exc), self._rt.brain_url_shown, retry_in),
                            backoff_class=cls.value, reason=str(exc), retry_in_s=retry_in, streak=streak)

    def _wait_out(self, seconds: float) -> None:
        """tenacity's sleep: wait out a reconnect delay (stop() cuts it short). Meanwhile spooled
        events keep moving into the buffer, so its caps hold through a long outage and the
        reconnect starts sending at once."""
        deadline = time.monotonic() + seconds
        stopping, buffer = self._rt.stopping, self._rt.buffer
        try:
            while not stopping.is_set():
                safe_call(buffer.ingest, site="runtime.ingest")
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                stopping.wait(min(left, INGEST_WHILE_AWAY_SECONDS))
        finally:
            self.waiting = None
