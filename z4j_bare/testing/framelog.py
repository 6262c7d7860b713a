"""The wire log (every frame in and out, bounded) and the live listeners (the CLI feed)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..logs import get_logger

log = get_logger(__name__)

FRAME_LOG_MAX = 10_000
FRAME_LOG_MAX_BYTES = 64 * 1024 * 1024

Listener = Callable[[dict[str, Any]], None]


class Listeners:
    """Callbacks run on the brain's loop for each frame, stored event and close; a failing one is logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Listener] = []

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def add(self, callback: Listener) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def remove(self, callback: Listener) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def emit(self, record: dict[str, Any]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(record)
            except Exception:
                log.warning("brain.listener_failed", exc_info=True)


class FrameLog:
    """Entries are ``(at, type or None if rejected, frame_id, agent_id, session_id, raw bytes)``."""

    def __init__(self, listeners: Listeners) -> None:
        self._lock = threading.Lock()
        self._listeners = listeners
        self._in: deque[tuple] = deque()
        self._in_bytes = 0
        self._out: deque[tuple] = deque(maxlen=FRAME_LOG_MAX)

    def log_in(self, raw: bytes, ftype: str | None, frame_id: str | None, agent: Any = None,
               session_id: str | None = None) -> None:
        """One inbound frame; ``ftype`` None marks a frame the brain rejected. ``agent`` is an AgentRow."""
        entry = (time.time(), ftype, frame_id, agent.agent_id if agent else None, session_id, raw)
        with self._lock:
            self._in.append(entry)
            self._in_bytes += len(raw)
            while len(self._in) > FRAME_LOG_MAX or (self._in_bytes > FRAME_LOG_MAX_BYTES and len(self._in) > 1):
                self._in_bytes -= len(self._in.popleft()[5])
        if self._listeners:
            self._listeners.emit({"at": entry[0], "direction": "in", "type": ftype, "id": frame_id,
                                  "agent_id": entry[3], "agent": agent.name if agent else None})

    def log_out(self, data: bytes, ftype: str, frame_id: str, agent_id: str, session_id: str) -> None:
        with self._lock:
            self._out.append((time.time(), ftype, frame_id, agent_id, session_id, data))

    def session_sent(self, data: bytes, ftype: str, frame_id: str, session: Any) -> None:
        """``Session(on_send=...)``: log a frame a session sends (``frames_sent()``)."""
        self.log_out(data, ftype, frame_id, session.agent.agent_id, session.session_id)

    def received(self, ftype: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._in)
        return [_log_entry(e) for e in entries if ftype is None or _entry_type(e) == ftype]

    def sent(self, ftype: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._out)
        return [_log_entry(e) for e in entries if ftype is None or _entry_type(e) == ftype]


def _entry_type(entry: tuple) -> str | None:
    if entry[1] is not None:
        return entry[1]
    try:
        obj = json.loads(entry[5])
    except (ValueError, UnicodeDecodeError):
        return None
    return obj.get("type") if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None


def _log_entry(entry: tuple) -> dict[str, Any]:
    at, ftype, frame_id, agent_id, session_id, raw = entry
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        frame = None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {
        "at": at, "type": ftype or _entry_type(entry), "id": frame_id, "agent_id": agent_id,
        "session_id": session_id, "size": len(raw), "frame": frame, "text": text,
        "accepted": ftype is not None,
    }
