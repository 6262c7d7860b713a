"""The local brain's tunables, validated once against the real brain's bounds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ..protocol import DEFAULT_MAX_FRAME_BYTES

MIN_FRAME_SIZE = 1024
MAX_FRAME_SIZE = 64 * 1024 * 1024
MAX_CLOCK_OFFSET = 10 * 365 * 86400.0


def _positive(name: str, value: Any, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"LocalBrain({name}=...) must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"LocalBrain({name}={value!r}) is out of range: use a value {bound}")
    return value


@dataclass
class BrainSettings:
    """What every piece of the brain reads per connection or frame (so a change applies to new sessions)."""

    heartbeat_interval: int = 10
    max_frame_size: int = DEFAULT_MAX_FRAME_BYTES
    idle_timeout: float = 90.0
    command_timeout: float = 60.0
    strict_verify: bool = False
    #: Seconds this brain's clock runs ahead of the host's (negative: behind), like a brain
    #: host without NTP: its hello_ack, Date headers, signatures and replay checks use it.
    clock_offset: float = 0.0

    def now(self) -> float:
        """The brain's wall clock (POSIX seconds)."""
        return time.time() + self.clock_offset

    @classmethod
    def checked(cls, *, heartbeat_interval: Any, max_frame_size: Any, idle_timeout: Any, command_timeout: Any,
                strict_verify: Any, clock_offset: Any = 0.0) -> BrainSettings:
        if isinstance(clock_offset, bool) or not isinstance(clock_offset, (int, float)) or not (
            math.isfinite(clock_offset) and abs(clock_offset) <= MAX_CLOCK_OFFSET
        ):
            raise ValueError(f"LocalBrain(clock_offset={clock_offset!r}) must be a number of seconds within "
                             f"+/-{MAX_CLOCK_OFFSET:g}")
        return cls(
            heartbeat_interval=int(_positive("heartbeat_interval", heartbeat_interval, low=1, high=3600)),
            max_frame_size=int(_positive("max_frame_size", max_frame_size, low=MIN_FRAME_SIZE, high=MAX_FRAME_SIZE)),
            idle_timeout=float(_positive("idle_timeout", idle_timeout, low=0.05)),
            command_timeout=float(_positive("command_timeout", command_timeout, low=0.05)),
            strict_verify=bool(strict_verify),
            clock_offset=float(clock_offset),
        )
