"""The one reading of a brain's ``hello_ack`` (the runtime's WebSocket transport and doctor use it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION_TEXT,
    BackoffClass,
    FrameType,
    ProtocolError,
    SessionBinding,
    parse_frame,
    parse_timestamp,
)
from ..protocol.frames import MAX_ID_CHARS
from .base import TransportError

MIN_FRAME_BYTES, MAX_FRAME_BYTES = 1024, 64 * 2**20
MIN_HEARTBEAT, MAX_HEARTBEAT = 1.0, 3600.0


@dataclass(frozen=True, slots=True)
class HelloAck:
    binding: SessionBinding
    heartbeat_interval: float
    max_frame: int
    brain_version: str | None
    brain_time: float | None  # the ack's ts as POSIX seconds, when it carries one


def read_hello_ack(data: bytes | str, *, default_heartbeat: float) -> HelloAck:
    """Parse and check the brain's first frame.

    ProtocolError: not a hello_ack, or ids missing or malformed. TransportError with the
    incompatible backoff class: the brain speaks another protocol version. Out-of-range
    heartbeat interval or frame size fall back to the defaults (protocol.md 4.1)."""
    frame = parse_frame(data)
    if frame.type is not FrameType.HELLO_ACK:
        raise ProtocolError(f"expected hello_ack, got {frame.type.value}")
    p = frame.payload
    if str(p.get("protocol_version")) != PROTOCOL_VERSION_TEXT:
        raise TransportError(f"brain speaks protocol {p.get('protocol_version')!r}, this agent speaks "
                             f"{PROTOCOL_VERSION_TEXT}", BackoffClass.INCOMPATIBLE)
    ids = [p.get("agent_id"), p.get("project_id"), p.get("session_id")]
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_ID_CHARS for v in ids):
        raise ProtocolError("hello_ack lacks agent_id, project_id or session_id (each 1..64 characters)")
    interval = p.get("heartbeat_interval_seconds")
    if not (isinstance(interval, (int, float)) and not isinstance(interval, bool)
            and MIN_HEARTBEAT <= interval <= MAX_HEARTBEAT):
        interval = default_heartbeat
    max_frame = p.get("max_frame_size_bytes")
    if not (isinstance(max_frame, int) and MIN_FRAME_BYTES <= max_frame <= MAX_FRAME_BYTES):
        max_frame = DEFAULT_MAX_FRAME_BYTES
    try:
        brain_time: float | None = parse_timestamp(frame.ts).timestamp()
    except ProtocolError:
        brain_time = None
    version = p.get("brain_version")
    return HelloAck(SessionBinding(*ids), float(interval), max_frame, version if isinstance(version, str) else None,
                    brain_time)
