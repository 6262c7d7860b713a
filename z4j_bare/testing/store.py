"""The local brain's durable storage: events plus a latest-state-per-task projection (SQLite).

One connection guarded by a lock: ingest runs on the brain's storage thread, queries run on
whatever thread a test calls from. Each event_batch is one transaction: the frame's events
text is stored once (``batches``), each kept event is a narrow row keyed by its dedupe id
(``INSERT OR IGNORE`` on the rowid, no second index), and the task projection is merged in
memory (ingest.merge_task_rows: the newest event owns the state, descriptive fields keep the
last non-null value) and written to the tasks table when something reads it or the brain stops.
That layout keeps per-event ingest cheap; the cost moves to reads, which decode a batch's JSON
when an event is asked for.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .ingest import TASK_COLUMNS, iso_utc, merge_task_rows, prepare_batch, row_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    frame_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    events BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    key INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    batch INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    engine TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
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
_INSERT_EVENT = "INSERT OR IGNORE INTO events (key, id, batch, idx, engine, task_id, kind, occurred_at) VALUES (?,?,?,?,?,?,?,?)"


_REPLACE_TASK = (
    "INSERT OR REPLACE INTO tasks (" + ", ".join(TASK_COLUMNS) + ") VALUES (" + ", ".join("?" * len(TASK_COLUMNS)) + ")"
)
_DEFAULTS = {TASK_COLUMNS.index("task_name"): "unknown", TASK_COLUMNS.index("priority"): "normal",
             TASK_COLUMNS.index("retry_count"): 0}


def _with_defaults(row: list[Any]) -> tuple:
    return tuple(_DEFAULTS.get(i, value) if value is None else value for i, value in enumerate(row))


_EVENT_SELECT = (
    "SELECT e.id, e.batch, e.idx, e.engine, e.task_id, e.kind, e.occurred_at, b.project_id, b.agent_id,"
    " b.received_at, b.frame_id FROM events e JOIN batches b ON b.seq = e.batch"
)
_DECODED_BATCH_CACHE = 16


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
        self._conn.executescript(_SCHEMA)
        self._next_batch = (self._conn.execute("SELECT MAX(seq) FROM batches").fetchone()[0] or 0) + 1
        self._decoded: OrderedDict[int, list[Any]] = OrderedDict()
        self.slow_ingest_per_event = 0.0
        # The task projection lives in memory and reaches the tasks table when someone reads it:
        # an UPSERT of 23 columns per event was the brain's most expensive ingest step.
        self._tasks: dict[int, list[Any]] = {
            row[0]: list(row) for row in self._conn.execute(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks")
        }
        self._dirty: set[int] = set()

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
        with self._lock:
            batch = self._next_batch
            self._next_batch += 1
        now = time.time()
        event_rows, task_rows, notes = prepare_batch(
            events, batch=batch, project_id=project_id, agent_id=agent_id, now=now, summaries=summaries
        )
        delay = self.slow_ingest_per_event
        if delay > 0 and event_rows:
            time.sleep(delay * len(event_rows))
        if not event_rows:
            return 0, notes
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.execute(_INSERT_BATCH, (batch, frame_id, project_id, agent_id, now, events_text))
                before = conn.total_changes
                conn.executemany(_INSERT_EVENT, event_rows)
                accepted = conn.total_changes - before
                if accepted == 0:
                    conn.execute("DELETE FROM batches WHERE seq = ?", (batch,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if accepted:
                projection, dirty = self._tasks, self._dirty
                for row in task_rows:
                    prior = projection.get(row[0])
                    projection[row[0]] = list(row) if prior is None else merge_task_rows(prior, row)
                    dirty.add(row[0])
        return accepted, notes

    def flush(self) -> None:
        with self._lock:
            self._flush_tasks()

    def _flush_tasks(self) -> None:
        """Write changed projection rows to the tasks table (caller holds ``_lock``)."""
        if not self._dirty:
            return
        rows = [_with_defaults(self._tasks[key]) for key in self._dirty]
        self._dirty = set()
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

    def _batch_events(self, batch: int) -> list[Any]:
        with self._lock:
            cached = self._decoded.get(batch)
            if cached is not None:
                self._decoded.move_to_end(batch)
                return cached
            row = self._conn.execute("SELECT events FROM batches WHERE seq = ?", (batch,)).fetchone()
        decoded = json.loads(row[0]) if row else []
        with self._lock:
            self._decoded[batch] = decoded
            while len(self._decoded) > _DECODED_BATCH_CACHE:
                self._decoded.popitem(last=False)
        return decoded

    def _event_at(self, batch: int, idx: int) -> dict[str, Any]:
        events = self._batch_events(batch)
        ev = events[idx] if 0 <= idx < len(events) else None
        return ev if isinstance(ev, dict) else {}

    def events(self, *, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id}, "e.")
        rows = self._query(f"{_EVENT_SELECT}{where} ORDER BY e.batch, e.idx", params)
        out = []
        for eid, batch, idx, eng, tid, knd, occurred, project_id, agent_id, received_at, frame_id in rows:
            original = self._event_at(batch, idx)
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
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id})
        return self._query(f"SELECT COUNT(*) FROM events{where}", params)[0][0]

    def kind_counts(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self._query("SELECT kind, COUNT(*) FROM events GROUP BY kind")}

    def task(self, engine: str, task_id: str) -> dict[str, Any] | None:
        rows = self._query(
            f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks WHERE engine = ? AND task_id = ? ORDER BY updated_at DESC LIMIT 1",
            (engine, task_id),
        )
        return self._task_dict(rows[0]) if rows else None

    def tasks(self, *, state: str | None = None, engine: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"state": state, "engine": engine})
        rows = self._query(f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks{where} ORDER BY first_seen_at, rowid", params)
        return [self._task_dict(r) for r in rows]

    def _data_of(self, id_bytes: bytes | None) -> dict[str, Any]:
        if id_bytes is None:
            return {}
        rows = self._query("SELECT batch, idx FROM events WHERE key = ?", (row_key(id_bytes),))
        if not rows:
            return {}
        data = self._event_at(rows[0][0], rows[0][1]).get("data")
        return data if isinstance(data, dict) else {}

    def _task_dict(self, row: tuple) -> dict[str, Any]:
        out = dict(zip(TASK_COLUMNS, row, strict=True))
        del out["key"]
        args_data = self._data_of(out.pop("args_from"))
        result_data = self._data_of(out.pop("result_from"))
        out["args"] = args_data.get("args")
        out["kwargs"] = args_data.get("kwargs")
        out["result"] = result_data.get("result")
        out["tags"] = json.loads(out["tags"]) if out["tags"] is not None else None
        out["last_event_at_ts"] = out["last_event_at"]
        out["last_event_at"] = iso_utc(out["last_event_at"])
        return out
