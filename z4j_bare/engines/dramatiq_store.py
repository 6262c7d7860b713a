"""What the agent remembers of Dramatiq messages, so retry works by reference.

Dramatiq keeps no copy of a message once it is acked, and the brain never sends arguments back
(they are redacted). Every process that captures (workers when they take a message, producers
when they send one) remembers the message as it was encoded for the broker, then its outcome,
in a small SQLite file shared by all the deployment's dramatiq processes on this host
(``dramatiq-messages-<deployment>.sqlite`` next to the buffers, mode 0600, bounded by rows and
age). Rows hold **unredacted** messages, exactly like the broker did; the file never leaves the
host. The agent process reads it for ``retry_task``, ``cancel_task`` (was the message taken
already?), dead-letter details and reconcile.

Writers only queue: a background thread per process commits a burst in one transaction about
20 ms later (model: the Celery request store). Records queued when a process is SIGKILLed are
lost; those messages are then "not known to this agent" and a retry says so. An older write
never overwrites a newer one (rows carry the time of the observation). A commit the file refuses
(another process holds it past the busy timeout, or is still creating it) keeps its rows queued
and the writer tries again with a growing pause; only a file that keeps refusing is worth a
warning, and then the oldest rows beyond ``MAX_QUEUED`` are dropped and counted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..logs import get_logger
from ..safety import safe_call

log = get_logger(__name__)

DEFAULT_MAX_ROWS = 100_000
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0   # dramatiq's dead-letter TTL
MAX_BODY_BYTES = 1 << 20
LINGER_SECONDS = 0.02
MAX_QUEUED = 20_000
PRUNE_EVERY = 2000
RETRY_MAX_SECONDS = 2.0
WARN_AFTER_REFUSALS = 8     # about 6 s of refusals in a row
_INHERITED: list[sqlite3.Connection] = []

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


class MessageStore:
    """message_id -> the message as sent, its queue, actor, state. Thread-safe, any process."""

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int = DEFAULT_MAX_ROWS,
                 ttl: float = DEFAULT_TTL_SECONDS, linger: float = LINGER_SECONDS,
                 busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self.max_rows = max(1, int(max_rows))
        self.ttl = float(ttl)
        self.linger = float(linger)
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._queue_lock = threading.Lock()
        self._queued: list[tuple] = []
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._pid = os.getpid()
        self._since_prune = 0
        self._closed = False
        self.dropped = 0  # rows given up after the file kept refusing them (see the module docstring)

    def __repr__(self) -> str:
        return f"MessageStore(path={self.path!r}, max_rows={self.max_rows})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
            except BaseException:
                conn.close()  # set up again from scratch next time
                raise
            self._conn = conn
        return self._conn

    # -- writing -------------------------------------------------------------------------------
    def put(self, message_id: str, *, queue: str, actor: str, state: str, body: bytes | None = None,
            redis_id: str | None = None, attempts: int = 1, error: str | None = None) -> None:
        """Queue one observation; committed by the writer thread within ``linger``."""
        if body is not None and len(body) > MAX_BODY_BYTES:
            body = None  # remembered without a body: a retry by reference then says "too large"
            error = error or f"message body over {MAX_BODY_BYTES} bytes was not remembered"
        row = (message_id, time.time(), queue, actor, state, redis_id, int(attempts), error, body)
        self._check_process()
        with self._queue_lock:
            self._queued.append(row)
            backlog = len(self._queued)
        if backlog >= MAX_QUEUED or self._closed:
            self.flush()
        else:
            self._ensure_writer()
            self._wake.set()

    def flush(self) -> None:
        self._check_process()
        with self._lock:
            with self._queue_lock:
                batch, self._queued = self._queued, []
            if not batch:
                return
            try:
                conn = self._commit(batch)
            except sqlite3.OperationalError:
                self._requeue(batch)
                raise
            self._since_prune += len(batch)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune(conn)

    def _commit(self, batch: list[tuple]) -> sqlite3.Connection:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_PUT, batch)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return conn

    def _requeue(self, batch: list[tuple]) -> None:
        """Put a refused batch back in front of what was queued since, within ``MAX_QUEUED``."""
        with self._queue_lock:
            self._queued[:0] = batch
            excess = len(self._queued) - MAX_QUEUED
            if excess > 0:
                del self._queued[:excess]
                self.dropped += excess

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._queue_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="z4j-dramatiq-messages",
                                                    daemon=True)
                    self._writer.start()

    def _write_loop(self) -> None:
        wake = self._wake
        refusals = 0
        while not self._closed:
            wake.wait(None if refusals == 0 else min(RETRY_MAX_SECONDS, 0.05 * 2 ** refusals))
            wake.clear()
            if not self._closed:
                time.sleep(self.linger)
            refusals = safe_call(self._flush_once, refusals, site="dramatiq.store.flush", default=0)

    def _flush_once(self, refusals: int) -> int:
        """One flush for the writer thread; returns how many flushes in a row the file refused."""
        try:
            self.flush()
        except sqlite3.OperationalError as exc:
            # A busy or half-created file is normal for a moment when several processes start at
            # once, and the rows wait in the queue. Only a file that keeps refusing is news.
            refusals += 1
            level = log.warning if refusals == WARN_AFTER_REFUSALS else log.debug
            level("dramatiq.store.refused", path=self.path, error=getattr(exc, "sqlite_errorname", "?"),
                  refusals=refusals, queued=len(self._queued), dropped=self.dropped)
            return refusals
        return 0

    def _check_process(self) -> None:
        if self._pid == os.getpid():
            return
        # A forked child: fresh locks and no writer thread; never touch the parent's handle.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queued = list(self._queued)
        self._wake = threading.Event()
        self._writer = None
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None

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

    def close(self) -> None:
        self._check_process()
        self._closed = True
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(1.0)
        safe_call(self.flush, site="dramatiq.store.flush")
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
