"""The brain's clock as this agent knows it: the host's clock plus the offset measured at connect.

The brain rejects a signed frame whose ``ts`` is more than 60 s from its own clock and closes the
session (protocol.md 3.3); an agent on a host without NTP (a laptop, a container on a drifting
host, a VM restored from a snapshot) would loop connect -> 4403 forever. So every connect
measures the offset (``measured``: from hello_ack's ``ts``, or the HTTP ``Date`` of the upgrade
or long-poll answer), and the session's signer stamps frames with ``now_text`` and its verifier
checks the brain's frames against ``now``. Replay protection is unchanged: sequence numbers and
nonces are checked as before, only the reference clock moves to the brain's.

The first measurement beyond ``WARN_SKEW_SECONDS`` is logged once, at WARNING, with the fix.
Task events keep the host's times (they are written before any connection exists), so the
brain shows them off by the skew until the host's clock is fixed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

from ..logs import get_logger
from ..protocol import utc_text

# The runtime's records keep the one logger name operators filter on.
log = get_logger("z4j_bare.runtime")

#: Above this the host's clock is worth fixing (doctor warns; the runtime logs it once).
WARN_SKEW_SECONDS = 5.0
#: The brain's own tolerance for a frame's ts: above this, without correction, nothing is delivered.
BRAIN_WINDOW_SECONDS = 60.0


def date_offset(date: str | None, received_at: float) -> float | None:
    """The brain's clock minus ours from an HTTP ``Date`` header read at host time ``received_at``
    (1 s resolution, truncated: its middle is half a second later). None without a usable Date."""
    try:
        brain = parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError, IndexError):
        return None
    return None if brain is None else brain + 0.5 - received_at


def skew_text(offset: float) -> str:
    """``this host's clock is 300.2 s behind the brain's`` (offset = brain - host)."""
    way = "behind" if offset > 0 else "ahead of"
    return f"this host's clock is {abs(offset):.1f} s {way} the brain's"


class BrainClock:
    """Shared by every session of one runtime (any thread reads it; the I/O thread measures)."""

    def __init__(self, wall: Callable[[], float] = time.time, *, warn: bool = True) -> None:
        self._wall = wall
        self._lock = threading.Lock()
        self.offset = 0.0  # brain minus host, seconds
        self.source: str | None = None  # "hello_ack" or "date", once measured
        self.measured_at: float | None = None  # host wall time of the measurement
        self._warned = not warn  # doctor reports the skew in its own stage

    def __repr__(self) -> str:
        return f"BrainClock(offset={self.offset:+.3f}s, source={self.source!r})"

    def now(self) -> float:
        """The brain's time now, as POSIX seconds."""
        return self._wall() + self.offset

    def now_text(self) -> str:
        """The brain's time now, in the envelope's timestamp form (what the signer stamps)."""
        return utc_text(self.now())

    def to_brain(self, host_ts: float | None) -> float | None:
        """A host wall timestamp expressed on the brain's clock (status fields the brain compares)."""
        return None if host_ts is None else host_ts + self.offset

    def measured(self, offset: float, source: str) -> None:
        """A connect measured the brain's clock: use it from now on."""
        with self._lock:
            self.offset, self.source, self.measured_at = float(offset), source, self._wall()
            warn = abs(offset) > WARN_SKEW_SECONDS and not self._warned
            self._warned = self._warned or warn
        if warn:
            consequence = ("without this correction the brain would refuse every signed frame (it allows "
                           f"{BRAIN_WINDOW_SECONDS:.0f} s)" if abs(offset) > BRAIN_WINDOW_SECONDS
                           else "task times the brain shows are off by as much")
            log.warning("runtime.clock_skew",
                        summary=(f"{skew_text(offset)} (measured from the brain's {source}); the agent signs and "
                                 f"checks frames with the brain's time, but {consequence}: synchronise this "
                                 "host's clock (NTP: chrony, systemd-timesyncd)"),
                        skew_seconds=round(offset, 3), source=source)
        else:
            log.debug("runtime.clock_measured", skew_seconds=round(offset, 3), source=source)

    def snapshot(self) -> dict[str, Any]:
        """For health(): the measured skew (brain minus host) and where it came from."""
        return {"skew_seconds": None if self.source is None else round(self.offset, 3), "source": self.source}
