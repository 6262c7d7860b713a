"""Event records as they travel in ``event_batch`` frames (protocol.md section 5.1).

An event is encoded once, at capture, into canonical JSON text. That text is what the buffer
stores and what the signer splices into frames, so it is never re-encoded and its ``id`` and
``occurred_at`` never change across resends.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .protocol import canonical_text


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
    return datetime.fromtimestamp(time.time() if timestamp is None else timestamp, UTC).isoformat()


def new_event_id() -> str:
    return str(uuid.UUID(bytes=os.urandom(16), version=4))


def build_event(kind: str, engine: str, task_id: str | None, data: dict[str, Any], occurred_at: float | None = None) -> dict[str, Any]:
    """``data`` must already be redacted and JSON-safe (string keys): see Redactor.scrub_data."""
    return {
        "id": new_event_id(),
        "kind": str(kind),
        "engine": engine,
        "task_id": "" if task_id is None else str(task_id),
        "occurred_at": occurred_at_text(occurred_at),
        "data": data,
    }


def encode_event(event: dict[str, Any]) -> str:
    return canonical_text(event)
