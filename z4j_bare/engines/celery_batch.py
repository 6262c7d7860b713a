"""How the Celery capture's events reach the buffer: at once, with the task's outcome, or by interval.

Three ways, chosen per process:

- **At once** (the default outside a worker, and for every event that is not held): the event is
  durable before the hook returns.
- **With the task's outcome** (the worker main process of a prefork pool, the default there): a
  task's ``received`` and ``started`` wait in memory, unredacted and unencoded, until its outcome
  (succeeded, failed, retried, rejected, revoked) is captured; then every waiting event and the
  outcome are redacted, encoded and written in one spool ``write()``, before the worker is told
  the outcome (the capture's ``on_success`` runs before Celery's, which acks an ``acks_late``
  task; failure and retry flush what waits before Celery's handler runs). An event never waits
  longer than ``hold`` seconds: a thread writes what is older, so a long task still shows as
  started within that time. The price: a SIGKILL of the main process loses the ``received`` and
  ``started`` of tasks that had no outcome yet and started less than ``hold`` seconds ago;
  nothing that finished is ever lost. Prefork only: there the task runs in a pool child, so the
  arguments held here are never mutated by it.
- **By interval** (``batch_interval`` > 0, opt-in): every event, outcomes included, waits for a
  thread that writes once per interval, trading that window's durability for fewer writes.

Why: a spool write per event cost the worker's serial stage three system calls and three passes
through the redactor's and encoder's entry points per task (docs/performance.md, "Celery").
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ..safety import safe_call

if TYPE_CHECKING:
    from .base import EventSink

MAX_BATCH = 2000
#: Longest a task's received/started may wait in memory for its outcome before a thread writes them.
HOLD_SECONDS = 0.05

Event = tuple[str, "str | None", dict, "float | None"]

_forks = 0  # bumped in every forked child: a Batcher made before the fork must not write from it


def _after_fork_in_child() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class Batcher:
    """Writes the capture's events (see the module docstring). Thread-safe."""

    def __init__(self, sink: EventSink, interval: float, hold: float = HOLD_SECONDS) -> None:
        self._sink = sink
        self.interval = float(interval)
        self.hold = float(hold)
        self._pid = os.getpid()
        self._born = _forks
        self._events: deque[Event] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # held: (monotonic time captured, event), oldest first; the lock also orders the writes
        self._held: list[tuple[float, Event]] = []
        self._held_lock = threading.Lock()
        self._held_wake = threading.Event()
        self._hold_thread: threading.Thread | None = None

    # -- modes ----------------------------------------------------------------------------------
    def enable(self) -> None:
        """Start batching (worker main process only: worker_shutdown flushes before the agent stops)."""
        if self._thread is None and self.interval > 0 and self._home() and not self._stop.is_set():
            self._thread = threading.Thread(target=self._loop, name="z4j-celery-batch", daemon=True)
            self._thread.start()

    def hold_until_outcome(self) -> None:
        """Hold received/started until the task's outcome (a prefork worker's main process)."""
        if self._hold_thread is None and self.interval <= 0 < self.hold and self._home() and not self._stop.is_set():
            self._hold_thread = threading.Thread(target=self._hold_loop, name="z4j-celery-hold", daemon=True)
            self._hold_thread.start()

    def _home(self) -> bool:
        return self._born == _forks and os.getpid() == self._pid

    @property
    def batching(self) -> bool:
        return self._thread is not None and self._born == _forks and not self._stop.is_set()

    @property
    def holding(self) -> bool:
        return self._hold_thread is not None and self._born == _forks and not self._stop.is_set()

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._held)

    # -- capture side ---------------------------------------------------------------------------
    def early(self, kind: str, task_id: str | None, data: dict, occurred_at: float | None = None) -> None:
        """An event before the task's outcome: held when holding, else written like any other."""
        if not self.holding:
            self.event(kind, task_id, data, occurred_at)
            return
        with self._held_lock:
            first = not self._held
            self._held.append((time.monotonic(), (kind, task_id, data, occurred_at)))
        if first:
            self._held_wake.set()

    def event(self, kind: str, task_id: str | None, data: dict, occurred_at: float | None = None) -> None:
        if self.batching:
            q = self._events
            q.append((kind, task_id, data, occurred_at))
            if len(q) == 1 or len(q) >= MAX_BATCH:
                self._wake.set()
            return
        if self._held and self._born == _forks:
            with self._held_lock:  # what waits goes first, in the same write
                items = [e for _, e in self._held]
                self._held.clear()
                items.append((kind, task_id, data, occurred_at))
                self._sink.emit_many(items)
            return
        self._sink.emit(kind, task_id, data, occurred_at)

    def events(self, items: list[Event]) -> None:
        if not self.batching:
            self._sink.emit_many(items)
            return
        self._events.extend(items)
        self._wake.set()

    def flush_held(self) -> None:
        """Write what is held now (before Celery acts on a failure or retry)."""
        if self._held and self._born == _forks:
            self._write_held(float("inf"))

    def flush(self) -> None:
        if not self._home():
            return
        self.flush_held()
        with self._flush_lock:
            while self._events:
                self._sink.emit_many(_take(self._events))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._held_wake.set()
        if self._home():
            for thread in (self._thread, self._hold_thread):
                if thread is not None:
                    thread.join(5.0)
        self.flush()

    # -- threads --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            # Let a burst accumulate so one write carries many events.
            self._stop.wait(self.interval)
            safe_call(self.flush, site="celery.batch.flush")

    def _hold_loop(self) -> None:
        while not self._stop.is_set():
            held = self._held
            try:
                due = held[0][0] + self.hold - time.monotonic()
            except IndexError:  # nothing held: sleep until something is
                self._held_wake.wait(1.0)
                self._held_wake.clear()
                continue
            if due > 0:
                self._stop.wait(due)
                continue
            safe_call(self._write_held, time.monotonic() - self.hold, site="celery.hold.flush")

    def _write_held(self, captured_before: float) -> None:
        with self._held_lock:
            held = self._held
            n = 0
            while n < len(held) and held[n][0] <= captured_before:
                n += 1
            if n:
                items = [e for _, e in held[:n]]
                del held[:n]
                self._sink.emit_many(items)


def _take(q: deque) -> list:
    out = []
    try:
        while len(out) < MAX_BATCH:
            out.append(q.popleft())
    except IndexError:
        pass
    return out
