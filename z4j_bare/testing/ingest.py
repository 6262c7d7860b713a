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
from datetime import UTC, datetime, timedelta
from struct import Struct
from typing import Any, NamedTuple

from ..protocol import utc_text

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
(_STATE, _NAME, _PRIORITY, _RETRY, _LAST_KIND, _LAST_AT) = (
    _I["state"], _I["task_name"], _I["priority"], _I["retry_count"], _I["last_kind"], _I["last_event_at"]
)
# Columns where the newest non-null value wins.
_TAKE_NON_NULL = tuple(_I[name] for name in (
    "agent_id", "queue", "worker", "tags", "args_from", "result_from", "parent_task_id", "root_task_id",
    "runtime_ms", "exception", "traceback", "updated_at",
))


class PreparedBatch(NamedTuple):
    """What one pass over an event batch produced (see prepare_batch)."""

    rows: list[tuple]                         # (pos, key, id, batch, idx, engine, task_id, kind, occurred_at)
    tasks: dict[tuple[str, str], list[Any]]   # (engine, task_id) -> merged task row (TASK_COLUMNS order, key None)
    notes: list[dict[str, Any]]
    kept: int                                 # events kept (new or duplicate)


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
    return None if ts is None else utc_text(ts)


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


_ID = Struct(">QQ")
_unpack_id, _pack_id = _ID.unpack_from, _ID.pack
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
# Unix seconds of "YYYY-MM-DDTHH:MM:SS" prefixes already parsed (bounded; any thread may use it).
_SECONDS: dict[str, int] = {}
_SECONDS_MAX = 65536


def _prefix_seconds(prefix: str) -> int | None:
    """Whole unix seconds of a UTC ``YYYY-MM-DDTHH:MM:SS`` text, or None if it is not exactly that."""
    if (
        len(prefix) != 19 or not prefix.isascii() or prefix[4] != "-" or prefix[7] != "-" or prefix[10] != "T"
        or prefix[13] != ":" or prefix[16] != ":" or prefix[11:13] > "23"
        or not (prefix[:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16] + prefix[17:]).isdigit()
    ):
        return None
    try:
        parsed = datetime.fromisoformat(prefix)
    except ValueError:
        return None
    seconds = (parsed - _EPOCH) // _SECOND
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[prefix] = seconds
    return seconds


def prepare_batch(
    events: Sequence[Any], *, batch: int, project_id: str, agent_id: str, now: float | None = None,
    positions: dict[int, int] | None = None, next_pos: int = 1, summaries: bool = False,
) -> PreparedBatch:
    """One pass over a batch: the rows to insert, the batch's merged task rows and the notes.

    ``positions`` maps the dedupe key of every stored event to its position (the events table's
    rowid). An event whose key is there, or earlier in this batch, is a duplicate: no row, but
    its task row still takes part in the merge (the store applies the whole batch's projection
    when anything in the batch was new). New events get the positions
    ``next_pos``, ``next_pos + 1``, ... in order, and their keys are added to ``positions``
    (the caller removes them with ``forget`` if the batch is not stored; so does this function
    if it raises). Events that are not objects or have an empty engine are dropped, as the real
    brain does; unknown kinds are stored as ``unknown``.
    """
    now = time.time() if now is None else now
    positions = {} if positions is None else positions
    low, high = now - PAST_WINDOW_SECONDS, now + FUTURE_WINDOW_SECONDS
    rows: list[tuple] = []
    tasks: dict[tuple[str, str], list[Any]] = {}
    notes: list[dict[str, Any]] = []
    kept = 0
    pos = next_pos
    kinds, states, known = EVENT_KINDS, TASK_STATES, positions.get
    name_prefix = _NS_BYTES + f"{project_id}:".encode()
    try:
        for idx, ev in enumerate(events):
            if type(ev) is not dict:
                continue
            engine = ev.get("engine")
            if not engine or type(engine) is not str:
                continue
            kept += 1
            kind = ev.get("kind")
            if kind not in kinds:
                kind = "unknown"
            task_id = ev.get("task_id")
            if type(task_id) is not str:
                task_id = "" if task_id is None else str(task_id)
            ts, eid, key = _identity(ev, name_prefix, project_id, engine, task_id, kind, now, low, high)
            ref = known(key)
            if ref is None:
                ref = positions[key] = pos
                pos += 1
                rows.append((ref, key, eid, batch, idx, engine, task_id, kind, ts))
            state = states.get(kind)
            if state is not None and task_id:
                data = ev.get("data")
                row = _task_row(project_id, agent_id, engine, task_id, kind, state, ts, now,
                                data if type(data) is dict else {}, ref)
                tk = (engine, task_id)
                prior = tasks.get(tk)
                tasks[tk] = row if prior is None else merge_task_rows(prior, row)
            if summaries:
                data = ev.get("data")
                notes.append({"kind": kind, "engine": engine, "task_id": task_id,
                              "task_name": data.get("task_name") if type(data) is dict else None, "state": state})
    except BaseException:
        forget(positions, rows)
        raise
    return PreparedBatch(rows, tasks, notes, kept)


def _occurred_ts(occurred: Any, now: float, low: float, high: float) -> float:
    """``occurred_at_seconds`` with a fast path for the agent's own format.

    "YYYY-MM-DDTHH:MM:SS.ffffff+00:00" or "...Z": exactly what datetime.fromisoformat(...)
    .timestamp() returns, computed from the cached whole seconds.
    """
    if type(occurred) is str and (
        (len(occurred) == 32 and occurred[26:] == "+00:00") or (len(occurred) == 27 and occurred[26] == "Z")
    ) and occurred[19] == ".":
        frac = occurred[20:26]
        if frac.isascii() and frac.isdigit():
            whole = _SECONDS.get(occurred[:19])
            if whole is None:
                whole = _prefix_seconds(occurred[:19])
            if whole is not None:
                ts = (whole * 1_000_000 + int(frac)) / 1_000_000
                return now if ts < low or ts > high else ts
    return occurred_at_seconds(occurred, now)


def _identity(ev: dict[str, Any], name_prefix: bytes, project_id: str, engine: str, task_id: str, kind: str,
              now: float, low: float, high: float) -> tuple[float, bytes, int]:
    """An event's occurred_at seconds, its 16-byte dedupe id and its row key (one call per event).

    ``name_prefix`` is the namespace bytes + "<project_id>:".
    """
    ts = _occurred_ts(ev.get("occurred_at"), now, low, high)
    if task_id:
        # Inlined uuid5 (see _uuid5_bytes): this is on the ingest hot path.
        hi, lo = _unpack_id(hashlib.sha1(name_prefix + f"{engine}:{task_id}:{kind}:{int(ts)}".encode()).digest())
        hi = (hi & 0xFFFFFFFFFFFF0FFF) | 0x5000
        eid = _pack_id(hi, (lo & 0x3FFFFFFFFFFFFFFF) | 0x8000000000000000)
        return ts, eid, hi - 0x10000000000000000 if hi >> 63 else hi
    eid = event_id_bytes(project_id, engine, task_id, kind, ts, ev.get("id"))
    return ts, eid, int.from_bytes(eid[:8], "big", signed=True)


def forget(positions: dict[int, int], rows: Sequence[tuple]) -> None:
    """Undo prepare_batch's additions to ``positions`` (the batch was not stored)."""
    for row in rows:
        positions.pop(row[1], None)


def _task_row(
    project_id: str, agent_id: str, engine: str, task_id: str, kind: str, state: str, ts: float, now: float,
    data: Mapping[str, Any], ref: int,
) -> list[Any]:
    """A task row for one event; ``ref`` is the position of the stored event with its dedupe id."""
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
            row[11] = ref
        if kind == "task.received":
            parent, root = get("parent_task_id"), get("root_task_id")
            if parent is not None:
                row[13] = _text(parent)
            if root is not None:
                row[14] = _text(root)
    elif kind == "task.succeeded":
        if "result" in data:
            row[12] = ref
        row[15] = _int(get("runtime_ms"))
    elif kind == "task.failed":
        row[15] = _int(get("runtime_ms"))
        row[16] = _text(get("exception"), MAX_EXCEPTION_CHARS)
        row[17] = _text(get("traceback"))
    elif kind == "task.retried":
        row[18] = _int(get("retry_count"))
    return row


def merge_task_rows(old: Sequence[Any], new: Sequence[Any]) -> list[Any]:
    """Apply ``new`` on top of ``old`` (the rules of the task projection: the newest event owns the state)."""
    out = list(old)
    if new[_LAST_AT] >= old[_LAST_AT]:
        out[_STATE] = new[_STATE]
        out[_LAST_KIND] = new[_LAST_KIND]
        out[_LAST_AT] = new[_LAST_AT]
    name = new[_NAME]
    if not (name is None or name == "unknown" or (isinstance(name, str) and name.startswith("<unknown"))) or (
        old[_NAME] is None
    ):
        out[_NAME] = name
    if new[_PRIORITY] not in (None, "normal"):
        out[_PRIORITY] = new[_PRIORITY]
    for i in _TAKE_NON_NULL:
        if new[i] is not None:
            out[i] = new[i]
    out[_RETRY] = max(old[_RETRY] or 0, new[_RETRY] or 0) or old[_RETRY]
    return out
