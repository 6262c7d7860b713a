"""Per-class reconnect backoff for tenacity: exponential with jitter, capped, never giving up."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from tenacity import RetryCallState

from .protocol import BACKOFF_POLICIES, BackoffClass, BackoffPolicy


class SessionEnded(Exception):
    """A session attempt ended; ``backoff`` picks the wait, ``immediate`` skips it (reconnect request)."""

    def __init__(self, backoff: BackoffClass, reason: str, *, immediate: bool = False) -> None:
        super().__init__(reason)
        self.backoff = backoff
        self.reason = reason
        self.immediate = immediate


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

    def next_delay(self, cls: BackoffClass) -> float:
        policy = self._policies[cls]
        base = min(self._next[cls], policy.maximum)
        self._next[cls] = min(base * 2, policy.maximum)
        self.streaks[cls] += 1
        self.last_delay = base + self._rand() * base * policy.jitter
        return self.last_delay

    def wait(self, retry_state: RetryCallState) -> float:
        """tenacity ``wait=`` callable."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, SessionEnded):
            return 0.0 if exc.immediate else self.next_delay(exc.backoff)
        return self.next_delay(BackoffClass.CONNECTION)
