"""Inbound verification for the local brain: the protocol Verifier's rules, plus a fast path.

Same order and outcomes as ``protocol.Verifier`` (envelope, HMAC, command_result status, replay
guard). The fast path: when an event_batch arrives in the exact wire layout ``Signer`` and the
reference agent produce (``{"v":2,"id":..,"ts":..,"nonce":..,"seq":..,"hmac":..,"type":
"event_batch","payload":{"events":[...]}}``), the canonical envelope is spliced around the
received events text instead of re-encoding thousands of events, and that text is what gets
stored. Splicing alone would accept events text that is not canonical JSON (which the real
brain rejects), so the full canonical check still runs on every frame up to 64 KiB, on the first
8 frames of a session and on every 8th frame after (``strict=True``: on every frame).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from ..protocol import Frame, FrameType, SessionBinding, Verifier
from ..protocol.canonical import json_string

_FAST_KEYS = frozenset({"v", "id", "ts", "nonce", "seq", "hmac", "type", "payload"})
STRICT_FRAME_BYTES = 64 * 1024
STRICT_FIRST_FRAMES = 8
STRICT_EVERY = 8


class BrainVerifier(Verifier):
    """Verifies the frames of one session; returns the frame and, for event_batch, the events text."""

    def __init__(self, key: bytes, binding: SessionBinding, *, strict: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(key, binding, clock)
        self._strict = strict
        self._frames = 0
        self._agent = json_string(binding.agent_id).encode("utf-8")
        self._project = json_string(binding.project_id).encode("utf-8")
        self._session = json_string(binding.session_id).encode("utf-8")

    def __repr__(self) -> str:
        return f"BrainVerifier(session_id={self._binding.session_id!r})"

    def verify(self, raw: bytes) -> tuple[Frame, bytes | None]:  # type: ignore[override]
        self._frames += 1
        obj, frame, received = self.open(raw)
        events_text = None
        if frame.type is FrameType.EVENT_BATCH:
            events_text = self._spliced(raw, obj, frame, received)
        if events_text is None or self._strict_due(len(raw)):
            self.check_hmac(obj, received)
        return self.accept(frame), events_text

    def _strict_due(self, size: int) -> bool:
        return (
            self._strict or size <= STRICT_FRAME_BYTES or self._frames <= STRICT_FIRST_FRAMES
            or self._frames % STRICT_EVERY == 0
        )

    def _spliced(self, raw: bytes, obj: dict[str, Any], frame: Frame, received: str) -> bytes | None:
        """The events text if the frame has the fast layout and its HMAC matches the splice."""
        seq, ts, nonce = obj.get("seq"), obj.get("ts"), obj.get("nonce")
        if obj.keys() != _FAST_KEYS or frame.payload.keys() != {"events"}:
            return None
        if type(seq) is not int or not isinstance(ts, str) or not isinstance(nonce, str):
            return None
        fid, ts_j, nonce_j = (json_string(x).encode("utf-8") for x in (frame.id, ts, nonce))
        prefix = (
            b'{"v":2,"id":' + fid + b',"ts":' + ts_j + b',"nonce":' + nonce_j + b',"seq":' + str(seq).encode()
            + b',"hmac":' + json_string(received).encode("utf-8") + b',"type":"event_batch","payload":{"events":'
        )
        if not raw.startswith(prefix) or not raw.endswith(b"}}"):
            return None
        events_text = raw[len(prefix):-2]
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (
            b'{"agent_id":', self._agent, b',"id":', fid, b',"nonce":', nonce_j, b',"payload":{"events":',
            events_text, b'},"project_id":', self._project, b',"seq":', str(seq).encode(),
            b',"session_id":', self._session, b',"ts":', ts_j, b',"type":"event_batch","v":2}',
        ):
            mac.update(part)
        return events_text if hmac.compare_digest(mac.hexdigest(), received) else None
