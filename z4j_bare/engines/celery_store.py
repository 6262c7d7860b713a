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
per burst (a few ms later; ``queued_store``, shared with the Dramatiq message store). A commit
per task on the worker's main process cost about as much as the rest of the agent's capture
together (docs/performance.md, "Celery"). ``get`` sees queued records too. The price: records queued when the main process is SIGKILLed (at most one linger
window) are not remembered, and ``retry_task`` for those tasks fails with its documented reason.
"""

from __future__ import annotations

import pickle
import sqlite3
import struct
import time
from collections.abc import Iterable
from typing import Any

from ..protocol.canonical import canonical_tree_text
from .queued_store import QueuedStore

DEFAULT_MAX_ROWS = 100_000
DEFAULT_TTL_SECONDS = 7 * 24 * 3600.0
#: A request bigger than this is remembered as "too large" (retry then fails with that reason).
MAX_RECORD_BYTES = 1 << 20
PRUNE_EVERY = 1000
#: Seconds the writer waits after the first queued record, so one commit carries a burst: a
#: random-key insert costs ~12 us a row in commits of 30 rows and ~7 us in commits of 300.
LINGER_SECONDS = 0.1


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


class RequestStore(QueuedStore):
    """task_id -> original publish parameters. Thread-safe; one connection per process."""

    schema = (
        ("CREATE TABLE IF NOT EXISTS celery_requests ("
         " task_id TEXT PRIMARY KEY, stored_at REAL NOT NULL, codec TEXT NOT NULL, body BLOB NOT NULL)"),
        "CREATE INDEX IF NOT EXISTS celery_requests_age ON celery_requests(stored_at)",
    )
    thread_name = "z4j-celery-requests"
    flush_site = "celery.store.flush"
    prune_every = PRUNE_EVERY

    def __init__(self, path: str, *, max_rows: int = DEFAULT_MAX_ROWS, ttl: float = DEFAULT_TTL_SECONDS,
                 linger: float = LINGER_SECONDS) -> None:
        super().__init__(path, max_rows=max_rows, ttl=ttl, linger=linger, keyed=True)

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
        self._enqueue(rows)
        return len(rows)

    def put(self, task_id: str, record: dict[str, Any]) -> None:
        self.put_many([(task_id, record)])

    def put_message(self, task_id: str, meta: dict[str, Any], body: bytes | str) -> None:
        """A received message, kept raw (see the module docstring); ``meta`` holds the routing
        fields, ``content_type`` and ``content_encoding``. Queued like ``put``."""
        codec, blob = encode_message(meta, body)
        if len(blob) > MAX_RECORD_BYTES:
            codec, blob = _encode({"too_large": len(blob), "name": meta.get("name")})
        self._enqueue({task_id: (time.time(), codec, blob)})

    def _write(self, conn: sqlite3.Connection, batch: dict[str, tuple[float, str, bytes]]) -> None:
        conn.executemany("INSERT OR REPLACE INTO celery_requests VALUES (?, ?, ?, ?)",
                         [(task_id, *row) for task_id, row in batch.items()])

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

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM celery_requests WHERE stored_at < ?", (time.time() - self.ttl,))
        excess = int(conn.execute("SELECT COUNT(*) FROM celery_requests").fetchone()[0]) - self.max_rows
        if excess > 0:
            conn.execute(
                "DELETE FROM celery_requests WHERE task_id IN "
                "(SELECT task_id FROM celery_requests ORDER BY stored_at LIMIT ?)", (excess,)
            )

    def prune(self) -> None:
        self.flush()
        with self._lock:
            self._prune(self._connection())
