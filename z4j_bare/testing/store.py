"""The local brain's durable storage: events plus a latest-state-per-task projection (SQLite).

One connection guarded by a lock: ingest runs on the brain's storage thread, queries run on
whatever thread a test calls from. Each event_batch is one transaction: the frame's events
text is stored once (``batches``), and each new event is a narrow row appended in arrival
order (its position is the rowid). Dedupe happens in memory: a dict from every stored event's
dedupe key (the first 8 bytes of its id) to its position, loaded from the table at open.
Appending instead of inserting at a random rowid is what keeps the per-event cost flat as the
table grows. Counts per (engine, kind) are cached and brought up to date from the rows
appended since the last count (a rowid range), so the count queries tests and benchmarks poll
do not scan the whole table.

The task projection is merged in memory (ingest.merge_task_rows: the newest event owns the
state, descriptive fields keep the last non-null value) and written to the tasks table when
something reads it or the brain stops. Its rows are kept as ``marshal`` bytes in a dict keyed
by text, so neither the dict nor its rows are tracked by the garbage collector: parsing a
1 MB frame triggers full collections every few frames, and a dict of 100,000s of tuples or
lists made each of those walk every task. That layout keeps per-event ingest cheap; the cost
moves to reads, which decode a batch's JSON when an event is asked for.
"""

from __future__ import annotations

import json
import marshal
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .ingest import TASK_COLUMNS, forget, iso_utc, merge_task_rows, prepare_batch, task_key

_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,
    id BLOB NOT NULL,
    batch INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    engine TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at REAL NOT NULL
);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    frame_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    events BLOB NOT NULL
);
""" + _EVENTS_TABLE + """CREATE TABLE IF NOT EXISTS tasks (
    key INTEGER PRIMARY KEY,
    project_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    task_id TEXT NOT NULL,
    agent_id TEXT,
    state TEXT NOT NULL,
    task_name TEXT NOT NULL,
    queue TEXT, worker TEXT, priority TEXT NOT NULL, tags TEXT,
    args_from BLOB, result_from BLOB, parent_task_id TEXT, root_task_id TEXT,
    runtime_ms INTEGER, exception TEXT, traceback TEXT,
    retry_count INTEGER NOT NULL,
    last_kind TEXT NOT NULL,
    last_event_at REAL NOT NULL,
    first_seen_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""

_INSERT_BATCH = "INSERT INTO batches (seq, frame_id, project_id, agent_id, received_at, events) VALUES (?,?,?,?,?,?)"
_INSERT_EVENT = (
    "INSERT INTO events (pos, key, id, batch, idx, engine, task_id, kind, occurred_at) VALUES (?,?,?,?,?,?,?,?,?)"
)
# Layout of the first release of this store: events keyed by the dedupe key (random rowid inserts),
# tasks.args_from/result_from holding event ids. _migrate() converts such a file on open.
_MIGRATE_V1 = """
ALTER TABLE events RENAME TO events_v1;
""" + _EVENTS_TABLE + """INSERT INTO events (key, id, batch, idx, engine, task_id, kind, occurred_at)
    SELECT key, id, batch, idx, engine, task_id, kind, occurred_at FROM events_v1 ORDER BY batch, idx;
DROP TABLE events_v1;
"""
_MIGRATE_V1_TASKS = """
CREATE INDEX z4j_migrate_ids ON events (id);
UPDATE tasks SET args_from = (SELECT e.pos FROM events e WHERE e.id = tasks.args_from)
    WHERE typeof(args_from) = 'blob';
UPDATE tasks SET result_from = (SELECT e.pos FROM events e WHERE e.id = tasks.result_from)
    WHERE typeof(result_from) = 'blob';
DROP INDEX z4j_migrate_ids;
"""


_REPLACE_TASK = (
    "INSERT OR REPLACE INTO tasks (" + ", ".join(TASK_COLUMNS) + ") VALUES (" + ", ".join("?" * len(TASK_COLUMNS)) + ")"
)
_NAME, _PRIORITY, _RETRY = (TASK_COLUMNS.index(c) for c in ("task_name", "priority", "retry_count"))


_pack_row, _unpack_row = marshal.dumps, marshal.loads
_MARSHAL_VERSION = 2  # floats as binary (exact), no back-references: the quickest to write and read


def _task_text(project_id: str, engine: str, task_id: str) -> str:
    """The projection's key for a task: the text ingest.task_key hashes (so the same tasks share a row)."""
    return f"{project_id}\x00{engine}\x00{task_id}"


def _with_defaults(row: list[Any], key: int) -> tuple:
    """The row as the tasks table stores it: its key, and defaults for the NOT NULL columns."""
    out = list(row)
    out[0] = key
    if out[_NAME] is None:
        out[_NAME] = "unknown"
    if out[_PRIORITY] is None:
        out[_PRIORITY] = "normal"
    if out[_RETRY] is None:
        out[_RETRY] = 0
    return tuple(out)


_EVENT_SELECT = (
    "SELECT e.id, e.batch, e.idx, e.engine, e.task_id, e.kind, e.occurred_at, b.project_id, b.agent_id,"
    " b.received_at, b.frame_id FROM events e JOIN batches b ON b.seq = e.batch"
)

_DECODED_BATCH_CACHE = 16
# Task rows plus where their args / result events are (joins on the events rowid).
_TASK_SELECT = (
    "SELECT " + ", ".join(f"t.{c}" for c in TASK_COLUMNS) + ", ea.batch, ea.idx, er.batch, er.idx FROM tasks t"
    " LEFT JOIN events ea ON ea.pos = t.args_from LEFT JOIN events er ON er.pos = t.result_from"
)


class BrainStore:
    """SQLite storage at ``path`` (a file path or ``":memory:"``)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise ValueError(f"db_path: directory {str(parent)!r} does not exist; create it or pass ':memory:'")
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA temp_store=MEMORY")
        self._migrate()
        self._conn.executescript(_SCHEMA)
        self._next_batch = (self._conn.execute("SELECT MAX(seq) FROM batches").fetchone()[0] or 0) + 1
        self.slow_ingest_per_event = 0.0
        # One ingest at a time (the brain has one storage thread; this keeps direct callers safe too).
        self._ingest_lock = threading.Lock()
        # Dedupe key -> position of every stored event, and the next position.
        self._positions: dict[int, int] = dict(self._conn.execute("SELECT key, pos FROM events"))
        self._next_pos = (self._conn.execute("SELECT MAX(pos) FROM events").fetchone()[0] or 0) + 1
        # Rows per (engine, kind) among the positions below _counted_to (see _fresh_counts).
        self._counts: dict[tuple[str, str], int] = {}
        self._counted_to = 1
        # The task projection lives in memory and reaches the tasks table when someone reads it:
        # an UPSERT of 23 columns per event was the brain's most expensive ingest step. Keys are
        # task_key's input text, values marshal'd rows (see the module docstring); _dirty is a
        # dict rather than a set because only dicts of plain values are left untracked.
        self._tasks: dict[str, bytes] = {
            _task_text(row[1], row[2], row[3]): _pack_row(list(row), _MARSHAL_VERSION)
            for row in self._conn.execute(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks")
        }
        self._dirty: dict[str, None] = {}

    def _migrate(self) -> None:
        conn = self._conn
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        if not columns or "pos" in columns:
            return
        script = _MIGRATE_V1
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'").fetchone():
            script += _MIGRATE_V1_TASKS
        conn.execute("BEGIN")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._flush_tasks()
            self._conn.close()

    # -- ingest (one storage thread) -----------------------------------------------------------

    def ingest(
        self, events: list[Any], events_text: bytes, *, frame_id: str, project_id: str, agent_id: str,
        summaries: bool = False,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Store one batch in one transaction; returns (newly inserted count, event summaries).

        ``events_text`` is the JSON text of ``events`` exactly as received (kept for reads).
        """
        with self._ingest_lock:
            with self._lock:
                batch = self._next_batch
                self._next_batch += 1
            now = time.time()
            prep = prepare_batch(
                events, batch=batch, project_id=project_id, agent_id=agent_id, now=now,
                positions=self._positions, next_pos=self._next_pos, summaries=summaries,
            )
            committed = False
            try:
                delay = self.slow_ingest_per_event
                if delay > 0 and prep.kept:
                    time.sleep(delay * prep.kept)
                if not prep.rows:  # nothing kept, or only duplicates: nothing stored, projection untouched
                    return 0, prep.notes
                with self._lock:
                    conn = self._conn
                    conn.execute("BEGIN")
                    try:
                        conn.execute(_INSERT_BATCH, (batch, frame_id, project_id, agent_id, now, events_text))
                        conn.executemany(_INSERT_EVENT, prep.rows)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    committed = True
                    self._next_pos += len(prep.rows)
                    projection, dirty = self._tasks, self._dirty
                    for (engine, task_id), row in prep.tasks.items():
                        tk = f"{project_id}\x00{engine}\x00{task_id}"  # _task_text, inlined
                        prior = projection.get(tk)
                        projection[tk] = _pack_row(
                            row if prior is None else merge_task_rows(_unpack_row(prior), row), _MARSHAL_VERSION
                        )
                        dirty[tk] = None
            except BaseException:
                if not committed:
                    forget(self._positions, prep.rows)
                raise
            return len(prep.rows), prep.notes

    def flush(self) -> None:
        with self._lock:
            self._flush_tasks()

    def _flush_tasks(self) -> None:
        """Write changed projection rows to the tasks table (caller holds ``_lock``)."""
        if not self._dirty:
            return
        projection = self._tasks
        rows = []
        for tk in self._dirty:
            row = _unpack_row(projection[tk])
            key = row[0]
            if key is None:  # first flush of this task: its key, once (merges keep it)
                key = row[0] = task_key(row[1], row[2], row[3])
                projection[tk] = _pack_row(row, _MARSHAL_VERSION)
            rows.append(_with_defaults(row, key))
        self._dirty = {}
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(_REPLACE_TASK, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- queries (any thread) ------------------------------------------------------------------

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock:
            if "FROM tasks" in sql:
                self._flush_tasks()
            return self._conn.execute(sql, params).fetchall()

    @staticmethod
    def _where(filters: dict[str, Any], prefix: str = "") -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in filters.items():
            if value is not None:
                clauses.append(f"{prefix}{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _event_at(self, batch: int | None, idx: int | None, cache: OrderedDict[int, list[Any]]) -> dict[str, Any]:
        """The stored event ``idx`` of ``batch``; ``cache`` (one per read call) keeps a few decoded batches.

        The cache lives only as long as the read: decoded events are thousands of objects the
        garbage collector tracks, and keeping them between reads made every later collection
        (during ingest) walk them.
        """
        if batch is None or idx is None:
            return {}
        events = cache.get(batch)
        if events is None:
            with self._lock:
                row = self._conn.execute("SELECT events FROM batches WHERE seq = ?", (batch,)).fetchone()
            events = cache[batch] = json.loads(row[0]) if row else []
            while len(cache) > _DECODED_BATCH_CACHE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(batch)
        ev = events[idx] if 0 <= idx < len(events) else None
        return ev if isinstance(ev, dict) else {}

    def events(self, *, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id}, "e.")
        rows = self._query(f"{_EVENT_SELECT}{where} ORDER BY e.pos", params)
        out = []
        cache: OrderedDict[int, list[Any]] = OrderedDict()
        for eid, batch, idx, eng, tid, knd, occurred, project_id, agent_id, received_at, frame_id in rows:
            original = self._event_at(batch, idx, cache)
            data = original.get("data")
            out.append({
                "id": str(uuid.UUID(bytes=eid)),
                "agent_event_id": original.get("id"),
                "project_id": project_id,
                "agent_id": agent_id,
                "engine": eng,
                "task_id": tid,
                "kind": knd,
                "occurred_at": iso_utc(occurred),
                "occurred_at_ts": occurred,
                "occurred_at_sent": original.get("occurred_at"),
                "received_at": received_at,
                "frame_id": frame_id,
                "data": data if isinstance(data, dict) else {},
            })
        return out

    def event_count(self, *, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> int:
        if task_id is None and (engine is None or type(engine) is str) and (kind is None or type(kind) is str):
            with self._lock:
                return sum(
                    n for (eng, knd), n in self._fresh_counts().items()
                    if (engine is None or eng == engine) and (kind is None or knd == kind)
                )
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id})
        return self._query(f"SELECT COUNT(*) FROM events{where}", params)[0][0]

    def _fresh_counts(self) -> dict[tuple[str, str], int]:
        """Rows per (engine, kind), counting only the rows appended since the last call (caller holds _lock)."""
        if self._counted_to < self._next_pos:
            counts = self._counts
            for engine, kind, n in self._conn.execute(
                "SELECT engine, kind, COUNT(*) FROM events WHERE pos >= ? AND pos < ? GROUP BY engine, kind",
                (self._counted_to, self._next_pos),
            ):
                counts[(engine, kind)] = counts.get((engine, kind), 0) + n
            self._counted_to = self._next_pos
        return self._counts

    def kind_counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        with self._lock:
            for (_engine, kind), n in self._fresh_counts().items():
                totals[kind] = totals.get(kind, 0) + n
        return {kind: totals[kind] for kind in sorted(totals) if totals[kind]}

    def task(self, engine: str, task_id: str) -> dict[str, Any] | None:
        rows = self._query(
            f"{_TASK_SELECT} WHERE t.engine = ? AND t.task_id = ? ORDER BY t.updated_at DESC LIMIT 1", (engine, task_id),
        )
        return self._task_dict(rows[0], OrderedDict()) if rows else None

    def tasks(self, *, state: str | None = None, engine: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"state": state, "engine": engine}, "t.")
        rows = self._query(f"{_TASK_SELECT}{where} ORDER BY t.first_seen_at, t.rowid", params)
        cache: OrderedDict[int, list[Any]] = OrderedDict()
        return [self._task_dict(r, cache) for r in rows]

    def _task_dict(self, row: tuple, cache: OrderedDict[int, list[Any]]) -> dict[str, Any]:
        """A task row (plus the batch/idx of its args and result events) as the API returns it."""
        out = dict(zip(TASK_COLUMNS, row, strict=False))
        del out["key"], out["args_from"], out["result_from"]
        args_batch, args_idx, result_batch, result_idx = row[len(TASK_COLUMNS):]
        args_data = self._event_at(args_batch, args_idx, cache).get("data")
        result_data = self._event_at(result_batch, result_idx, cache).get("data")
        args_data = args_data if isinstance(args_data, dict) else {}
        result_data = result_data if isinstance(result_data, dict) else {}
        out["args"] = args_data.get("args")
        out["kwargs"] = args_data.get("kwargs")
        out["result"] = result_data.get("result")
        out["tags"] = json.loads(out["tags"]) if out["tags"] is not None else None
        out["last_event_at_ts"] = out["last_event_at"]
        out["last_event_at"] = iso_utc(out["last_event_at"])
        return out
