"""The Celery adapter's memory of original requests, so ``retry_task`` works by reference.

Celery keeps no copy of a task's arguments once the message is acked (the result backend only
does with ``result_extended=True``), and the brain never sends arguments back (they are
redacted). The worker main process sees every request at ``task_received``, so the adapter
keeps the original publish parameters here: a small SQLite file next to the event buffer,
bounded by row count and age. Rows hold *unredacted* arguments, exactly like the broker message
they came from; the file never leaves the host and is created with mode 0600.

A request received by the worker is kept as its **raw message**: the body bytes exactly as the
broker delivered them (arguments and embedded callbacks/chain, in the message's own serializer)
plus a small JSON record of the routing headers. Nothing is re-encoded at receipt, and the body
is decoded only when ``retry_task`` needs it, with the content type the worker already accepted.
Records built elsewhere (``put``: a producer's publish) are encoded with kombu's JSON (datetimes,
UUIDs, decimals survive); arguments JSON cannot carry (the task was sent with pickle) are
stored pickled, which is no more trust than the worker already gave the message.

``put`` only encodes and queues: a background thread commits queued records in one transaction
per burst (a few ms later). A commit per task on the worker's main process cost about as much as
the rest of the agent's capture together (docs/performance.md, "Celery"). ``get`` sees queued
records too. The price: records queued when the main process is SIGKILLed (at most one linger
window) are not remembered, and ``retry_task`` for those tasks fails with its documented reason.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..logs import get_logger
from ..protocol.canonical import canonical_tree_text
from ..safety import safe_call

log = get_logger(__name__)

DEFAULT_MAX_ROWS = 100_000
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0
#: A request bigger than this is remembered as "too large" (retry then fails with that reason).
MAX_RECORD_BYTES = 1 << 20
PRUNE_EVERY = 1000
#: Seconds the writer waits after the first queued record, so one commit carries a burst: a
#: random-key insert costs ~12 us a row in commits of 30 rows and ~7 us in commits of 300.
LINGER_SECONDS = 0.1
#: Queued records above this are committed by the caller itself (the writer is stuck or slow).
MAX_QUEUED = 20_000
_INHERITED: list[sqlite3.Connection] = []  # a parent's handles a forked child must never close


_RAW = "raw"
_LEN = struct.Struct(">I")


def encode_message(meta: dict[str, Any], body: bytes | str) -> tuple[str, bytes]:
    """A received message as stored: ``<u32 len><meta JSON><body bytes>`` (codec "raw")."""
    try:
        head = canonical_tree_text(meta).encode("utf-8")  # plain values: the C encoder, no kombu
    except (TypeError, ValueError):  # user headers holding datetimes, UUIDs...: kombu's JSON
        from kombu.utils.json import dumps

        head = dumps(meta).encode("utf-8")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return _RAW, _LEN.pack(len(head)) + head + raw


def _decode_message(blob: bytes) -> dict[str, Any]:
    from kombu.serialization import loads as decode_body
    from kombu.utils.json import loads

    (n,) = _LEN.unpack_from(blob)
    meta = loads(blob[4:4 + n].decode("utf-8"))
    content_type = meta.pop("content_type")
    # Only this message's own content type: the worker accepted and decoded exactly this body.
    args, kwargs, embed = decode_body(blob[4 + n:], content_type, meta.pop("content_encoding"),
                                      accept={content_type})
    record = {**meta, "args": list(args or ()), "kwargs": dict(kwargs or {})}
    if isinstance(embed, dict):
        for key in ("callbacks", "errbacks", "chain", "chord"):
            if embed.get(key):
                record[key] = embed[key]
    return record


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
    if codec == _RAW:
        return _decode_message(blob)
    if codec == "pickle":
        return pickle.loads(blob)
    raise ValueError(f"unknown codec {codec!r}")


class RequestStore:
    """task_id -> original publish parameters. Thread-safe; one connection per process."""

    def __init__(self, path: str, *, max_rows: int = DEFAULT_MAX_ROWS, ttl: float = DEFAULT_TTL_SECONDS,
                 linger: float = LINGER_SECONDS) -> None:
        self.path = str(path)
        self.max_rows = max(1, int(max_rows))
        self.ttl = float(ttl)
        self.linger = float(linger)
        self._lock = threading.Lock()  # the connection, and a write in progress
        self._conn: sqlite3.Connection | None = None
        self._since_prune = 0
        self._queue_lock = threading.Lock()
        self._queued: dict[str, tuple[float, str, bytes]] = {}
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._pid_seen = os.getpid()
        self._closed = False

    def __repr__(self) -> str:
        return f"RequestStore(path={self.path!r}, max_rows={self.max_rows})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
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
        return self._conn

    # -- writing -------------------------------------------------------------------------------
    def put_many(self, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Encode now (a snapshot: the task may mutate its arguments), commit soon."""
        now = time.time()
        rows = {}
        for task_id, record in records:
            codec, blob = _encode(record)
            if len(blob) > MAX_RECORD_BYTES:
                codec, blob = _encode({"too_large": len(blob), "name": record.get("name")})
            rows[task_id] = (now, codec, blob)
        if not rows:
            return 0
        self._queue(rows)
        return len(rows)

    def _queue(self, rows: dict[str, tuple[float, str, bytes]]) -> None:
        self._check_process()
        with self._queue_lock:
            self._queued.update(rows)
            backlog = len(self._queued)
        if backlog >= MAX_QUEUED or self._closed:
            self.flush()
        else:
            self._ensure_writer()
            self._wake.set()

    def put(self, task_id: str, record: dict[str, Any]) -> None:
        self.put_many([(task_id, record)])

    def put_message(self, task_id: str, meta: dict[str, Any], body: bytes | str) -> None:
        """A received message, kept raw (see the module docstring); ``meta`` holds the routing
        fields, ``content_type`` and ``content_encoding``. Queued like ``put``."""
        codec, blob = encode_message(meta, body)
        if len(blob) > MAX_RECORD_BYTES:
            codec, blob = _encode({"too_large": len(blob), "name": meta.get("name")})
        self._queue({task_id: (time.time(), codec, blob)})

    def flush(self) -> None:
        """Commit every queued record now."""
        self._check_process()
        with self._lock:
            with self._queue_lock:
                batch, self._queued = self._queued, {}
            if not batch:
                return
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR REPLACE INTO celery_requests VALUES (?, ?, ?, ?)",
                                 [(task_id, *row) for task_id, row in batch.items()])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._since_prune += len(batch)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune(conn, time.time())

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._queue_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="z4j-celery-requests",
                                                    daemon=True)
                    self._writer.start()

    def _check_process(self) -> None:
        """In a forked child: fresh locks and no writer (the fork may have copied them mid-use)."""
        if self._pid_seen == os.getpid():
            return
        self._pid_seen = os.getpid()
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queued = dict(self._queued)
        self._wake = threading.Event()
        self._writer = None
        if self._conn is not None:
            # Closing the parent's handle here could drop the parent's SQLite locks: keep it.
            _INHERITED.append(self._conn)
            self._conn = None

    def _write_loop(self) -> None:
        wake = self._wake
        while not self._closed:
            wake.wait()
            wake.clear()
            if not self._closed:
                time.sleep(self.linger)
            safe_call(self.flush, site="celery.store.flush")

    # -- reading -------------------------------------------------------------------------------
    def get(self, task_id: str) -> dict[str, Any] | None:
        self._check_process()
        with self._queue_lock:
            queued = self._queued.get(task_id)
        if queued is None:
            # A record just taken from the queue is being committed under _lock: wait for it.
            with self._lock:
                queued = self._connection().execute(
                    "SELECT stored_at, codec, body FROM celery_requests WHERE task_id = ?", (task_id,)
                ).fetchone()
        if queued is None or queued[0] < time.time() - self.ttl:
            return None
        return _decode(queued[1], queued[2])

    def count(self) -> int:
        self.flush()
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
        self.flush()
        with self._lock:
            self._prune(self._connection(), time.time())

    def close(self) -> None:
        self._check_process()
        self._closed = True
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(1.0)
        safe_call(self.flush, site="celery.store.flush")
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
