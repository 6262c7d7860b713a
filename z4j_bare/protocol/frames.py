"""Frame envelope: types, ids, timestamps, strict parsing (protocol.md section 2)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .errors import ProtocolError, ProtocolVersionError

PROTOCOL_VERSION = 2
PROTOCOL_VERSION_TEXT = "2"
MAX_EVENTS_PER_BATCH = 5000
DEFAULT_MAX_FRAME_BYTES = 1_048_576
MAX_ID_CHARS = 64


class FrameType(StrEnum):
    HELLO = "hello"
    HELLO_ACK = "hello_ack"
    EVENT_BATCH = "event_batch"
    EVENT_BATCH_ACK = "event_batch_ack"
    HEARTBEAT = "heartbeat"
    AGENT_STATUS = "agent_status"
    COMMAND = "command"
    COMMAND_ACK = "command_ack"
    COMMAND_RESULT = "command_result"
    REGISTRY_DELTA = "registry_delta"
    ERROR = "error"


UNSIGNED_TYPES = frozenset({FrameType.HELLO, FrameType.HELLO_ACK})
SIGNED_TYPES = frozenset(FrameType) - UNSIGNED_TYPES
_TYPES = {t.value: t for t in FrameType}


@dataclass(frozen=True, slots=True)
class Frame:
    """One parsed frame. ``raw`` is the decoded JSON object exactly as received."""

    type: FrameType
    id: str
    payload: dict[str, Any]
    ts: str | None = None
    seq: int | None = None
    nonce: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def new_frame_id(prefix: str, hex_chars: int = 12) -> str:
    return prefix + secrets.token_hex(hex_chars // 2)


def parse_timestamp(value: Any) -> datetime:
    """Parse an ISO-8601 timestamp; refuse naive or unparseable values."""
    if not isinstance(value, str) or not value:
        raise ProtocolError("timestamp missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ProtocolError("timestamp is not ISO-8601") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ProtocolError("timestamp is not timezone-aware")
    return parsed


def decode_json_object(data: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not a JSON object")
    return obj


def frame_from_object(obj: dict[str, Any]) -> Frame:
    """Strict envelope checks shared by every frame type."""
    v = obj.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError("frame field v is missing or not an integer")
    if v != PROTOCOL_VERSION:
        raise ProtocolVersionError(f"unsupported frame version {v}")
    ftype = _TYPES.get(obj.get("type"))  # type: ignore[arg-type]
    if ftype is None:
        raise ProtocolError(f"unknown frame type {str(obj.get('type'))[:40]!r}")
    fid = obj.get("id")
    if not isinstance(fid, str) or not 1 <= len(fid) <= MAX_ID_CHARS:
        raise ProtocolError("frame id must be a string of 1..64 characters")
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise ProtocolError("frame payload must be an object")
    seq = obj.get("seq")
    nonce = obj.get("nonce")
    return Frame(type=ftype, id=fid, payload=payload, ts=obj.get("ts"), seq=seq, nonce=nonce, raw=obj)


def parse_frame(data: bytes | str) -> Frame:
    """Parse one frame without verifying a signature (use Verifier for signed types)."""
    return frame_from_object(decode_json_object(data))


def encode_unsigned(ftype: FrameType, frame_id: str, payload: dict[str, Any], ts: str | None = None) -> bytes:
    """hello / hello_ack serialization."""
    obj = {"v": PROTOCOL_VERSION, "id": frame_id, "ts": ts, "type": ftype.value, "payload": payload}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
