"""Brain-side frame encoding, including the deliberately broken frames the fault knobs send.

The brain signs with its own counter (not ``protocol.Signer``) so a fault frame can take the
session's next seq, carry a chosen ts or v, or be altered after signing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..protocol import SessionBinding, compute_hmac, new_nonce, utc_text

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class OutboundSigner:
    """Signs brain -> agent frames for one session; seq starts at 1."""

    __slots__ = ("_key", "_binding", "seq", "_now")

    def __init__(self, key: bytes, binding: SessionBinding, now: Callable[[], float] = time.time) -> None:
        self._key = key
        self._binding = binding
        self.seq = 0
        self._now = now  # the brain's wall clock

    def __repr__(self) -> str:
        return f"OutboundSigner(session_id={self._binding.session_id!r}, seq={self.seq})"

    def sign(self, ftype: str, frame_id: str, payload: dict[str, Any], *, ts: str | None = None,
             v: int = 2, tamper: bool = False) -> bytes:
        self.seq += 1
        frame: dict[str, Any] = {
            "v": v, "id": frame_id, "ts": ts or wall_text(self._now()), "nonce": new_nonce(), "seq": self.seq,
            "type": ftype, "payload": payload,
        }
        frame["hmac"] = compute_hmac(self._key, {**frame, **self._binding.as_dict()})
        if tamper:
            frame["payload"] = {**payload, "tampered": True}
        return _encode(frame).encode("utf-8")


def unsigned(ftype: str, frame_id: str, payload: dict[str, Any], *, ts: str | None = None) -> bytes:
    return _encode({"v": 2, "id": frame_id, "ts": ts, "type": ftype, "payload": payload}).encode("utf-8")


def past_ts(seconds: float, now: float | None = None) -> str:
    return wall_text((time.time() if now is None else now) - seconds)


def wall_text(ts: float) -> str:
    """POSIX seconds as the envelope's timestamp text."""
    return utc_text(ts)


def harmless_ack_payload() -> dict[str, Any]:
    """An event_batch_ack for a batch the agent never sent: safe to deliver if wrongly accepted."""
    return {"acked_id": "ev_fault_" + uuid.uuid4().hex[:16], "received": 0, "accepted": 0, "rejected": 0}


def fake_command_payload() -> dict[str, Any]:
    return {
        "action": "reconcile_task",
        "target": {"type": "task", "id": "fault:none", "engine": "fault"},
        "parameters": {"task_id": "none", "engine": "fault"},
        "timeout_seconds": 60,
        "issued_by": None,
        "delivery_claim_token": None,
    }
