"""The Celery adapter's memory of original requests, so ``retry_task`` works by reference.

Celery keeps no copy of a task's arguments once the message is acked (the result backend only
does with ``result_extended=True``), and the brain never sends arguments back (they are
redacted). The worker main process sees every request at ``task_received``, so the adapter
keeps the original publish parameters here: a small SQLite file next to the event buffer,
bounded by row count and age. Rows hold *unredacted* arguments, exactly like the broker message
they came from; the file never leaves the host and is created with mode 0600.

Values are encoded with kombu's JSON (datetimes, UUIDs, decimals survive); a request whose
arguments JSON cannot carry (the task was sent with pickle) is stored pickled, which is no
more trust than the worker already gave the message.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

import structlog

log = structlog.get_logger("z4j_bare.engines.celery")

DEFAULT_MAX_ROWS = 100_000
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0
#: A request bigger than this is remembered as "too large" (retry then fails with that reason).
MAX_RECORD_BYTES = 1 << 20
PRUNE_EVERY = 1000


def _encode(record: dict[str, Any]) -> tuple[str, bytes]:
    from kombu.utils.json import dumps

    try:
        return "json", dumps(record).encode("utf-8")
    except Exception:  # noqa: BLE001 - arguments JSON cannot carry; the message used pickle
        return "pickle", pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(codec: str, blob: bytes) -> dict[str, Any]:
    if codec == "json":
        from kombu.utils.json import loads

        return loads(blob.decode("utf-8"))
    if codec == "pickle":
        return pickle.loads(blob)
    raise ValueError(f"unknown codec {codec!r}")


class RequestStore:
    """task_id -> original publish parameters. Thread-safe; one connection per process."""

    def __init__(self, path: str, *, max_rows: int = DEFAULT_MAX_ROWS, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.path = str(path)
        self.max_rows = max(1, int(max_rows))
        self.ttl = float(ttl)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._since_prune = 0

    def __repr__(self) -> str:
        return f"RequestStore(path={self.path!r}, max_rows={self.max_rows})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # A forked child must not reuse the parent's handle: open its own.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS celery_requests ("
                " task_id TEXT PRIMARY KEY, stored_at REAL NOT NULL, codec TEXT NOT NULL, body BLOB NOT NULL)"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS celery_requests_age ON celery_requests(stored_at)")
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    def put_many(self, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
        now = time.time()
        rows = []
        for task_id, record in records:
            codec, blob = _encode(record)
            if len(blob) > MAX_RECORD_BYTES:
                codec, blob = _encode({"too_large": len(blob), "name": record.get("name")})
            rows.append((task_id, now, codec, blob))
        if not rows:
            return 0
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO celery_requests VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._since_prune += len(rows)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune(conn, now)
        return len(rows)

    def put(self, task_id: str, record: dict[str, Any]) -> None:
        self.put_many([(task_id, record)])

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT codec, body, stored_at FROM celery_requests WHERE task_id = ?", (task_id,)
            ).fetchone()
        if row is None or row[2] < time.time() - self.ttl:
            return None
        return _decode(row[0], row[1])

    def count(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM celery_requests").fetchone()[0])

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("DELETE FROM celery_requests WHERE stored_at < ?", (now - self.ttl,))
        excess = int(conn.execute("SELECT COUNT(*) FROM celery_requests").fetchone()[0]) - self.max_rows
        if excess > 0:
            conn.execute(
                "DELETE FROM celery_requests WHERE task_id IN "
                "(SELECT task_id FROM celery_requests ORDER BY stored_at LIMIT ?)", (excess,)
            )

    def prune(self) -> None:
        with self._lock:
            self._prune(self._connection(), time.time())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
