"""Fault knobs: make the local brain misbehave in the ways a real network and brain can.

The knobs act through the brain's public pieces: the storage (``slow_ingest_per_event``), the
session hub (closing sessions, finding where to send a bad frame), the server (running that on
the brain's loop), and the ``take_reject`` / ``take_drop`` calls the WebSocket endpoint makes.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from ..logs import get_logger
from ..protocol import DEFAULT_MAX_FRAME_BYTES, CloseCode, FrameType
from . import wire

if TYPE_CHECKING:
    from .server import BrainServer
    from .session import Session
    from .sessions import SessionHub
    from .store import BrainStore

log = get_logger(__name__)

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

    def __init__(self, store: BrainStore, hub: SessionHub, server: BrainServer) -> None:
        self._store = store
        self._hub = hub
        self._server = server
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
        return self._store.slow_ingest_per_event

    @slow_ingest_per_event.setter
    def slow_ingest_per_event(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("faults.slow_ingest_per_event must be >= 0 seconds")
        self._store.slow_ingest_per_event = float(seconds)

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

    def take_reject(self) -> int | None:
        """The close code for this new connection if ``reject_next`` is armed (consumes one)."""
        with self._lock:
            return self._reject.pop(0) if self._reject else None

    def take_drop(self) -> bool:
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
        reason = reason or f"closed by fault knob ({code})"
        return self._server.call(self._hub.close_matching(int(code), reason, agent_id)) or 0

    # -- bad frames to the agent ---------------------------------------------------------------

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
        return self._server.call(self._send_all(kind, agent_id, options)) or 0

    async def _send_all(self, kind: str, agent_id: str | None, options: dict[str, Any]) -> int:
        count = 0
        for sess in self._hub.sessions(agent_id):
            try:
                await _send_fault(sess, kind, options)
                count += 1
            except ConnectionClosed:
                pass
        return count


async def _send_fault(sess: Session, kind: str, options: dict[str, Any]) -> None:
    ack_type = FrameType.EVENT_BATCH_ACK.value
    fid = "eba_ev_fault_" + secrets.token_hex(8)
    if kind == "tampered":
        await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), tamper=True)
    elif kind == "replayed":
        if sess.last_sent is None:
            await sess.send_signed(ack_type, fid, wire.harmless_ack_payload())
        await sess.send_raw(sess.last_sent, "replayed", fid)
    elif kind == "stale":
        ts = wire.past_ts(float(options.get("skew", 120.0)), sess.now())
        await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), ts=ts)
    elif kind == "v3":
        await sess.send_signed(ack_type, fid, wire.harmless_ack_payload(), v=3)
    elif kind == "oversized":
        size = int(options.get("size", DEFAULT_MAX_FRAME_BYTES + 1024))
        payload = {**wire.harmless_ack_payload(), "padding": "x" * size}
        await sess.send_signed(ack_type, fid, payload)
    elif kind in ("error_fatal", "error"):
        fid = "err_fault_" + secrets.token_hex(8)
        payload = {
            "code": options.get("code", "scheduler_upgrade_required"),
            "message": options.get("message", "error frame sent by the local brain's fault knob"),
            "fatal": kind == "error_fatal",
        }
        await sess.send_signed(FrameType.ERROR.value, fid, payload)
    else:  # unsigned_command
        fid = str(uuid.uuid4())
        data = wire.unsigned(FrameType.COMMAND.value, fid, wire.fake_command_payload(), ts=wire.wall_text(sess.now()))
        await sess.send_raw(data, FrameType.COMMAND.value, fid)
    log.info("brain.fault_frame_sent", kind=kind, agent_id=sess.agent.agent_id, session_id=sess.session_id)
