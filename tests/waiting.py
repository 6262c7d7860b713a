"""The one polling wait of the test suite.

A wait in a test is a deadline for a broken agent, not a speed measurement: size ``timeout`` for
CI's noisy 2 cores, and say ``what`` is awaited so a timeout reads as a failure message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Call ``predicate`` every ``interval`` s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
