"""The schedule channel: scheduler adapters on the external schedule protocol v1.

Narrow interface to the runtime:

* ``hello_fields()``: schedulers, their capabilities and the runtime feature for the hello;
* ``handles(action)`` / ``execute(action, parameters, target)``: the ``schedule.*`` commands
  (run on the command workers, raise ``CommandFailed`` for a failed result);
* ``session_opened(max_frame)`` / ``session_closed()``: every authority dies with its session
  (the brain fences the epoch and re-activates on the next hello);
* ``pump(sign, send)`` and ``on_ack(acked_id)`` on the I/O thread: committed frames out, acks in.

Nothing about schedules is sent before the brain activates a stream: observations wait for
an authority, and an authority lives only in the session that granted it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed
from ..logs import get_logger
from ..protocol.schedules import (
    CAP_STABLE_SNAPSHOT,
    PERIODIC_RESYNC_SECONDS,
    RESERVED_OWNER,
    ROW_PAYLOAD_LIMIT,
    RUNTIME_FEATURE,
    external_digest,
    snapshot_event,
    snapshot_frames,
)
from ..protocol.schedules import event_text as encode_event
from ..safety import safe_call
from .model import SchedulerAdapter
from .observe import Observation, Projector, iso_now, observe
from .outbound import ENVELOPE_OVERHEAD, ScheduleOutbox
from .store import Authority, PendingFrame, ScheduleStore

if TYPE_CHECKING:
    from ..redaction import Redactor

log = get_logger(__name__)

SEND_WAIT_SECONDS = 10.0
EVENT_OVERHEAD = 1024  # bytes a snapshot event adds around its rows payload


@dataclass(slots=True)
class _AdapterState:
    adapter: Any
    project: Projector
    lock: threading.RLock
    authority: Authority | None = None
    last_observed: float = 0.0
    last_polled: float = 0.0
    rows_digest: str | None = None
    observations: int = 0
    failures: int = 0
    left_out: int = 0
    last_error: str | None = None


def check_adapters(adapters: Sequence[Any]) -> None:
    names = [getattr(a, "name", "") for a in adapters]
    for name in names:
        if not isinstance(name, str) or not name or len(name) > 40 or name == RESERVED_OWNER:
            raise ValueError(f"scheduler adapter name {name!r} must be 1..40 characters and not {RESERVED_OWNER!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"scheduler adapters need distinct names (got {names})")


class ScheduleChannel:
    def __init__(self, adapters: Sequence[Any], store: ScheduleStore, redactor: Redactor | None = None, *,
                 periodic_seconds: float = PERIODIC_RESYNC_SECONDS, send_wait: float = SEND_WAIT_SECONDS) -> None:
        check_adapters(adapters)
        self.store = store
        self.outbox = ScheduleOutbox(store)
        self._periodic = periodic_seconds
        self._send_wait = send_wait
        self._states: dict[str, _AdapterState] = {}
        for adapter in adapters:
            project = Projector(adapter.name, redactor)
            adapter.project = project
            self._states[adapter.name] = _AdapterState(adapter, project, threading.RLock())
        self._lock = threading.Lock()  # session number + authorities + enqueue
        self._session = 0
        self._started = False
        self._wake = threading.Condition()
        self._signals: dict[str, list[str]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ScheduleChannel(schedulers={sorted(self._states)})"

    @property
    def names(self) -> list[str]:
        return list(self._states)

    def adapter(self, owner: str) -> Any:
        return self._states[owner].adapter

    # -- runtime hooks ------------------------------------------------------------------------

    def hello_fields(self) -> dict[str, Any]:
        caps = {name: capabilities_of(s.adapter) for name, s in self._states.items()}
        return {"schedulers": list(self._states), "capabilities": caps, "runtime_features": [RUNTIME_FEATURE]}

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for name, state in self._states.items():
            safe_call(state.adapter.connect_signals, self._sink(name), site="schedules.connect_signals")
        self._thread = threading.Thread(target=self._observer_loop, name="z4j-schedules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for state in self._states.values():
            safe_call(state.adapter.disconnect_signals, site="schedules.disconnect_signals")
        if self._thread is not None:
            self._thread.join(5.0)
        safe_call(self.store.close, site="schedules.close_store")

    def session_opened(self, max_frame: int) -> None:
        with self._lock:
            self._session += 1
            for state in self._states.values():
                state.authority = None
            self.outbox.session_opened(max_frame)

    def session_closed(self) -> None:
        with self._lock:
            self._session += 1
            for state in self._states.values():
                state.authority = None
            self.outbox.session_closed()

    def pump(self, sign: Callable[[str, list[str]], bytes], send: Callable[[bytes], None]) -> int:
        return self.outbox.pump(sign, send) + self.outbox.resend_due(sign, send)

    def on_ack(self, acked_id: str) -> bool:
        return self.outbox.on_ack(acked_id)

    def handles(self, action: str) -> bool:
        return action.startswith("schedule.") and action != "schedule.fire"

    def execute(self, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
        from . import handlers

        return handlers.dispatch(self, action, params, target)

    def health(self) -> dict[str, Any]:
        out = {}
        for name, s in self._states.items():
            auth = s.authority
            out[name] = {
                "active": auth is not None, "epoch_number": auth.epoch_number if auth else None,
                "observations": s.observations, "failures": s.failures, "rows_left_out": s.left_out,
                "last_error": s.last_error,
            }
        return out

    # -- authority (command workers) ----------------------------------------------------------

    def state(self, owner: str) -> _AdapterState:
        state = self._states.get(owner)
        if state is None or not self._started:
            raise CommandFailed(f"no scheduler adapter registered for {owner!r} (this agent hosts "
                                f"{sorted(self._states)})")
        return state

    def session_number(self) -> int:
        with self._lock:
            return self._session

    def bind(self, owner: str, auth: Authority, session: int) -> bool:
        with self._lock:
            if session != self._session:
                return False
            state = self._states[owner]
            state.authority = auth
            state.last_observed = state.last_polled = time.monotonic()  # activation observes right now
            self.outbox.drop_owner(owner)
        with self._wake:
            self._wake.notify_all()  # the observer thread recomputes its next poll/periodic time
        return True

    def unbind(self, owner: str, auth: Authority) -> None:
        with self._lock:
            state = self._states[owner]
            if state.authority is not None and state.authority.same_epoch(auth):
                state.authority = None

    def current(self, owner: str) -> Authority | None:
        with self._lock:
            return self._states[owner].authority

    def enqueue(self, auth: Authority, frames: list[PendingFrame]) -> bool:
        """Queue committed frames for sending if their authority is still the live one."""
        with self._lock:
            live = self._states[auth.owner].authority
            if live is None or not live.same_epoch(auth):
                return False
            self.outbox.enqueue(frames)
            return True

    def wait_sent(self, frames: list[PendingFrame]) -> bool:
        return self.outbox.wait_sent([f.id for f in frames], self._send_wait)

    # -- observations -------------------------------------------------------------------------

    def snapshot(self, owner: str, reason: str, *, only_if_changed: bool = False) -> dict[str, Any] | None:
        """One complete observation buffered under the next sequence; the result summary.

        Takes the adapter lock. None when the adapter has no live authority (nothing is sent
        before activation) or, with ``only_if_changed``, when the rows did not change.
        """
        state = self._states[owner]
        with state.lock:
            auth = self.current(owner)
            if auth is None:
                return None
            try:
                obs = observe(state.adapter, state.project)
            except Exception as exc:
                state.failures += 1
                state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                raise
            digest = external_digest(obs.rows)
            if only_if_changed and digest == state.rows_digest:
                return None
            summary, frames = self.commit_snapshot(auth, obs, reason)
            state.rows_digest = digest
            state.last_observed = time.monotonic()
            state.observations += 1
            state.left_out = len(obs.left_out)
        self.enqueue(auth, frames)
        summary["frames"] = frames
        return summary

    def commit_snapshot(self, auth: Authority, obs: Observation, reason: str) -> tuple[dict[str, Any], list[PendingFrame]]:
        snapshot_id = str(uuid.uuid4())
        observed_at = iso_now()
        limit = max(4096, min(ROW_PAYLOAD_LIMIT, self.outbox.max_frame - ENVELOPE_OVERHEAD - EVENT_OVERHEAD))
        counted: list[int] = []

        def build(sequence: int) -> list[str]:
            _, frames = snapshot_frames(authority=auth.binding(), sequence=sequence, snapshot_id=snapshot_id,
                                        schedules=obs.rows, limit=limit)
            counted.append(len(frames))
            return [encode_event(snapshot_event(body, digest, reason, event_id=str(uuid.uuid4()),
                                                occurred_at=observed_at)) for body, digest in frames]

        sequence, frames = self.store.commit_observation(auth, build)
        summary = {"scheduler": auth.owner, "stream_id": auth.stream_id, "epoch_uuid": auth.epoch_uuid,
                   "epoch_number": auth.epoch_number, "sequence": sequence,
                   "adapter_instance_id": auth.adapter_instance_id, "schedule_count": len(obs.rows),
                   "frame_count": counted[-1]}
        log.info("schedules.snapshot_buffered", scheduler=auth.owner, sequence=sequence, rows=len(obs.rows),
                 frames=len(frames), reason=reason[:80], left_out=len(obs.left_out))
        return summary, frames

    # -- signals and the periodic resync (the observer thread) ---------------------------------

    def _sink(self, owner: str) -> Callable[..., None]:
        def sink(action: str, schedule: Any = None) -> None:
            with self._wake:
                self._signals.setdefault(owner, []).append(str(action))
                self._wake.notify_all()

        return sink

    def _observer_loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                if not self._signals:
                    self._wake.wait(self._next_periodic_in())
                if self._stopping:
                    return
                signals, self._signals = self._signals, {}
            for owner, actions in signals.items():
                reason = f"signal:{actions[0]}" if len(actions) == 1 else "signal:coalesced"
                self._observe_quietly(owner, reason, only_if_changed=True)
            now = time.monotonic()
            for owner, state in self._states.items():
                if state.authority is None:
                    continue
                if now - state.last_observed >= self._periodic:
                    self._observe_quietly(owner, "periodic")
                elif _poll(state) and now - max(state.last_polled, state.last_observed) >= _poll(state):
                    state.last_polled = now
                    self._observe_quietly(owner, "poll", only_if_changed=True)

    def _next_periodic_in(self) -> float:
        now = time.monotonic()
        waits = []
        for s in self._states.values():
            if s.authority is not None:
                waits.append(self._periodic - (now - s.last_observed))
                if _poll(s):
                    waits.append(_poll(s) - (now - max(s.last_polled, s.last_observed)))
        return max(0.05, min([*waits, 30.0]))

    def _observe_quietly(self, owner: str, reason: str, only_if_changed: bool = False) -> None:
        try:
            self.snapshot(owner, reason, only_if_changed=only_if_changed)
        except Exception as exc:  # noqa: BLE001 - an unreadable inventory waits for the next try
            log.warning("schedules.observation_failed", scheduler=owner, reason=reason,
                        error=f"{type(exc).__name__}: {exc}"[:300])


def _poll(state: _AdapterState) -> float:
    """Seconds between cheap re-reads for an adapter whose scheduler has no change signal (0: none)."""
    value = getattr(state.adapter, "poll_seconds", 0) or 0
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


def capabilities_of(adapter: SchedulerAdapter | Any) -> list[str]:
    caps = adapter.advertised_capabilities() if hasattr(adapter, "advertised_capabilities") else adapter.capabilities()
    return sorted(set(caps))


def stable(adapter: Any) -> bool:
    return CAP_STABLE_SNAPSHOT in capabilities_of(adapter)
