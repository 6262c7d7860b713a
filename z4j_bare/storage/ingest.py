"""Moving spooled records into ``entries`` (the owner's job), and the ``spool`` offsets table.

The offset consumed in each spool file is committed in the same transaction as its rows, so a
crash at any point delivers every record at least once and never skips one. ``~loss`` records
(a forked child's loss counts, see ``loss.py``) go to the ledger in that same transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from ..logs import get_logger
from . import loss
from .entries import EntriesTable, rollback
from .schema import BUMP
from .spool import SpoolBatch, SpoolReader, spool_dir_for

__all__ = ["INGEST_ROWS", "SpoolIngest", "read_offsets", "spooled_rows"]

log = get_logger(__name__)

#: Rows moved from the spool into SQLite per transaction (bounds the memory one pass holds).
INGEST_ROWS = 1024


def read_offsets(conn: sqlite3.Connection, schema: str = "main") -> dict[str, int]:
    """How far the owner of the database ``schema`` has consumed each spool file."""
    try:
        return dict(conn.execute(f"SELECT name, offset FROM {schema}.spool").fetchall())
    except sqlite3.OperationalError:
        return {}  # a buffer file from before the spool existed


def store_batch(conn: sqlite3.Connection, table: EntriesTable, batch: SpoolBatch) -> int:
    """Inside the caller's transaction: the batch's rows into ``entries``, its ``~loss`` records
    and torn records into the ledger. Returns the rows stored."""
    rows, counts = loss.split_records(batch.rows)
    if batch.torn:
        loss.add_into(counts, {("unclassified_frames", ""): batch.torn})
    stored = table.insert_capped(conn, rows) if rows else 0
    if counts:
        conn.executemany(BUMP, loss.bump_rows(counts))
    return stored


def spooled_rows(buffer_path: Path, offsets: dict[str, int]) -> list[tuple[str, str, str, int, float]]:
    """Every record still in ``buffer_path``'s spool after ``offsets``, without taking a lock or
    moving anything (for ``status``; a live writer's file is read up to its current end)."""
    rows: list[tuple[str, str, str, int, float]] = []
    reader = SpoolReader(spool_dir_for(buffer_path))
    offsets = dict(offsets)
    while True:  # read-only: offsets advance in this copy only
        batch = reader.collect(offsets, lock=False)
        if not batch.rows:
            return rows
        rows.extend(batch.rows)
        offsets.update(batch.offsets)


class SpoolIngest:
    """The owner's cursor over every process's spool files of one buffer."""

    def __init__(self, buffer_path: Path) -> None:
        self.reader = SpoolReader(spool_dir_for(buffer_path))
        self.offsets: dict[str, int] = {}
        self.lock = threading.Lock()  # one pass at a time; a second caller waits for the first
        self._failures = 0
        self._path = str(buffer_path)

    def load_offsets(self, conn: sqlite3.Connection) -> None:
        """At open, inside its transaction: the committed offsets; rows of files gone are dropped."""
        offsets = read_offsets(conn)
        files = set(self.reader.names())
        gone = [name for name in offsets if name not in files]
        if gone:  # files removed after their rows were committed (see _finish)
            conn.executemany("DELETE FROM spool WHERE name = ?", [(n,) for n in gone])
        self.offsets = {name: offset for name, offset in offsets.items() if name not in gone}

    def run(self, table: EntriesTable, write_lock: threading.Lock,
            writer: Callable[[], sqlite3.Connection]) -> int:
        """Move what is spooled into ``entries``; returns rows moved. Never raises: on failure the
        records stay spooled and the next call retries. Waits for a pass in progress."""
        with self.lock:
            moved = 0
            try:
                while True:
                    batch = self.reader.collect(self.offsets, max_rows=INGEST_ROWS)
                    if not batch:
                        return moved
                    with write_lock:
                        conn = writer()
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            stored = store_batch(conn, table, batch)
                            conn.executemany("INSERT OR REPLACE INTO spool(name, offset) VALUES (?, ?)",
                                             list(batch.offsets.items()))
                            conn.execute("COMMIT")
                        except BaseException:
                            rollback(conn)
                            raise
                    self.offsets.update(batch.offsets)
                    if batch.torn:
                        log.error("buffer.spool_torn", path=str(self.reader.directory), records=batch.torn)
                    if batch.finished:
                        self._finish(batch.finished, write_lock, writer)
                    moved += stored
                    if not batch.rows:
                        return moved
            except Exception as exc:  # noqa: BLE001 - the records stay spooled; the next pass retries
                self._failures += 1
                if self._failures == 1 or self._failures % 1000 == 0:  # called ~20 times a second
                    log.error("buffer.ingest_failed", path=self._path, failures=self._failures,
                              error=f"{type(exc).__name__}: {exc}",
                              effect="events stay in the spool until it succeeds")
                return moved

    def _finish(self, names: list[str], write_lock: threading.Lock,
                writer: Callable[[], sqlite3.Connection]) -> None:
        for name in names:
            self.reader.remove(name)
            self.offsets.pop(name, None)
        # After the unlink: a crash in between leaves a row for a file that no longer exists
        # (harmless, names are never reused), never a file without its offset.
        with write_lock:
            writer().executemany("DELETE FROM spool WHERE name = ?", [(n,) for n in names])

    def forget_after_fork(self) -> None:
        self.lock = threading.Lock()
