"""HMAC v2 signing and verification bound to a session (protocol.md sections 3.2-3.3)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_bytes, json_string
from .errors import ProtocolError, ReplayError, SignatureError
from .frames import (
    PROTOCOL_VERSION,
    SIGNED_TYPES,
    Frame,
    FrameType,
    decode_json_object,
    frame_from_object,
    new_nonce,
    parse_timestamp,
)
from .timestamps import utc_now_text

CLOCK_SKEW_SECONDS = 60.0
NONCE_WINDOW_SECONDS = 180.0
NONCE_WINDOW_MAX = 4096


@dataclass(frozen=True, slots=True)
class SessionBinding:
    """The three values from hello_ack that every signature is bound to (never sent on the wire)."""

    agent_id: str
    project_id: str
    session_id: str

    def as_dict(self) -> dict[str, str]:
        return {"agent_id": self.agent_id, "project_id": self.project_id, "session_id": self.session_id}


def compute_hmac(key: bytes, envelope: dict[str, Any]) -> str:
    return hmac.new(key, canonical_bytes(envelope), hashlib.sha256).hexdigest()


class Signer:
    """Signs outbound frames for one session and direction; seq starts at 1."""

    __slots__ = ("_key", "_binding", "_seq", "_lock", "_clock")

    def __init__(self, key: bytes, binding: SessionBinding, clock: Callable[[], str] = utc_now_text) -> None:
        self._key = key
        self._binding = binding
        self._seq = 0
        self._lock = threading.Lock()
        self._clock = clock

    def __repr__(self) -> str:
        return f"Signer(session_id={self._binding.session_id!r}, seq={self._seq})"

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def sign(self, ftype: FrameType | str, frame_id: str, payload: dict[str, Any]) -> bytes:
        """Serialize and sign a frame; returns the exact bytes to transmit.

        The payload is normalised through a JSON round trip first so the signature covers what
        the peer will decode (tuples become lists, non-string keys become strings).
        """
        ftype = FrameType(ftype)
        if ftype not in SIGNED_TYPES:
            raise ProtocolError(f"{ftype.value} frames are not signed")
        payload = json.loads(json.dumps(payload, allow_nan=False))
        frame = {
            "v": PROTOCOL_VERSION,
            "id": frame_id,
            "ts": self._clock(),
            "nonce": new_nonce(),
            "seq": self._next_seq(),
            "type": ftype.value,
            "payload": payload,
        }
        frame["hmac"] = compute_hmac(self._key, {**frame, **self._binding.as_dict()})
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def sign_event_batch(self, frame_id: str, event_texts: Sequence[str]) -> bytes:
        """Fast path: events already in canonical JSON text are spliced, never re-encoded.

        The canonical envelope's keys in sorted order are agent_id, id, nonce, payload,
        project_id, seq, session_id, ts, type, v; the wire form is the same text without the
        three binding keys and with hmac.
        """
        b = self._binding
        events = "[" + ",".join(event_texts) + "]"
        fid, nonce, ts = json_string(frame_id), json_string(new_nonce()), json_string(self._clock())
        seq = self._next_seq()
        canonical = (
            f'{{"agent_id":{json_string(b.agent_id)},"id":{fid},"nonce":{nonce},'
            f'"payload":{{"events":{events}}},"project_id":{json_string(b.project_id)},"seq":{seq},'
            f'"session_id":{json_string(b.session_id)},"ts":{ts},"type":"event_batch","v":2}}'
        ).encode("utf-8")
        mac = hmac.new(self._key, canonical, hashlib.sha256).hexdigest()
        return (
            f'{{"v":2,"id":{fid},"ts":{ts},"nonce":{nonce},"seq":{seq},"hmac":"{mac}",'
            f'"type":"event_batch","payload":{{"events":{events}}}}}'
        ).encode("utf-8")


class ReplayGuard:
    """Strictly increasing seq, nonce unseen within 180 s (max 4096 kept), ts within +/-60 s."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._last_seq = 0
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._clock = clock

    def check(self, seq: Any, nonce: Any, ts: Any) -> None:
        now = self._clock()
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ReplayError("seq missing or not a positive integer")
        if seq <= self._last_seq:
            raise ReplayError(f"seq {seq} is not greater than the last accepted seq {self._last_seq}")
        if not isinstance(nonce, str) or not nonce or len(nonce) > 64:
            raise ReplayError("nonce missing or invalid")
        try:
            sent_at = parse_timestamp(ts).timestamp()
        except ProtocolError as exc:
            raise ReplayError(f"ts rejected: {exc}") from None
        if abs(now - sent_at) > CLOCK_SKEW_SECONDS:
            raise ReplayError(f"ts is {now - sent_at:+.1f} s from local clock (window +/-{CLOCK_SKEW_SECONDS:.0f} s)")
        self._expire(now)
        if nonce in self._nonces:
            raise ReplayError("nonce was already used in this session")
        self._last_seq = seq
        self._nonces[nonce] = now
        while len(self._nonces) > NONCE_WINDOW_MAX:
            self._nonces.popitem(last=False)

    def _expire(self, now: float) -> None:
        horizon = now - NONCE_WINDOW_SECONDS
        while self._nonces:
            oldest, seen = next(iter(self._nonces.items()))
            if seen >= horizon:
                break
            del self._nonces[oldest]


class Verifier:
    """Verifies inbound signed frames of one session: envelope, HMAC first, then replay guard."""

    def __init__(self, key: bytes, binding: SessionBinding, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._binding = binding
        self._guard = ReplayGuard(clock)

    def __repr__(self) -> str:
        return f"Verifier(session_id={self._binding.session_id!r})"

    def verify(self, data: bytes | str) -> Frame:
        obj, frame, received = self.open(data)
        self.check_hmac(obj, received)
        return self.accept(frame)

    # The three steps are public so a receiver with a faster HMAC path (the local brain splices
    # event batches) keeps exactly the same order and outcomes.
    def open(self, data: bytes | str) -> tuple[dict[str, Any], Frame, str]:
        """Parse the envelope of a signed frame; returns (raw object, frame, received hmac)."""
        obj = decode_json_object(data)
        frame = frame_from_object(obj)
        if frame.type not in SIGNED_TYPES:
            raise ProtocolError(f"{frame.type.value} frame is not allowed after the handshake")
        received = obj.get("hmac")
        if not isinstance(received, str) or not received:
            raise SignatureError("frame has no hmac")
        return obj, frame, received

    def check_hmac(self, obj: dict[str, Any], received: str) -> None:
        envelope = {k: v for k, v in obj.items() if k != "hmac"}
        envelope.update(self._binding.as_dict())
        try:
            expected = compute_hmac(self._key, envelope)
        except ValueError:
            raise SignatureError("frame cannot be canonicalized (NaN or Infinity)") from None
        if not hmac.compare_digest(expected, received):
            raise SignatureError("hmac mismatch")

    def accept(self, frame: Frame) -> Frame:
        """Checks after a good HMAC: command_result status, then the replay guard."""
        if frame.type is FrameType.COMMAND_RESULT and frame.payload.get("status") not in ("success", "failed"):
            raise ProtocolError("command_result status must be success or failed")
        self._guard.check(frame.seq, frame.nonce, frame.ts)
        return frame
