"""The observer thread: snapshots prompted by scheduler signals, polling, and the periodic resync.

``sink(action, schedule)`` (given to each adapter's ``connect_signals``) may be called from any
thread; it only wakes this thread, which takes one fresh full observation per adapter (a burst
of signals coalesces; the schedule argument is ignored: an old object is never re-stamped with
a new sequence). Signals and polls send a snapshot only when the rows changed, so a queued
snapshot does not race a control the brain planned from its accepted sequence
(schedules.md 9 item 3); the periodic resync (900 s) always sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..logs import get_logger
from ..protocol.schedules import PERIODIC_RESYNC_SECONDS
from ..safety import safe_call
from .streams import AdapterState, ScheduleStreams

log = get_logger(__name__)


class Observer:
    def __init__(self, streams: ScheduleStreams, periodic_seconds: float = PERIODIC_RESYNC_SECONDS) -> None:
        self._streams = streams
        self._periodic = periodic_seconds
        self._wake = threading.Condition()
        self._signals: dict[str, list[str]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Observer(periodic_seconds={self._periodic}, running={self._thread is not None})"

    def start(self) -> None:
        for name, state in self._streams.states.items():
            safe_call(state.adapter.connect_signals, self._sink(name), site="schedules.connect_signals")
        self._thread = threading.Thread(target=self._loop, name="z4j-schedules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for state in self._streams.states.values():
            safe_call(state.adapter.disconnect_signals, site="schedules.disconnect_signals")
        if self._thread is not None:
            self._thread.join(5.0)

    def wake(self) -> None:
        """Recompute the next poll/periodic time (an authority was just bound)."""
        with self._wake:
            self._wake.notify_all()

    def _sink(self, owner: str) -> Callable[..., None]:
        def sink(action: str, schedule: object = None) -> None:
            with self._wake:
                self._signals.setdefault(owner, []).append(str(action))
                self._wake.notify_all()

        return sink

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                if not self._signals:
                    self._wake.wait(self._next_in())
                if self._stopping:
                    return
                signals, self._signals = self._signals, {}
            for owner, actions in signals.items():
                reason = f"signal:{actions[0]}" if len(actions) == 1 else "signal:coalesced"
                self._observe_quietly(owner, reason, only_if_changed=True)
            now = time.monotonic()
            for owner, state in self._streams.states.items():
                if state.authority is None:
                    continue
                if now - state.last_observed >= self._periodic:
                    self._observe_quietly(owner, "periodic")
                elif _poll(state) and now - max(state.last_polled, state.last_observed) >= _poll(state):
                    state.last_polled = now
                    self._observe_quietly(owner, "poll", only_if_changed=True)

    def _next_in(self) -> float:
        now = time.monotonic()
        waits = []
        for s in self._streams.states.values():
            if s.authority is not None:
                waits.append(self._periodic - (now - s.last_observed))
                if _poll(s):
                    waits.append(_poll(s) - (now - max(s.last_polled, s.last_observed)))
        return max(0.05, min([*waits, 30.0]))

    def _observe_quietly(self, owner: str, reason: str, only_if_changed: bool = False) -> None:
        try:
            self._streams.snapshot(owner, reason, only_if_changed=only_if_changed)
        except Exception as exc:  # noqa: BLE001 - an unreadable inventory waits for the next try
            log.warning("schedules.observation_failed", scheduler=owner, reason=reason,
                        error=f"{type(exc).__name__}: {exc}"[:300])


def _poll(state: AdapterState) -> float:
    """Seconds between cheap re-reads for an adapter whose scheduler has no change signal (0: none)."""
    value = getattr(state.adapter, "poll_seconds", 0) or 0
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0
