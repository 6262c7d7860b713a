"""How the brain turns one inbound event into a stored row (protocol.md section 5.1).

Pure functions, no I/O: the dedupe id, the occurred_at clamp and the task projection merge are
the parts of the real brain an agent can observe (a resend is a no-op only if our ids match).
Written for throughput: one pass per event, no per-event JSON encoding (the frame's events
text is stored once per batch and events point into it by index).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

DEDUPE_NAMESPACE = uuid.UUID("c4d2c84e-2f0a-4b6c-9c5b-1d6f9a1e7c2a")
_NS_BYTES = DEDUPE_NAMESPACE.bytes
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

# Column order of a task projection row (store.py inserts them in this order).
TASK_COLUMNS = (
    "key", "project_id", "engine", "task_id", "agent_id", "state", "task_name", "queue", "worker",
    "priority", "tags", "args_from", "result_from", "parent_task_id", "root_task_id", "runtime_ms",
    "exception", "traceback", "retry_count", "last_kind", "last_event_at", "first_seen_at", "updated_at",
)
_I = {name: i for i, name in enumerate(TASK_COLUMNS)}


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


def _uuid5_bytes(name: str) -> bytes:
    # uuid.uuid5 without building a UUID object: same bytes, a few times faster.
    raw = bytearray(hashlib.sha1(_NS_BYTES + name.encode("utf-8")).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def event_id_bytes(project_id: str, engine: str, task_id: str, kind: str, occurred_ts: float, agent_event_id: Any) -> bytes:
    """The 16 bytes of the id the brain stores an event under."""
    if task_id:
        return _uuid5_bytes(f"{project_id}:{engine}:{task_id}:{kind}:{int(occurred_ts)}")
    if isinstance(agent_event_id, str) and agent_event_id:
        try:
            parsed = uuid.UUID(agent_event_id)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.version in (4, 7) and parsed.variant == uuid.RFC_4122:
            return _uuid5_bytes(f"{project_id}:{parsed}")
    return uuid.uuid4().bytes


def brain_event_id(project_id: str, engine: str, task_id: str, kind: str, occurred_ts: float, agent_event_id: Any = None) -> str:
    """The id (uuid string) the real brain stores an event under; equal ids collapse resends."""
    return str(uuid.UUID(bytes=event_id_bytes(project_id, engine, task_id, kind, occurred_ts, agent_event_id)))


def row_key(id_bytes: bytes) -> int:
    """SQLite rowid for a 16-byte id (its first 8 bytes, signed): dedupe without a second index."""
    return int.from_bytes(id_bytes[:8], "big", signed=True)


def task_key(project_id: str, engine: str, task_id: str) -> int:
    digest = hashlib.blake2b(f"{project_id}\x00{engine}\x00{task_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def iso_utc(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(value: Any, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:limit] if limit else text


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 2**62:
        return int(value)
    return None


def prepare_batch(
    events: Sequence[Any], *, batch: int, project_id: str, agent_id: str, now: float | None = None,
    summaries: bool = False,
) -> tuple[list[tuple], list[tuple], list[dict[str, Any]]]:
    """Event rows ``(key, id, batch, idx, engine, task_id, kind, occurred_at)``, merged task rows
    (one per task, TASK_COLUMNS order) and, if asked, a light summary per kept event.

    Events that are not objects or have an empty engine are dropped, as the real brain does;
    unknown kinds are stored as ``unknown``.
    """
    now = time.time() if now is None else now
    event_rows: list[tuple] = []
    tasks: dict[tuple[str, str], list[Any]] = {}
    notes: list[dict[str, Any]] = []
    seen_ts: dict[Any, float] = {}
    kinds, states, sha1, ns = EVENT_KINDS, TASK_STATES, hashlib.sha1, _NS_BYTES
    for idx, ev in enumerate(events):
        if type(ev) is not dict:
            continue
        engine = ev.get("engine")
        if not engine or type(engine) is not str:
            continue
        kind = ev.get("kind")
        if kind not in kinds:
            kind = "unknown"
        task_id = ev.get("task_id")
        if type(task_id) is not str:
            task_id = "" if task_id is None else str(task_id)
        occurred = ev.get("occurred_at")
        ts = seen_ts.get(occurred) if type(occurred) is str else None
        if ts is None:
            ts = occurred_at_seconds(occurred, now)
            if type(occurred) is str:
                seen_ts[occurred] = ts
        if task_id:
            # Inlined _uuid5_bytes: this loop is the ingest hot path.
            raw = bytearray(sha1(ns + f"{project_id}:{engine}:{task_id}:{kind}:{int(ts)}".encode()).digest()[:16])
            raw[6] = (raw[6] & 0x0F) | 0x50
            raw[8] = (raw[8] & 0x3F) | 0x80
            eid = bytes(raw)
        else:
            eid = event_id_bytes(project_id, engine, task_id, kind, ts, ev.get("id"))
        event_rows.append((int.from_bytes(eid[:8], "big", signed=True), eid, batch, idx, engine, task_id, kind, ts))
        data = ev.get("data")
        if type(data) is not dict:
            data = {}
        state = states.get(kind)
        if state is not None and task_id:
            row = _task_row(project_id, agent_id, engine, task_id, kind, state, ts, now, data, eid)
            prior = tasks.get((engine, task_id))
            tasks[(engine, task_id)] = row if prior is None else merge_task_rows(prior, row)
        if summaries:
            notes.append({"kind": kind, "engine": engine, "task_id": task_id,
                          "task_name": data.get("task_name"), "state": state})
    rows = []
    for (engine, task_id), row in tasks.items():
        row[0] = task_key(project_id, engine, task_id)
        rows.append(tuple(row))
    return event_rows, rows, notes


def _task_row(
    project_id: str, agent_id: str, engine: str, task_id: str, kind: str, state: str, ts: float, now: float,
    data: Mapping[str, Any], eid: bytes,
) -> list[Any]:
    get = data.get
    priority = get("priority")
    if priority is not None and priority not in PRIORITIES:
        priority = "normal"
    tags = get("tags")
    name, queue, worker = get("task_name"), get("queue"), get("worker")
    row = [
        None, project_id, engine, task_id, agent_id, state,
        name if name is None or type(name) is str else str(name),
        queue if queue is None or type(queue) is str else str(queue),
        worker if worker is None or type(worker) is str else str(worker),
        priority, None if tags is None else json.dumps(tags, default=str),
        None, None, None, None, None, None, None, None, kind, ts, now, now,
    ]
    if kind == "task.received" or kind == "task.started":
        if get("args") is not None or get("kwargs") is not None:
            row[11] = eid
        if kind == "task.received":
            row[13] = _text(get("parent_task_id"))
            row[14] = _text(get("root_task_id"))
    elif kind == "task.succeeded":
        if "result" in data:
            row[12] = eid
        row[15] = _int(get("runtime_ms"))
    elif kind == "task.failed":
        row[15] = _int(get("runtime_ms"))
        row[16] = _text(get("exception"), MAX_EXCEPTION_CHARS)
        row[17] = _text(get("traceback"))
    elif kind == "task.retried":
        row[18] = _int(get("retry_count"))
    return row


def _name_is_placeholder(name: Any) -> bool:
    return name is None or name == "unknown" or (isinstance(name, str) and name.startswith("<unknown"))


def merge_task_rows(old: list[Any], new: list[Any]) -> list[Any]:
    """Apply ``new`` on top of ``old`` (the rules of the task projection: the newest event owns the state)."""
    out = list(old)
    if new[_I["last_event_at"]] >= old[_I["last_event_at"]]:
        out[_I["state"]] = new[_I["state"]]
        out[_I["last_kind"]] = new[_I["last_kind"]]
        out[_I["last_event_at"]] = new[_I["last_event_at"]]
    if not _name_is_placeholder(new[_I["task_name"]]) or old[_I["task_name"]] is None:
        out[_I["task_name"]] = new[_I["task_name"]]
    if new[_I["priority"]] not in (None, "normal"):
        out[_I["priority"]] = new[_I["priority"]]
    for name in ("agent_id", "queue", "worker", "tags", "args_from", "result_from", "parent_task_id",
                 "root_task_id", "runtime_ms", "exception", "traceback", "updated_at"):
        if new[_I[name]] is not None:
            out[_I[name]] = new[_I[name]]
    out[_I["retry_count"]] = max(old[_I["retry_count"]] or 0, new[_I["retry_count"]] or 0) or old[_I["retry_count"]]
    return out
