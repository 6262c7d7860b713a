"""How the brain turns one inbound event into a stored row (protocol.md section 5.1).

Pure functions, no I/O: the dedupe id, the occurred_at clamp and the task projection fields are
the parts of the real brain an agent can observe (a resend is a no-op only if our ids match).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

DEDUPE_NAMESPACE = uuid.UUID("c4d2c84e-2f0a-4b6c-9c5b-1d6f9a1e7c2a")
PAST_WINDOW_SECONDS = 400 * 86400.0
FUTURE_WINDOW_SECONDS = 60.0

EVENT_KINDS = frozenset(
    {
        "task.sent", "task.received", "task.started", "task.succeeded", "task.failed",
        "task.retried", "task.revoked", "task.rejected",
        "worker.online", "worker.offline", "worker.heartbeat",
        "queue.depth_report",
        "schedule.run_started", "schedule.run_completed", "schedule.created",
        "schedule.updated", "schedule.deleted", "schedule.snapshot",
        "unknown",
    }
)

# The only kinds that move a task's state in the brain's projection.
TASK_STATES = {
    "task.received": "RECEIVED",
    "task.started": "STARTED",
    "task.succeeded": "SUCCESS",
    "task.failed": "FAILURE",
    "task.retried": "RETRY",
    "task.revoked": "REVOKED",
}
PRIORITIES = frozenset({"critical", "high", "normal", "low"})
MAX_EXCEPTION_CHARS = 8192

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


def occurred_at_seconds(value: Any, now: float) -> float:
    """Unix seconds of an event's occurred_at; naive means UTC; missing/invalid/out of range -> now."""
    if not isinstance(value, str) or not value:
        return now
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return now
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    ts = parsed.timestamp()
    if ts < now - PAST_WINDOW_SECONDS or ts > now + FUTURE_WINDOW_SECONDS:
        return now
    return ts


def brain_event_id(project_id: str, engine: str, task_id: str, kind: str, occurred_ts: float, agent_event_id: Any) -> str:
    """The id the brain stores an event under; equal ids collapse resends and duplicate reports."""
    if task_id:
        return str(uuid.uuid5(DEDUPE_NAMESPACE, f"{project_id}:{engine}:{task_id}:{kind}:{int(occurred_ts)}"))
    if isinstance(agent_event_id, str) and agent_event_id:
        try:
            parsed = uuid.UUID(agent_event_id)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version in (4, 7) and parsed.variant == uuid.RFC_4122:
            return str(uuid.uuid5(DEDUPE_NAMESPACE, f"{project_id}:{parsed}"))
    return str(uuid.uuid4())


def iso_utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


def _text_or_none(value: Any, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit] if limit else text


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value:
        return int(value)
    return None


def prepare_batch(
    events: Iterable[Any], *, project_id: str, agent_id: str, now: float | None = None
) -> tuple[list[tuple], list[tuple], list[dict[str, Any]]]:
    """Split a batch into event rows, task projection rows, and a light summary per stored event.

    Events that are not objects or have an empty engine are dropped, as the real brain does;
    unknown kinds are stored as ``unknown``.
    """
    now = time.time() if now is None else now
    event_rows: list[tuple] = []
    task_rows: list[tuple] = []
    summaries: list[dict[str, Any]] = []
    for ev in events:
        if not isinstance(ev, Mapping):
            continue
        engine = ev.get("engine")
        if not isinstance(engine, str) or not engine:
            continue
        kind = ev.get("kind")
        if kind not in EVENT_KINDS:
            kind = "unknown"
        task_id = ev.get("task_id")
        task_id = task_id if isinstance(task_id, str) else ("" if task_id is None else str(task_id))
        data = ev.get("data")
        if not isinstance(data, Mapping):
            data = {}
        ts = occurred_at_seconds(ev.get("occurred_at"), now)
        agent_event_id = ev.get("id")
        eid = brain_event_id(project_id, engine, task_id, kind, ts, agent_event_id)
        event_rows.append(
            (eid, _text_or_none(agent_event_id), project_id, agent_id, engine, task_id, kind, ts, now, _dumps(data))
        )
        state = TASK_STATES.get(kind)
        if state is not None and task_id:
            task_rows.append(_task_row(project_id, agent_id, engine, task_id, kind, state, ts, now, data))
        summaries.append(
            {"kind": kind, "engine": engine, "task_id": task_id, "task_name": data.get("task_name"), "state": state}
        )
    return event_rows, task_rows, summaries


def _task_row(
    project_id: str, agent_id: str, engine: str, task_id: str, kind: str, state: str, ts: float, now: float,
    data: Mapping[str, Any],
) -> tuple:
    priority = data.get("priority")
    if priority is not None and priority not in PRIORITIES:
        priority = "normal"
    tags = data.get("tags")
    args = data.get("args") if kind in ("task.received", "task.started") else None
    kwargs = data.get("kwargs") if kind in ("task.received", "task.started") else None
    result = data.get("result") if kind == "task.succeeded" else None
    failed = kind == "task.failed"
    return (
        project_id, engine, task_id, agent_id, state,
        _text_or_none(data.get("task_name")),
        _text_or_none(data.get("queue")),
        _text_or_none(data.get("worker")),
        priority,
        _json_or_none(tags),
        _json_or_none(args),
        _json_or_none(kwargs),
        _text_or_none(data.get("parent_task_id")) if kind == "task.received" else None,
        _text_or_none(data.get("root_task_id")) if kind == "task.received" else None,
        _json_or_none(result),
        _int_or_none(data.get("runtime_ms")) if kind in ("task.succeeded", "task.failed") else None,
        _text_or_none(data.get("exception"), MAX_EXCEPTION_CHARS) if failed else None,
        _text_or_none(data.get("traceback")) if failed else None,
        _int_or_none(data.get("retry_count")) if kind == "task.retried" else None,
        kind, ts, now, now,
    )
