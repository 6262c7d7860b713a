"""Recovery: setting unusable files aside, and adopting the buffers of dead siblings.

A file that is not a z4j buffer (corrupt, foreign, unreadable) is renamed
``<name>.corrupt-<UTC stamp>-<pid>`` with its side files, logged, and counted
(``corrupt_files_set_aside``); the agent starts on a fresh file. The files of a sibling agent of
the same deployment that died (its owner lock is free and no process may still append: see
``locks.py``) are folded into the live buffer: rows in order, spooled records, live dedupe keys
and loss counters, all in one transaction, then the orphan's files are removed.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

from ..logs import get_logger
from . import dedupe, location, loss
from .connections import Connections
from .entries import ADOPT_ROWS, EntriesTable, last_cum, rollback, totals
from .ingest import INGEST_ROWS, read_offsets, store_batch
from .locks import ADOPTER, LockBusy, SidecarLock
from .schema import BUMP, inspect, is_sqlite_header
from .spool import SpoolReader, spool_dir_for

__all__ = ["CORRUPT_COUNTER", "OrphanAdopter", "remove_files", "set_aside"]

log = get_logger(__name__)

CORRUPT_COUNTER = "corrupt_files_set_aside"
_ADOPT_COUNTERS = (
    "INSERT INTO main.counters(name, engine, n) SELECT name, engine, n FROM orphan.counters"
    f" WHERE name LIKE 'loss.%' OR name = '{CORRUPT_COUNTER}' ON CONFLICT(name, engine)"
    " DO UPDATE SET n = n + excluded.n"
)


def set_aside(path: Path, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    for side in location.side_files(path):
        try:
            os.replace(side, target.with_name(target.name + side.name[len(path.name):]))
        except FileNotFoundError:
            pass
    log.warning("buffer.corrupt_set_aside", path=str(path), moved_to=str(target), reason=problem)


def corrupt_count(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT coalesce(sum(n), 0) FROM counters WHERE name=?", (CORRUPT_COUNTER,)).fetchone()
    return int(row[0])


def forgettable(conn: sqlite3.Connection) -> bool:
    """Empty and remembering nothing: an owner may remove the file on close. A file that
    remembers executed commands or counted losses is kept: the next agent of this deployment
    reopens it, so dedupe and loss totals survive restarts."""
    if totals(conn)[0] != 0:
        return False
    return not conn.execute(f"SELECT {dedupe.ANY_LIVE} OR {loss.ANY_PERSISTED}", (time.time(),)).fetchone()[0]


def remove_files(path: Path, lock: SidecarLock) -> None:
    """Delete a buffer file, its side files and spool; the caller holds ``lock`` exclusively."""
    spool = SpoolReader(spool_dir_for(path))
    for name in spool.names():
        spool.remove(name)
    spool.remove_staging()
    for p in (path, *location.side_files(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(spool.directory)
    except OSError:
        pass
    lock.unlink()


class OrphanAdopter:
    """The owner's scan for dead siblings' files (same deployment family, same directory)."""

    def __init__(self, path: Path, deployment: str, conns: Connections, table: EntriesTable) -> None:
        self._path = path
        self._deployment = deployment
        self._conns = conns
        self._table = table

    def adopt_all(self) -> int:
        pattern = location.family_pattern(location.family_first(self._path))
        try:
            names = sorted(os.listdir(self._path.parent))
        except OSError:
            return 0
        total = 0
        for name in names:
            if name != self._path.name and pattern.match(name):
                total += self._adopt_one(self._path.with_name(name))
        if total:
            self._table.reset_budget()
        return total

    def _adopt_one(self, orphan: Path) -> int:
        try:
            st = os.lstat(orphan)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return 0
            lock = SidecarLock.acquire(location.lock_path_for(orphan), ADOPTER)
        except (LockBusy, OSError):
            return 0
        adopted = 0
        try:
            problem = inspect(orphan)
            if problem is not None:
                set_aside(orphan, problem)
                with self._conns.write_lock:
                    self._conns.writer().execute(BUMP, (CORRUPT_COUNTER, "", 1))
                lock.unlink()
                return 0
            if is_sqlite_header(orphan) is None:
                remove_files(orphan, lock)
                return 0
            with self._conns.write_lock:
                adopted = self._copy_from(orphan)
            if adopted < 0:  # another deployment's, or a process still writes its spool
                return 0
            remove_files(orphan, lock)
            log.info("buffer.adopted", path=str(self._path), orphan=str(orphan), rows=adopted)
        except Exception as exc:  # noqa: BLE001 - one bad orphan must not stop the agent
            log.error("buffer.adopt_failed", orphan=str(orphan), error=f"{type(exc).__name__}: {exc}")
            adopted = 0
        finally:
            lock.release()
        return adopted

    def _copy_from(self, orphan: Path) -> int:
        """Caller holds the write lock and the orphan's adopter lock. -1 = not now / not ours."""
        conn = self._conns.writer()
        conn.execute("ATTACH DATABASE ? AS orphan", (str(orphan),))
        try:
            meta = dict(conn.execute("SELECT key, value FROM orphan.meta").fetchall())
            if self._deployment and meta.get("deployment", self._deployment) != self._deployment:
                return -1
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.execute(ADOPT_ROWS, (last_cum(conn),))
                adopted = conn.total_changes - before
                spooled = self._copy_spool(conn, orphan)
                if spooled < 0:
                    rollback(conn)
                    return -1
                conn.execute(dedupe.ADOPT, (time.time(),))
                conn.execute(_ADOPT_COUNTERS)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
            return adopted + spooled
        finally:
            conn.execute("DETACH DATABASE orphan")

    def _copy_spool(self, conn: sqlite3.Connection, orphan: Path) -> int:
        """Inside _copy_from's transaction: the orphan's spooled records not yet in its entries.
        -1 when one of its spool files is still being written (adopt later)."""
        reader = SpoolReader(spool_dir_for(orphan))
        names = reader.names()
        if not names:
            return 0
        offsets = read_offsets(conn, "orphan")
        finished: set[str] = set()
        stored = 0
        while True:
            batch = reader.collect(offsets, max_rows=INGEST_ROWS)
            if not batch:
                break
            stored += store_batch(conn, self._table, batch)
            offsets.update(batch.offsets)
            finished.update(batch.finished)
            if not batch.rows:
                break
        if set(names) - finished:
            return -1
        return stored
