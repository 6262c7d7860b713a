"""What the agent remembers of Dramatiq messages, so retry works by reference.

Dramatiq keeps no copy of a message once it is acked, and the brain never sends arguments back
(they are redacted). Every process that captures (workers when they take a message, producers
when they send one) remembers the message as it was encoded for the broker, then its outcome,
in a small SQLite file shared by all the deployment's dramatiq processes on this host
(``dramatiq-messages-<deployment>.sqlite`` next to the buffers, mode 0600, bounded by rows and
age). Rows hold **unredacted** messages, exactly like the broker did; the file never leaves the
host. The agent process reads it for ``retry_task``, ``cancel_task`` (was the message taken
already?), dead-letter details and reconcile.

Writers only queue; a thread per process commits a burst about 20 ms later, and keeps a burst
the file refused for its next try (``queued_store``, shared with the Celery request store). An
older write never overwrites a newer one (rows carry the time of the observation).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from .queued_store import QueuedStore

DEFAULT_MAX_ROWS = 100_000
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0   # dramatiq's dead-letter TTL
MAX_BODY_BYTES = 1 << 20
LINGER_SECONDS = 0.02
PRUNE_EVERY = 2000

_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS dramatiq_messages ("
     " message_id TEXT PRIMARY KEY, seen_at REAL NOT NULL, queue TEXT NOT NULL, actor TEXT NOT NULL,"
     " state TEXT NOT NULL, redis_id TEXT, attempts INTEGER NOT NULL DEFAULT 1, error TEXT,"
     " body BLOB)"),
    "CREATE INDEX IF NOT EXISTS dramatiq_messages_age ON dramatiq_messages(seen_at)",
)
_PUT = (
    "INSERT INTO dramatiq_messages(message_id, seen_at, queue, actor, state, redis_id, attempts, error, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(message_id) DO UPDATE SET"
    " seen_at = excluded.seen_at, queue = excluded.queue, actor = excluded.actor, state = excluded.state,"
    " redis_id = coalesce(excluded.redis_id, redis_id), attempts = max(attempts, excluded.attempts),"
    " error = coalesce(excluded.error, error), body = coalesce(excluded.body, body)"
    " WHERE excluded.seen_at >= dramatiq_messages.seen_at"
)
_COLUMNS = ("message_id", "seen_at", "queue", "actor", "state", "redis_id", "attempts", "error", "body")

# States, in the order a message goes through them.
ENQUEUED = "enqueued"    # sent by a producer running the agent
TAKEN = "taken"          # a worker took it off its queue (running soon or now)
RETRYING = "retrying"    # failed, Retries re-enqueued it with a delay
SUCCEEDED = "succeeded"
FAILED = "failed"        # final; dead-lettered when the broker nacked it
SKIPPED = "skipped"
FINISHED = frozenset({SUCCEEDED, FAILED, SKIPPED})


class MessageStore(QueuedStore):
    """message_id -> the message as sent, its queue, actor, state. Thread-safe, any process."""

    schema = _SCHEMA
    thread_name = "z4j-dramatiq-messages"
    flush_site = "dramatiq.store.flush"
    prune_every = PRUNE_EVERY

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int = DEFAULT_MAX_ROWS,
                 ttl: float = DEFAULT_TTL_SECONDS, linger: float = LINGER_SECONDS,
                 busy_timeout: float = 5.0) -> None:
        super().__init__(path, max_rows=max_rows, ttl=ttl, linger=linger, keyed=False, busy_timeout=busy_timeout)

    # -- writing -------------------------------------------------------------------------------
    def put(self, message_id: str, *, queue: str, actor: str, state: str, body: bytes | None = None,
            redis_id: str | None = None, attempts: int = 1, error: str | None = None) -> None:
        """Queue one observation; committed by the writer thread within ``linger``."""
        if body is not None and len(body) > MAX_BODY_BYTES:
            body = None  # remembered without a body: a retry by reference then says "too large"
            error = error or f"message body over {MAX_BODY_BYTES} bytes was not remembered"
        self._enqueue([(message_id, time.time(), queue, actor, state, redis_id, int(attempts), error, body)])

    def _write(self, conn: sqlite3.Connection, batch: list[tuple]) -> None:
        conn.executemany(_PUT, batch)

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM dramatiq_messages WHERE seen_at < ?", (time.time() - self.ttl,))
        excess = int(conn.execute("SELECT COUNT(*) FROM dramatiq_messages").fetchone()[0]) - self.max_rows
        if excess > 0:
            conn.execute("DELETE FROM dramatiq_messages WHERE message_id IN "
                         "(SELECT message_id FROM dramatiq_messages ORDER BY seen_at LIMIT ?)", (excess,))

    # -- reading -------------------------------------------------------------------------------
    def get(self, message_id: str, wait: float = 0.0) -> dict[str, Any] | None:
        """The record, or None. ``wait``: seconds to keep looking for a record another process may
        still hold in its commit window (an event can reach the brain before the record lands)."""
        deadline = time.monotonic() + wait
        while True:
            record = self._get(message_id)
            if record is not None or time.monotonic() >= deadline:
                return record
            time.sleep(0.02)

    def _get(self, message_id: str) -> dict[str, Any] | None:
        self._check_process()
        with self._queue_lock:
            queued = [row for row in self._queued if row[0] == message_id]
        if queued:
            self.flush()
        with self._lock:
            row = self._connection().execute(
                f"SELECT {', '.join(_COLUMNS)} FROM dramatiq_messages WHERE message_id = ?", (message_id,)
            ).fetchone()
        if row is None or row[1] < time.time() - self.ttl:
            return None
        return dict(zip(_COLUMNS, row))

    def get_many(self, message_ids: Iterable[str], wait: float = 0.0) -> dict[str, dict[str, Any]]:
        ids = list(dict.fromkeys(message_ids))
        deadline = time.monotonic() + wait
        while True:
            found = self._get_many(ids)
            if len(found) == len(ids) or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    def _get_many(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        self.flush()
        with self._lock:
            conn = self._connection()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM dramatiq_messages "
                                        f"WHERE message_id IN ({marks})", chunk):
                    out[row[0]] = dict(zip(_COLUMNS, row))
        return out

    def count(self) -> int:
        self.flush()
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM dramatiq_messages").fetchone()[0])
