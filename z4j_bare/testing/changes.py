"""One lock and a change counter: the brain's state moves under the lock, waiters sleep on the counter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Changes:
    """``lock`` guards the brain's shared rows (agents, sessions, commands); ``bump()`` after each change."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self._version = 0

    def bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait(self, ready: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
        """Return ``ready()``'s first non-None value; ``TimeoutError(describe())`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                seen = self._version
            result = ready()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(describe())
            with self._changed:
                if self._version == seen:
                    self._changed.wait(min(remaining, 0.25))
