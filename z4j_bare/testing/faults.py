"""Fault knobs: make the local brain misbehave in the ways a real network and brain can."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..protocol import CloseCode

if TYPE_CHECKING:
    from .brain import LocalBrain

AGENT_FAULT_KINDS = frozenset(
    {"tampered", "replayed", "stale", "v3", "oversized", "error_fatal", "error", "unsigned_command"}
)


class BrainFaults:
    """Plain attributes are read by the brain on every frame or connection; set them any time.

    * ``withhold_acks``: store event batches but never send ``event_batch_ack``.
    * ``ack_delay``: seconds to wait before each ``event_batch_ack``.
    * ``drop_after_frames``: after this many more inbound frames, abort the TCP connection
      without a close frame (the frame that trips it is neither stored nor acked). One-shot.
    * ``stall``: accept TCP connections but never answer the HTTP upgrade.
    * ``stall_hello_ack``: complete the upgrade and read ``hello``, never send ``hello_ack``.
    * ``advertise_max_frame_size``: for new sessions, advertise and enforce this frame cap.
    * ``slow_ingest_per_event``: storage sleeps this many seconds per stored event.
    """

    def __init__(self, brain: LocalBrain) -> None:
        self._brain = brain
        self._lock = threading.Lock()
        self.withhold_acks = False
        self.ack_delay = 0.0
        self.drop_after_frames: int | None = None
        self.stall = False
        self.stall_hello_ack = False
        self.advertise_max_frame_size: int | None = None
        self._reject: list[int] = []

    def __repr__(self) -> str:
        active = {k: v for k, v in self.snapshot().items() if v not in (False, 0, 0.0, None, [])}
        return f"BrainFaults({active})"

    @property
    def slow_ingest_per_event(self) -> float:
        return self._brain._store.slow_ingest_per_event

    @slow_ingest_per_event.setter
    def slow_ingest_per_event(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("faults.slow_ingest_per_event must be >= 0 seconds")
        self._brain._store.slow_ingest_per_event = float(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "withhold_acks": self.withhold_acks,
            "ack_delay": self.ack_delay,
            "drop_after_frames": self.drop_after_frames,
            "stall": self.stall,
            "stall_hello_ack": self.stall_hello_ack,
            "advertise_max_frame_size": self.advertise_max_frame_size,
            "slow_ingest_per_event": self.slow_ingest_per_event,
            "reject_next": list(self._reject),
        }

    def reset(self) -> None:
        """Back to a well-behaved brain."""
        self.withhold_acks = False
        self.ack_delay = 0.0
        self.drop_after_frames = None
        self.stall = False
        self.stall_hello_ack = False
        self.advertise_max_frame_size = None
        self.slow_ingest_per_event = 0.0
        with self._lock:
            self._reject.clear()

    # -- connection-level ----------------------------------------------------------------------

    def reject_next(self, n: int, code: int = CloseCode.RATE_LIMITED) -> None:
        """Accept the upgrade of the next ``n`` connections, then close each with ``code``."""
        if n < 0:
            raise ValueError("faults.reject_next: n must be >= 0")
        with self._lock:
            self._reject.extend([int(code)] * n)

    def _take_reject(self) -> int | None:
        with self._lock:
            return self._reject.pop(0) if self._reject else None

    def _take_drop(self) -> bool:
        """Count one inbound frame against ``drop_after_frames``; True when it trips."""
        with self._lock:
            if self.drop_after_frames is None:
                return False
            self.drop_after_frames -= 1
            if self.drop_after_frames <= 0:
                self.drop_after_frames = None
                return True
            return False

    def close_with(self, code: int, reason: str = "", *, agent_id: str | None = None) -> int:
        """Close the open sessions (of one agent, or all) now with ``code``; returns how many."""
        return self._brain._close_sessions(int(code), reason or f"closed by fault knob ({code})", agent_id)

    def send_to_agent(self, kind: str, *, agent_id: str | None = None, **options: Any) -> int:
        """Send one bad frame to each open session (of one agent, or all); returns how many.

        kinds: ``tampered`` (payload edited after signing), ``replayed`` (last frame again,
        same seq and nonce), ``stale`` (ts 120 s in the past; ``skew=`` to change), ``v3``
        (correctly signed with v=3), ``oversized`` (signed, ``size=`` bytes, default 1 MiB + 1
        KiB), ``error_fatal`` / ``error`` (error frame; ``code=``, ``message=``),
        ``unsigned_command`` (a command without nonce/seq/hmac).
        """
        if kind not in AGENT_FAULT_KINDS:
            raise ValueError(f"faults.send_to_agent: unknown kind {kind!r}; use one of {sorted(AGENT_FAULT_KINDS)}")
        return self._brain._send_fault_frames(kind, agent_id, options)
