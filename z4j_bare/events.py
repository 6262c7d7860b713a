"""Event records as they travel in ``event_batch`` frames (protocol.md section 5.1).

An event is encoded once, at capture, into canonical JSON text. That text is what the buffer
stores and what the signer splices into frames, so it is never re-encoded and its ``id`` and
``occurred_at`` never change across resends.
"""

from __future__ import annotations

import os
import threading
from enum import StrEnum
from typing import Any

from .protocol import EVENT_ZONE, canonical_text, utc_text
from .protocol.canonical import canonical_tree_text, json_string


class EventKind(StrEnum):
    TASK_SENT = "task.sent"
    TASK_RECEIVED = "task.received"
    TASK_STARTED = "task.started"
    TASK_SUCCEEDED = "task.succeeded"
    TASK_FAILED = "task.failed"
    TASK_RETRIED = "task.retried"
    TASK_REVOKED = "task.revoked"
    TASK_REJECTED = "task.rejected"
    WORKER_ONLINE = "worker.online"
    WORKER_OFFLINE = "worker.offline"
    WORKER_HEARTBEAT = "worker.heartbeat"
    QUEUE_DEPTH_REPORT = "queue.depth_report"


def occurred_at_text(timestamp: float | None = None) -> str:
    """``2026-11-28T21:04:50.643607+00:00`` (what ``datetime.isoformat()`` gives): an event's time."""
    return utc_text(timestamp, EVENT_ZONE)


_VARIANT = "89ab"
_POOL_BYTES = 4096
_pool = threading.local()


def _reset_pool() -> None:
    # A forked child must never replay its parent's pre-fetched randomness (duplicate ids).
    global _pool
    _pool = threading.local()


os.register_at_fork(after_in_child=_reset_pool)


def new_event_id() -> str:
    """A random UUID version 4 (the brain dedupes on v4/v7 ids), formatted without uuid.UUID.

    Randomness is fetched 4 KiB at a time per thread (one getrandom() call per 256 ids) and
    formatted into ids in one pass; a call takes the next one.
    """
    pool = _pool
    try:
        return pool.ids.pop()
    except (AttributeError, IndexError):
        pool.ids = ids = _fresh_ids()
        return ids.pop()


def _fresh_ids() -> list[str]:
    h = os.urandom(_POOL_BYTES).hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{_VARIANT[int(h[i + 16], 16) & 3]}{h[i + 17:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, len(h), 32)]


def build_event(kind: str, engine: str, task_id: str | None, data: dict[str, Any], occurred_at: float | None = None) -> dict[str, Any]:
    """``data`` must already be redacted and JSON-safe (string keys): see Redactor.scrub_data."""
    return {
        "id": new_event_id(),
        "kind": str(kind),
        "engine": engine,
        "task_id": "" if task_id is None else str(task_id),
        "occurred_at": utc_text(occurred_at, EVENT_ZONE),
        "data": data,
    }


def encode_event(event: dict[str, Any]) -> str:
    return canonical_text(event)


_json_strings: dict[str, str] = {}


def _quoted(value: str) -> str:
    # engine and kind take a handful of values: quote each once.
    text = _json_strings.get(value)
    if text is None:
        text = canonical_text(value)
        if len(_json_strings) < 1024:
            _json_strings[value] = text
    return text


def event_text(kind: str, engine: str, task_id: str | None, data: dict[str, Any], occurred_at: float | None = None) -> str:
    """``encode_event(build_event(...))`` without building the outer dict: the hot path.

    The outer keys are fixed, so their canonical (sorted) order is written out directly; only
    ``data`` goes through the canonical encoder. A test keeps the two forms identical.
    """
    return event_text_with(kind, engine, task_id, canonical_tree_text(data), occurred_at)


def event_text_with(kind: str, engine: str, task_id: str | None, data_text: str, occurred_at: float | None = None) -> str:
    """``event_text`` for a ``data`` already in canonical text (redacted: see flatdata)."""
    return (
        f'{{"data":{data_text},"engine":{_quoted(engine)},"id":"{new_event_id()}",'
        f'"kind":{_quoted(str(kind))},"occurred_at":"{utc_text(occurred_at, EVENT_ZONE)}",'
        f'"task_id":{json_string("" if task_id is None else str(task_id))}}}'
    )
