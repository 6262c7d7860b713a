"""The loss ledger: every record the agent could not keep or deliver, counted once.

One ledger per buffer file, in its ``counters`` table (rows ``loss.<key>``, per engine for
``adapter_events``). Everything that drops a record counts it here and nowhere else: a failed
append (the hook's ``emit`` then returns False but keeps no count of its own), an eviction by the
caps, a row the outbox rejects, a torn spool record, an event the sink could not encode. The
brain, ``health()`` and ``z4j-bare status`` all read this one ledger, so they agree.

Counts reach the file three ways:

* inside the transaction that drops the rows (eviction, torn spool records, adoption);
* a process's in-memory counts (a failed append cannot write, often because the disk is full)
  are committed by the owner's I/O thread (``flush``) or, in a forked child, carried by the
  child's next spool write as one ``~loss`` record that the owner's ingest adds to the ledger;
* ``view`` merges the file with this process's counts not yet committed, so the owner's
  ``telemetry_loss()`` is exact even while the disk is full; ``status`` reads the file (plus
  the ``~loss`` records still in spool files).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..logs import get_logger
from .schema import BUMP

__all__ = ["ADAPTER_EVENTS", "LOSS_KEYS", "RECORD_KIND", "LossLedger", "bucket", "counts_for", "shape"]

log = get_logger(__name__)

LOSS_KEYS = (
    "capacity_evicted_frames",
    "content_rejected_frames",
    "event_records",
    "command_results",
    "other_frames",
    "unclassified_frames",
)
ADAPTER_EVENTS = "adapter_events"
PREFIX = "loss."
#: Spool record kind that carries a non-owner process's counts (never an ``entries`` row).
RECORD_KIND = "~loss"
_COMMAND_KINDS = frozenset({"command_ack", "command_result"})
#: After a failed commit (full disk, locked file), the next try waits this long.
RETRY_SECONDS = 1.0

Counts = dict[tuple[str, str], int]  # (key, engine) -> n; engine is "" except for adapter_events

SELECT_PERSISTED = "SELECT name, engine, n FROM counters WHERE name LIKE 'loss.%'"
#: True when the file remembers a loss (a file that does is kept on close).
ANY_PERSISTED = "EXISTS(SELECT 1 FROM counters WHERE name LIKE 'loss.%' AND n > 0)"


def bucket(kind: str) -> str:
    """The ``telemetry_loss`` key a lost row of ``kind`` is counted under."""
    if kind == "event":
        return "event_records"
    if kind in _COMMAND_KINDS:
        return "command_results"
    return "other_frames"


def counts_for(key: str, n: int, engine: str = "") -> Counts:
    """``n`` under ``key``; an event key with an engine also counts ``adapter_events[engine]``."""
    if key == ADAPTER_EVENTS:
        return {(ADAPTER_EVENTS, engine): n}
    counts = {(key, ""): n}
    if engine and key == "event_records":
        counts[(ADAPTER_EVENTS, engine)] = n
    return counts


def counts_for_category(category: str, n: int, engine: str | None) -> Counts:
    """What ``count_loss(category, n, engine=)`` adds: ``engine`` also counts under
    ``adapter_events[engine]``; ``adapter_events`` alone needs the engine. ValueError otherwise."""
    if category not in LOSS_KEYS and category != ADAPTER_EVENTS:
        raise ValueError(f"unknown telemetry_loss category {category!r}; expected one of "
                         f"{', '.join(LOSS_KEYS)} or adapter_events")
    if category == ADAPTER_EVENTS and not engine:
        raise ValueError("count_loss('adapter_events') needs engine=")
    if n <= 0:
        return {}
    counts = {(category, engine if category == ADAPTER_EVENTS else ""): n}
    if engine and category != ADAPTER_EVENTS:
        counts[(ADAPTER_EVENTS, engine)] = n
    return counts


def add_into(target: Counts, counts: Counts) -> None:
    for k, n in counts.items():
        target[k] = target.get(k, 0) + n


def bump_rows(counts: Counts) -> list[tuple[str, str, int]]:
    """``schema.BUMP`` parameters for ``counts``."""
    return [(PREFIX + key, engine, n) for (key, engine), n in counts.items() if n]


def read_persisted(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return [(name[len(PREFIX):], engine, int(n)) for name, engine, n in conn.execute(SELECT_PERSISTED)]


def shape(items: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
    """protocol.md 2.3 ``telemetry_loss`` counters (without the ids): every key, adapters merged."""
    out: dict[str, Any] = {k: 0 for k in LOSS_KEYS}
    adapters: dict[str, int] = {}
    for key, engine, n in items:
        if key == ADAPTER_EVENTS:
            adapters[engine] = adapters.get(engine, 0) + int(n)
        elif key in out:
            out[key] += int(n)
    out[ADAPTER_EVENTS] = adapters
    return out


def encode_record(counts: Counts, created_at: float) -> tuple[str, str, str, float]:
    """A spool row (kind, engine, body, created_at) carrying ``counts``."""
    body = json.dumps([[key, engine, n] for (key, engine), n in counts.items()], separators=(",", ":"))
    return RECORD_KIND, "", body, created_at


def decode_record(body: str) -> Counts | None:
    """The counts a ``~loss`` record carries, or None when it is not one we wrote."""
    try:
        items = json.loads(body)
    except ValueError:
        return None
    counts: Counts = {}
    if not isinstance(items, list):
        return None
    for item in items:
        if not (isinstance(item, list) and len(item) == 3):
            return None
        key, engine, n = item
        if (key not in LOSS_KEYS and key != ADAPTER_EVENTS) or not isinstance(engine, str) \
                or type(n) is not int or n < 0:
            return None
        counts[(key, engine)] = counts.get((key, engine), 0) + n
    return counts


def split_records(rows: list[tuple[str, str, str, int, float]]) -> tuple[list, Counts]:
    """Spooled rows (kind, body, engine, size, created_at) -> (rows for ``entries``, counts the
    ``~loss`` records carry; a record that does not decode counts as one unclassified frame)."""
    if not any(row[0] == RECORD_KIND for row in rows):
        return rows, {}
    kept, counts = [], {}
    for row in rows:
        if row[0] != RECORD_KIND:
            kept.append(row)
            continue
        add_into(counts, decode_record(row[1]) or {("unclassified_frames", ""): 1})
    return kept, counts


class LossLedger:
    """This process's counts not yet in the file, and a view that merges them with the file's.

    ``_lock`` guards the in-memory counts (taken on the append-failure path, briefly). ``_view``
    makes a read of the file plus memory and a commit that moves counts from memory into the
    file mutually exclusive, so a reader never counts a commit twice or misses it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._view = threading.Lock()
        self._pending: Counts = {}
        self._flushing: Counts = {}
        self._retry_at = 0.0
        self.append_failures = 0

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def add(self, counts: Counts) -> None:
        with self._lock:
            add_into(self._pending, counts)

    def append_failed(self, kind: str, engine: str, n: int, reason: str, path: str) -> None:
        """A row of ``kind`` was not stored: count it; log the 1st and every 1000th."""
        self.add(counts_for(bucket(kind), n, engine))
        self.append_failures += n
        if self.append_failures == 1 or self.append_failures % 1000 == 0:
            log.error("buffer.append_failed", path=path, kind=kind, reason=reason, failures=self.append_failures)

    def flush(self, writer: Callable[[], sqlite3.Connection], *, force: bool = False) -> bool:
        """Commit the in-memory counts; caller holds the store's write lock. False = kept in
        memory (retried after RETRY_SECONDS unless ``force``)."""
        if not self._pending or (not force and time.monotonic() < self._retry_at):
            return not self._pending
        with self._lock:
            batch, self._pending = self._pending, {}
            self._flushing = batch
        conn = None
        try:
            conn = writer()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(BUMP, bump_rows(batch))
            with self._view:
                conn.execute("COMMIT")
                with self._lock:
                    self._flushing = {}
            return True
        except Exception:  # noqa: BLE001 - a full disk included: keep the counts in memory
            if conn is not None and conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            with self._lock:
                self._flushing = {}
                add_into(self._pending, batch)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            return False

    def take(self) -> Counts:
        """Hand the in-memory counts to a spool write (``give_back`` them if it fails)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        return batch

    def give_back(self, counts: Counts) -> None:
        self.add(counts)

    def view(self, read_file: Callable[[], list[tuple[str, str, int]]]) -> dict[str, Any]:
        """``shape`` of the file's counts plus this process's uncommitted ones."""
        with self._view:
            try:
                rows = read_file()
            except Exception:  # noqa: BLE001 - a probe must answer: memory alone is still a lower bound
                rows = []
            with self._lock:
                memory = [(k, e, n) for (k, e), n in (*self._pending.items(), *self._flushing.items())]
        return shape(rows + memory)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's counts stay the parent's to commit."""
        self._lock = threading.Lock()
        self._view = threading.Lock()
        self._pending = {}
        self._flushing = {}
        self._retry_at = 0.0
        self.append_failures = 0
