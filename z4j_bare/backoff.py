"""Per-class reconnect backoff for tenacity: exponential with jitter, capped, never giving up."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .protocol import BACKOFF_POLICIES, BackoffClass, BackoffPolicy

if TYPE_CHECKING:  # tenacity itself is imported by the I/O thread, when it first reconnects
    from tenacity import AttemptManager, RetryCallState


class SessionEnded(Exception):
    """A session attempt ended; ``backoff`` picks the wait, ``immediate`` skips it (reconnect request).

    ``paced``: the attempt itself waited out a timeout (a brain that accepts TCP connections but
    answers nothing: frozen, or its host gone behind a black hole). That wait already spaces the
    attempts, so the next one comes after the class's initial delay, not a grown one: an attempt
    is then almost always pending when the brain answers again, and the session is back within
    seconds of it."""

    def __init__(self, backoff: BackoffClass, reason: str, *, immediate: bool = False, paced: bool = False) -> None:
        super().__init__(reason)
        self.backoff = backoff
        self.reason = reason
        self.immediate = immediate
        self.paced = paced


class Backoff:
    """Delays grow per class only; a healthy session resets every class (protocol.md 8.1)."""

    def __init__(self, caps: Mapping[BackoffClass, float] | None = None, rand: Callable[[], float] = random.random) -> None:
        self._policies = {
            cls: BackoffPolicy(p.initial, min(p.maximum, (caps or {}).get(cls, p.maximum)), p.jitter)
            for cls, p in BACKOFF_POLICIES.items()
        }
        self._next = {cls: p.initial for cls, p in self._policies.items()}
        self.streaks = {cls: 0 for cls in BackoffClass}
        self._rand = rand
        self.last_delay = 0.0

    def reset(self) -> None:
        self._next = {cls: p.initial for cls, p in self._policies.items()}
        self.streaks = {cls: 0 for cls in BackoffClass}

    def next_delay(self, cls: BackoffClass, *, paced: bool = False) -> float:
        policy = self._policies[cls]
        self.streaks[cls] += 1
        if paced:
            base = policy.initial
        else:
            base = min(self._next[cls], policy.maximum)
            self._next[cls] = min(base * 2, policy.maximum)
        self.last_delay = base + self._rand() * base * policy.jitter
        return self.last_delay

    def wait(self, retry_state: RetryCallState) -> float:
        """tenacity ``wait=`` callable."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, SessionEnded):
            return 0.0 if exc.immediate else self.next_delay(exc.backoff, paced=exc.paced)
        return self.next_delay(BackoffClass.CONNECTION)


class Reconnects:
    """tenacity's retry loop over session attempts, run one attempt at a time by the state machine.

    CONNECTING is entered once per attempt; ``next_attempt(failure)`` tells tenacity how the last
    attempt ended (``failure``: the SessionEnded that sent the machine back to CONNECTING), and
    tenacity waits out that failure's class backoff (``wait``, ``sleep``, ``before_sleep``) before
    handing over the next attempt. Returns False instead once stop() was called, and at once if
    stop() comes during the wait (the ``sleep`` given must return early on stop).
    """

    def __init__(self, backoff: Backoff, *, stopping: threading.Event, sleep: Callable[[float], None],
                 before_sleep: Callable[[RetryCallState], None]) -> None:
        self._stopping = stopping
        self._retrying = (backoff.wait, sleep, before_sleep)
        self._attempts: Any = None  # tenacity's loop, made when the first attempt fails
        self._attempt: AttemptManager | None = None

    def next_attempt(self, failure: SessionEnded | None) -> bool:
        if self._attempts is None:
            if failure is None:
                # The first attempt waits for nothing: tenacity (half a MiB a forking worker parent
                # would carry) loads only when an attempt fails, and its loop's first attempt then
                # stands for the one that failed.
                return not self._stopping.is_set()
            self._attempts = self._loop()
            self._attempt = next(self._attempts)
        if self._attempt is not None and failure is not None:
            self._attempt.retry_state.set_exception((type(failure), failure, None))
        if self._stopping.is_set():
            return False
        from tenacity import RetryError

        try:
            self._attempt = next(self._attempts)
        except (RetryError, StopIteration):
            return False
        return not self._stopping.is_set()

    def _loop(self) -> Any:
        from tenacity import Retrying, retry_if_exception_type

        wait, sleep, before_sleep = self._retrying
        stopping = self._stopping
        return iter(Retrying(wait=wait, sleep=sleep, stop=lambda _state: stopping.is_set(),
                             retry=retry_if_exception_type(SessionEnded), before_sleep=before_sleep))
