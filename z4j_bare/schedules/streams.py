"""The schedule streams: each adapter's authority, bound to the session that granted it, and its snapshots.

Nothing about schedules is sent before the brain activates a stream: observations wait for an
authority, and an authority lives only in the session that granted it (``session_changed``
drops them all). A snapshot is committed (sequence reserved, frames written) and handed to
``Outbound`` under the adapter's lock, so frames leave in sequence order whoever observed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed
from ..logs import get_logger
from ..protocol.schedules import ROW_PAYLOAD_LIMIT, external_digest, snapshot_event, snapshot_frames
from ..protocol.schedules import event_text as encode_event
from .model import SchedulerAdapter
from .observe import Observation, Projector, iso_now, observe
from .outbound import ENVELOPE_OVERHEAD, Outbound
from .store import Authority, PendingFrame, ScheduleStore

if TYPE_CHECKING:
    from ..redaction import Redactor

log = get_logger(__name__)

EVENT_OVERHEAD = 1024  # bytes a snapshot event adds around its rows payload


@dataclass(slots=True)
class AdapterState:
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


def capabilities_of(adapter: SchedulerAdapter | Any) -> list[str]:
    caps = adapter.advertised_capabilities() if hasattr(adapter, "advertised_capabilities") else adapter.capabilities()
    return sorted(set(caps))


class ScheduleStreams:
    def __init__(self, adapters: Sequence[Any], store: ScheduleStore, redactor: Redactor | None = None) -> None:
        self.store = store
        self.outbound = Outbound(store)
        self.redactor = redactor
        self.states: dict[str, AdapterState] = {}
        for adapter in adapters:
            project = Projector(adapter.name, redactor)
            adapter.project = project
            self.states[adapter.name] = AdapterState(adapter, project, threading.RLock())
        self._lock = threading.Lock()  # session number + authorities + handing frames over
        self._session = 0
        self.started = False
        #: Called after an activation bound an authority (the observer recomputes its timers).
        self.on_bind: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"ScheduleStreams(schedulers={sorted(self.states)})"

    @property
    def names(self) -> list[str]:
        return list(self.states)

    def state(self, owner: str) -> AdapterState:
        state = self.states.get(owner)
        if state is None or not self.started:
            raise CommandFailed(f"no scheduler adapter registered for {owner!r} (this agent hosts "
                                f"{sorted(self.states)})")
        return state

    # -- sessions and authority ------------------------------------------------------------------

    def session_changed(self, max_frame: int | None) -> None:
        """A session began (its frame limit) or ended (None): every authority dies with the old one."""
        with self._lock:
            self._session += 1
            for state in self.states.values():
                state.authority = None
            if max_frame is not None:
                self.outbound.max_frame = max_frame

    def session_number(self) -> int:
        with self._lock:
            return self._session

    def bind(self, owner: str, auth: Authority, session: int) -> bool:
        """Make ``auth`` the live authority, if the session that delivered the activation still runs."""
        with self._lock:
            if session != self._session:
                return False
            state = self.states[owner]
            state.authority = auth
            state.last_observed = state.last_polled = time.monotonic()  # activation observes right now
        self.on_bind()
        return True

    def unbind(self, owner: str, auth: Authority) -> None:
        with self._lock:
            state = self.states[owner]
            if state.authority is not None and state.authority.same_epoch(auth):
                state.authority = None

    def current(self, owner: str) -> Authority | None:
        with self._lock:
            return self.states[owner].authority

    def send(self, auth: Authority, frames: list[PendingFrame]) -> bool:
        """Hand committed frames over if their authority is still the live one (they stay in the
        store either way; a dead epoch's frames are dropped at the next activation)."""
        with self._lock:
            live = self.states[auth.owner].authority
            if live is None or not live.same_epoch(auth):
                return False
            self.outbound.send(frames)
            return True

    # -- observations -------------------------------------------------------------------------

    def snapshot(self, owner: str, reason: str, *, only_if_changed: bool = False) -> dict[str, Any] | None:
        """One complete observation buffered under the next sequence and handed over; its summary.

        Takes the adapter lock. None when the adapter has no live authority (nothing is sent
        before activation) or, with ``only_if_changed``, when the rows did not change.
        """
        state = self.states[owner]
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
            self.send(auth, frames)  # under the adapter lock: sequences leave in order
        return summary

    def commit_snapshot(self, auth: Authority, obs: Observation, reason: str) -> tuple[dict[str, Any], list[PendingFrame]]:
        snapshot_id = str(uuid.uuid4())
        observed_at = iso_now()
        limit = max(4096, min(ROW_PAYLOAD_LIMIT, self.outbound.max_frame - ENVELOPE_OVERHEAD - EVENT_OVERHEAD))
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

    def health(self) -> dict[str, Any]:
        out = {}
        for name, s in self.states.items():
            auth = s.authority
            out[name] = {
                "active": auth is not None, "epoch_number": auth.epoch_number if auth else None,
                "observations": s.observations, "failures": s.failures, "rows_left_out": s.left_out,
                "last_error": s.last_error,
            }
        return out
