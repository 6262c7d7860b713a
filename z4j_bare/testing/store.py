"""The local brain's durable storage: events plus a latest-state-per-task projection (SQLite).

One connection guarded by a lock: ingest runs on the brain's storage thread, queries run on
whatever thread a test calls from. Each event_batch is one transaction (executemany insert and
executemany upsert), which is what keeps ingest above 50k events/s.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .ingest import iso_utc, prepare_batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    agent_event_id TEXT,
    project_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at REAL NOT NULL,
    received_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task ON events (engine, task_id);
CREATE TABLE IF NOT EXISTS tasks (
    project_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    task_id TEXT NOT NULL,
    agent_id TEXT,
    state TEXT NOT NULL,
    task_name TEXT NOT NULL,
    queue TEXT, worker TEXT, priority TEXT NOT NULL, tags TEXT,
    args TEXT, kwargs TEXT, parent_task_id TEXT, root_task_id TEXT,
    result TEXT, runtime_ms INTEGER, exception TEXT, traceback TEXT,
    retry_count INTEGER NOT NULL,
    last_kind TEXT NOT NULL,
    last_event_at REAL NOT NULL,
    first_seen_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project_id, engine, task_id)
);
"""

_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (id, agent_event_id, project_id, agent_id, engine, task_id, kind,"
    " occurred_at, received_at, data) VALUES (?,?,?,?,?,?,?,?,?,?)"
)

# The newest event (by occurred_at) owns the state, so a late resend of an older event never
# regresses a finished task; descriptive fields keep the last non-null value seen.
_UPSERT_TASK = """
INSERT INTO tasks (project_id, engine, task_id, agent_id, state, task_name, queue, worker, priority,
    tags, args, kwargs, parent_task_id, root_task_id, result, runtime_ms, exception, traceback,
    retry_count, last_kind, last_event_at, first_seen_at, updated_at)
VALUES (?,?,?,?,?, COALESCE(?, 'unknown'), ?,?, COALESCE(?, 'normal'), ?,?,?,?,?,?,?,?,?, COALESCE(?, 0), ?,?,?,?)
ON CONFLICT (project_id, engine, task_id) DO UPDATE SET
    agent_id = excluded.agent_id,
    state = CASE WHEN excluded.last_event_at >= tasks.last_event_at THEN excluded.state ELSE tasks.state END,
    last_kind = CASE WHEN excluded.last_event_at >= tasks.last_event_at THEN excluded.last_kind ELSE tasks.last_kind END,
    last_event_at = MAX(excluded.last_event_at, tasks.last_event_at),
    task_name = CASE WHEN excluded.task_name = 'unknown' OR excluded.task_name LIKE '<unknown%'
                     THEN tasks.task_name ELSE excluded.task_name END,
    queue = COALESCE(excluded.queue, tasks.queue),
    worker = COALESCE(excluded.worker, tasks.worker),
    priority = CASE WHEN excluded.priority = 'normal' THEN tasks.priority ELSE excluded.priority END,
    tags = COALESCE(excluded.tags, tasks.tags),
    args = COALESCE(excluded.args, tasks.args),
    kwargs = COALESCE(excluded.kwargs, tasks.kwargs),
    parent_task_id = COALESCE(excluded.parent_task_id, tasks.parent_task_id),
    root_task_id = COALESCE(excluded.root_task_id, tasks.root_task_id),
    result = COALESCE(excluded.result, tasks.result),
    runtime_ms = COALESCE(excluded.runtime_ms, tasks.runtime_ms),
    exception = COALESCE(excluded.exception, tasks.exception),
    traceback = COALESCE(excluded.traceback, tasks.traceback),
    retry_count = MAX(excluded.retry_count, tasks.retry_count),
    updated_at = excluded.updated_at
"""

_JSON_TASK_FIELDS = ("tags", "args", "kwargs", "result")


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
        self._conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA temp_store=MEMORY")
        self._conn.executescript(_SCHEMA)
        self.slow_ingest_per_event = 0.0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- ingest (storage thread) ---------------------------------------------------------------

    def ingest(self, events: list[Any], *, project_id: str, agent_id: str) -> tuple[int, list[dict[str, Any]]]:
        """Store one batch in one transaction; returns (newly inserted count, event summaries)."""
        event_rows, task_rows, summaries = prepare_batch(events, project_id=project_id, agent_id=agent_id)
        delay = self.slow_ingest_per_event
        if delay > 0 and event_rows:
            time.sleep(delay * len(event_rows))
        if not event_rows:
            return 0, summaries
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                before = conn.total_changes
                conn.executemany(_INSERT_EVENT, event_rows)
                accepted = conn.total_changes - before
                if task_rows:
                    conn.executemany(_UPSERT_TASK, task_rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return accepted, summaries

    # -- queries (any thread) ------------------------------------------------------------------

    def _query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in filters.items():
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def events(self, *, engine: str | None = None, kind: str | None = None, task_id: str | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id})
        sql = f"SELECT * FROM events{where} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._event_dict(row) for row in self._query(sql, params)]

    def event_count(self, *, engine: str | None = None, kind: str | None = None, task_id: str | None = None) -> int:
        where, params = self._where({"engine": engine, "kind": kind, "task_id": task_id})
        return self._query(f"SELECT COUNT(*) FROM events{where}", params)[0][0]

    def kind_counts(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self._query("SELECT kind, COUNT(*) FROM events GROUP BY kind")}

    def task(self, engine: str, task_id: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT * FROM tasks WHERE engine = ? AND task_id = ? ORDER BY updated_at DESC LIMIT 1", (engine, task_id)
        )
        return self._task_dict(rows[0]) if rows else None

    def tasks(self, *, state: str | None = None, engine: str | None = None) -> list[dict[str, Any]]:
        where, params = self._where({"state": state, "engine": engine})
        return [self._task_dict(r) for r in self._query(f"SELECT * FROM tasks{where} ORDER BY first_seen_at", params)]

    @staticmethod
    def _event_dict(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["data"] = json.loads(out["data"])
        out["occurred_at_ts"] = out["occurred_at"]
        out["occurred_at"] = iso_utc(out["occurred_at"])
        return out

    @staticmethod
    def _task_dict(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        for name in _JSON_TASK_FIELDS:
            if out[name] is not None:
                out[name] = json.loads(out[name])
        out["last_event_at_ts"] = out["last_event_at"]
        out["last_event_at"] = iso_utc(out["last_event_at"])
        return out
