"""The outbox table ``entries``: append, read, ack (delete), attempts, caps and eviction.

Every function takes the connection to use; the caller holds the matching lock and, where a
docstring says so, runs it inside its own transaction.

* Row and byte totals are kept *without* triggers or AUTOINCREMENT (each costs an extra page
  write per commit): ids are dense (``max(id)+1``) and a running ``cum`` byte total is stored per
  row, so ``rows = max(id) - gone_rows`` and ``bytes = max(cum) - gone_bytes``, where the
  ``gone`` counters are updated inside every delete transaction. Both are O(log n) and exact.
* Ids are never reused: deleting the highest row would let SQLite hand its id out again (a
  drainer reading ``after_id`` would skip new rows), so the highest row is turned into a
  *tombstone* (kind ``~``, empty body) instead and removed once a newer row exists.
* Caps are checked only every few appends (a per-process budget derived from the remaining
  room, halved each check, never more than 64); when over, the oldest rows are evicted in one
  transaction, with a small slack (0.5% of the cap, at most 256 rows) so a full buffer does not
  pay an eviction on every append. Several processes may overshoot a cap by at most their
  unchecked budgets, transiently. Evicted rows are counted in the loss ledger in the same
  transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable

from ..logs import get_logger
from . import loss
from .schema import BUMP, BufferRow, make_row

__all__ = ["TOMBSTONE", "EntriesTable", "body_size", "rollback", "runs"]

log = get_logger(__name__)

TOMBSTONE = "~"
_MAX_UNCHECKED = 64

INSERT = (
    "INSERT INTO entries(kind, engine, size, cum, created_at, body) VALUES"
    " (?1, ?2, ?3, ?3 + coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0), ?4, ?5)"
)
_INSERT_CUM = "INSERT INTO entries(kind, engine, size, cum, created_at, body) VALUES (?, ?, ?, ?, ?, ?)"
_LAST_CUM = "SELECT coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0)"
TOTALS = (
    "SELECT coalesce((SELECT id FROM entries ORDER BY id DESC LIMIT 1), 0)"
    " - coalesce((SELECT n FROM counters WHERE name='gone.rows' AND engine=''), 0),"
    " coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0)"
    " - coalesce((SELECT n FROM counters WHERE name='gone.bytes' AND engine=''), 0)"
)
_READ = ("SELECT id, kind, body, attempts, created_at, engine FROM entries"
         " WHERE id > ? AND kind != '~' ORDER BY id LIMIT ?")
_OLDEST = "SELECT created_at FROM entries WHERE kind != '~' ORDER BY id LIMIT 1"
_BY_KIND = "SELECT kind, count(*), min(created_at) FROM entries WHERE kind != '~' GROUP BY kind"
#: Copy an ATTACHed ``orphan`` database's rows after ours, with running totals continued from ``?``.
ADOPT_ROWS = (
    "INSERT INTO main.entries(kind, engine, size, cum, created_at, attempts, body)"
    " SELECT kind, engine, size, ? + sum(size) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING),"
    " created_at, attempts, body FROM orphan.entries WHERE kind != '~' ORDER BY id"
)

Item = tuple[str, str, str, int, float]  # kind, body, engine, UTF-8 size, created_at


def body_size(body: str) -> int:
    return len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))


def runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted contiguous [lo, hi] runs: an ack of 500 consecutive rows is one range."""
    lst = [int(x) for x in ids]
    if lst and lst[-1] - lst[0] + 1 == len(lst) and lst == list(range(lst[0], lst[-1] + 1)):
        return [(lst[0], lst[-1])]  # the usual ack: one contiguous batch
    out: list[tuple[int, int]] = []
    for i in sorted(set(lst)):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, bytes) waiting: exact, O(log n)."""
    rows, nbytes = conn.execute(TOTALS).fetchone()
    return int(rows), int(nbytes)


def oldest_created_at(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(_OLDEST).fetchone()
    return None if row is None else row[0]


def by_kind(conn: sqlite3.Connection) -> list[tuple[str, int, float]]:
    """(kind, rows, oldest created_at) per kind waiting (a full scan: for ``status``)."""
    return [(k, int(n), first) for k, n, first in conn.execute(_BY_KIND)]


def read(conn: sqlite3.Connection, after_id: int, limit: int) -> list[BufferRow]:
    return [make_row(r) for r in conn.execute(_READ, (int(after_id), int(limit))).fetchall()]


def last_cum(conn: sqlite3.Connection) -> int:
    return conn.execute(_LAST_CUM).fetchone()[0]


class EntriesTable:
    """Caps, the unchecked-append budget and eviction for one store's ``entries`` table.

    ``refused(kind, engine, reason)`` is told about a row that can never fit (it counts the loss).
    """

    def __init__(self, path: str, max_rows: int, max_bytes: int,
                 refused: Callable[[str, str, str], None]) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        # Evict a little more than strictly needed so a full buffer pays one eviction per
        # ~slack appends instead of one per append (0.5% of the cap, at most 256 rows).
        self._slack_rows = min(256, max_rows // 200)
        self._slack_bytes = max_bytes // 200
        self._refused = refused
        self.budget_rows = 0
        self.budget_bytes = 0
        self._evict_log_at = 0.0
        self._evicted_since_log = 0

    def reset_budget(self) -> None:
        """Check the caps on the next append (another process may have filled the file)."""
        self.budget_rows = self.budget_bytes = 0

    def append(self, conn: sqlite3.Connection, items: list[Item]) -> int:
        """Store rows; returns how many. Caller holds the write lock (not in a transaction)."""
        self.budget_rows -= len(items)
        self.budget_bytes -= sum(item[3] for item in items)
        if self.budget_rows < 0 or self.budget_bytes < 0:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self.insert_capped(conn, items)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
            return stored
        if len(items) == 1:
            kind, body, engine, size, created_at = items[0]
            conn.execute(INSERT, (kind, engine, size, created_at, body))  # autocommit
            return 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(INSERT, [(kind, engine, size, t, body) for kind, body, engine, size, t in items])
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return len(items)

    def insert_capped(self, conn: sqlite3.Connection, items: list[Item]) -> int:
        """Insert rows, evicting the oldest rows as the caps require; inside the caller's
        transaction. Refreshes the unchecked-append budget."""
        rows, nbytes = totals(conn)
        total = sum(item[3] for item in items)
        if rows + len(items) <= self.max_rows and nbytes + total <= self.max_bytes:
            # Everything fits (the common case): one executemany, running totals from Python.
            cum = last_cum(conn)
            values = []
            for kind, body, engine, size, created_at in items:
                cum += size
                values.append((kind, engine, size, cum, created_at, body))
            conn.executemany(_INSERT_CUM, values)
            stored = len(items)
            rows += stored
            nbytes += total
        else:
            stored = 0
            for kind, body, engine, size, created_at in items:
                if size > self.max_bytes:
                    self._refused(kind, engine, "row larger than max_bytes")
                    continue
                if rows + 1 > self.max_rows or nbytes + size > self.max_bytes:
                    freed_rows, freed_bytes = self.evict(
                        conn, rows + 1 - self.max_rows + self._slack_rows,
                        nbytes + size - self.max_bytes + self._slack_bytes)
                    rows -= freed_rows
                    nbytes -= freed_bytes
                conn.execute(INSERT, (kind, engine, size, created_at, body))
                rows += 1
                nbytes += size
                stored += 1
        self.budget_rows = min(_MAX_UNCHECKED, (self.max_rows - rows) // 2)
        self.budget_bytes = (self.max_bytes - nbytes) // 2
        return stored

    def evict(self, conn: sqlite3.Connection, need_rows: int, need_bytes: int) -> tuple[int, int]:
        """Delete the oldest rows until both needs are met; count them as capacity loss."""
        freed_rows = freed_bytes = 0
        last = 0
        counts: loss.Counts = {}
        cursor_id = 0
        while freed_rows < need_rows or freed_bytes < need_bytes:
            chunk = conn.execute("SELECT id, kind, engine, size FROM entries WHERE id > ?"
                                 " ORDER BY id LIMIT 256", (cursor_id,)).fetchall()
            if not chunk:
                break
            for rid, kind, engine, size in chunk:
                cursor_id = rid
                if kind == TOMBSTONE:
                    continue
                last = rid
                freed_rows += 1
                freed_bytes += size
                loss.add_into(counts, loss.counts_for(loss.bucket(kind), 1, engine))
                if freed_rows >= need_rows and freed_bytes >= need_bytes:
                    break
            else:
                continue
            break
        if not last:
            return 0, 0
        delete_runs(conn, [(1, last)])
        counts[("capacity_evicted_frames", "")] = freed_rows
        conn.executemany(BUMP, loss.bump_rows(counts))
        self._log_eviction(freed_rows)
        return freed_rows, freed_bytes

    def _log_eviction(self, rows: int) -> None:
        self._evicted_since_log += rows
        now = time.monotonic()
        if now - self._evict_log_at >= 60.0:  # a full buffer evicts often: one line a minute
            log.warning("buffer.evicted", path=self.path, rows=self._evicted_since_log,
                        max_rows=self.max_rows, max_bytes=self.max_bytes,
                        fix="the brain is unreachable or slow; raise the buffer caps or fix the link")
            self._evict_log_at = now
            self._evicted_since_log = 0


def delete_runs(conn: sqlite3.Connection, id_runs: list[tuple[int, int]]) -> tuple[int, int]:
    """Delete the rows in ``id_runs`` (keeping the highest id as a tombstone); inside the
    caller's transaction. Returns (rows, bytes) removed."""
    top = conn.execute("SELECT id, kind FROM entries ORDER BY id DESC LIMIT 1").fetchone()
    if top is None:
        return 0, 0
    top_id, top_kind = top
    row = conn.execute("SELECT n FROM counters WHERE name='tomb' AND engine=''").fetchone()
    old_tomb = row[0] if row else None
    new_tomb = top_id if top_kind == TOMBSTONE else None
    removed = freed = 0
    for lo, hi in id_runs:
        n, b = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries"
                            " WHERE id BETWEEN ? AND ? AND kind != '~'", (lo, hi)).fetchone()
        if not n:
            continue
        removed += n
        freed += b
        if lo <= top_id <= hi:
            # Keep the highest id alive as a tombstone so SQLite never reuses ids.
            conn.execute("DELETE FROM entries WHERE id BETWEEN ? AND ?", (lo, top_id - 1))
            if top_kind != TOMBSTONE:
                conn.execute("UPDATE entries SET kind='~', engine='', body='', attempts=0"
                             " WHERE id=?", (top_id,))
                new_tomb = top_id
        else:
            conn.execute("DELETE FROM entries WHERE id BETWEEN ? AND ? AND kind != '~'", (lo, hi))
    if old_tomb is not None and old_tomb != new_tomb:
        # A tombstone is useless once a newer row exists.
        conn.execute("DELETE FROM entries WHERE id=? AND kind='~'", (old_tomb,))
    if new_tomb != old_tomb:
        if new_tomb is None:
            conn.execute("DELETE FROM counters WHERE name='tomb'")
        else:
            conn.execute("INSERT OR REPLACE INTO counters(name, engine, n) VALUES ('tomb', '', ?)",
                         (new_tomb,))
    if removed:
        conn.executemany(BUMP, [("gone.rows", "", removed), ("gone.bytes", "", freed)])
    return removed, freed


def mark_attempt(conn: sqlite3.Connection, id_runs: list[tuple[int, int]]) -> None:
    """Inside the caller's transaction."""
    conn.executemany("UPDATE entries SET attempts = attempts + 1"
                     " WHERE id BETWEEN ? AND ? AND kind != '~'", id_runs)
