"""BufferStore: the durable local outbox, and the one storage API the rest of the agent uses.

Every outbound record is durable before the hook that produced it returns; the drainer reads
rows in id order and deletes them only when the brain confirms them. The parts, each in its own
module under ``storage/`` (docs/architecture.md, "Storage", has the whole picture):

* ``location``: where the file lives (``Z4J_HOME``, siblings, the ``$TMPDIR`` fallback);
  ``locks``: the sidecar locks (owner, writers, adopter);
* ``schema``: tables, connections, creation, "is this file ours";
  ``connections``: this process's writer/drain/probe connections and fork hygiene;
* ``spool``: the hot path, one ``write()`` per append to this process's spool file;
  ``ingest``: the owner moves spooled records into SQLite;
* ``entries``: the outbox table (append, read, ack, caps, eviction);
* ``loss``: the loss ledger; ``dedupe``: executed commands; ``recovery``: set-aside files and
  orphan adoption; ``status``: the read-only view for ``doctor`` and ``z4j-bare status``.

Hot path = one ``write()`` to this process's spool file: a SQLite commit costs a page write and
several file locks, which a busy Celery main process felt on every event. A row that may not fit
``max_bytes``, a spool that cannot be written, or a spool past ``max_bytes`` with nobody
emptying it, fall back to one prepared INSERT in autocommit, whose caps then apply.

Reads never write. ``depth()``, ``size_bytes()``, ``oldest_age()``, ``telemetry_loss()``,
``stats()`` and ``seen_command()`` read what is committed, on a query-only connection, so any
thread (a health probe) may call them cheaply. The owner's I/O thread keeps that state current
by calling ``ingest()`` (spooled records into SQLite, in-memory loss counts committed) a few
times a second; ``read()``, the drainer's call, ingests first, and ``depth_after_ingest()`` is
the explicit "ingest, then read" for the callers that must not miss a spooled row.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .logs import get_logger
from .storage import connections, entries, location, opening
from .storage.connections import Connections
from .storage.dedupe import CommandDedupe
from .storage.entries import EntriesTable, body_size, rollback
from .storage.ingest import SpoolIngest
from .storage.locks import OWNER, WRITER, LockBusy, SidecarLock
from .storage.loss import LOSS_KEYS, LossLedger, counts_for_category, read_persisted
from .storage.loss import encode_record as encode_loss_record
from .storage.recovery import OrphanAdopter, corrupt_count, forgettable, remove_files
from .storage.schema import (
    FORMAT,
    BufferRow,
    BufferStorageError,
    LockedError,
    UnwritableError,
)
from .storage.spool import SpoolAppender, spool_dir_for

__all__ = ["FORMAT", "LOSS_KEYS", "BufferRow", "BufferStorageError", "BufferStore"]

log = get_logger(__name__)

T = TypeVar("T")



class BufferStore:
    """Durable outbox on one SQLite file. Thread-safe and fork-safe; see module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int = 100_000,
                 max_bytes: int = 256 * 2**20, owner: bool = True, deployment: str = "",
                 spool: bool = True) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"buffer max_rows must be an int >= 1, got {max_rows!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1024:
            raise ValueError(f"buffer max_bytes must be an int >= 1024, got {max_bytes!r}")
        self.path = Path(path)
        self.fallback_reason: str | None = None
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.buffer_id = ""
        self._deployment = deployment
        self._owner = owner
        self._pid = os.getpid()
        self._closed = False
        self._lock: SidecarLock | None = None
        self._writer_lock_tried = False
        self._conns = Connections(self.path, before_first_writer=self._take_writer_lock)
        self._loss = LossLedger()
        self._entries = EntriesTable(str(self.path), max_rows, max_bytes, self._refused)
        self._dedupe = CommandDedupe()
        self._spool_on = bool(spool)
        self._spool = SpoolAppender(spool_dir_for(self.path), max_bytes)
        self._spool_max_len = max_bytes // 4  # characters: at most 4 UTF-8 bytes each
        self._ingest = SpoolIngest(self.path)
        self._last_checkpoint = time.monotonic()
        parent = self.path.parent
        reason = location.check_private_dir(parent) if not parent.exists() else None
        if reason is not None:
            raise UnwritableError(f"buffer directory unusable: {reason}; {opening.FIX_HOME}")
        lock_path = location.lock_path_for(self.path)
        try:
            self._lock = SidecarLock.acquire(lock_path, OWNER if owner else WRITER)
        except LockBusy as busy:
            who = f"pid {busy.pid}" if busy.pid else "another process"
            raise LockedError(f"buffer {self.path} is locked by {who} (a live agent owns it); "
                              "use BufferStore.open_for_deployment to pick a free sibling") from None
        except OSError as exc:
            raise UnwritableError(f"cannot create lock file {lock_path}: {exc.strerror}; {opening.FIX_HOME}") from None
        try:
            conn, meta = opening.prepare_file(self.path, owner=owner, deployment=deployment,
                                              also=self._ingest.load_offsets if owner else None)
        except BaseException:
            self._lock.release()
            self._lock = None
            raise
        self.buffer_id = meta["buffer_id"]
        self._conns.adopt_writer(conn)
        connections.register(self)

    # ------------------------------------------------------------------ opening

    @property
    def owner(self) -> bool:
        return self._owner and self._pid == os.getpid()

    @classmethod
    def open_for_deployment(cls, home: Path | None, deployment: str, *,
                            buffer_path: Path | None = None, **caps: Any) -> BufferStore:
        """Open this deployment's buffer as owner, choosing a free sibling if one is locked.

        Falls back to a private directory under $TMPDIR (one ``buffer.relocated`` warning)
        when the configured directory cannot be used.
        """
        store, reason = opening.open_for_deployment(cls, home, deployment, buffer_path, caps)
        store.fallback_reason = reason
        return store

    # ------------------------------------------------------------------ fork handling

    def _quiesce_for_fork(self) -> None:
        self._conns.hold_all()

    def _resume_after_fork(self) -> None:
        self._conns.release_all()

    def _forked(self) -> None:
        """First moment in a child: forget the parent's handles and duties without touching them."""
        self._conns.forget_after_fork()
        if self._lock is not None:
            self._lock.forget_in_child()
            self._lock = None
        self._pid = os.getpid()
        self._owner = False
        self._writer_lock_tried = False
        self._entries.reset_budget()
        self._ingest.forget_after_fork()
        self._loss.forget_after_fork()
        self._spool.writer.after_fork_in_child()

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():
            self._forked()

    def _take_writer_lock(self) -> None:
        """A non-owner process says "I may append" (no adoption or removal meanwhile); once."""
        if self._lock is not None or self._owner or self._writer_lock_tried:
            return
        self._writer_lock_tried = True
        try:
            self._lock = SidecarLock.acquire(location.lock_path_for(self.path), WRITER)
        except (LockBusy, OSError):
            pass  # an adopter holds it right now; appends still land in the file

    # ------------------------------------------------------------------ hot path

    def append(self, kind: str, body: str, engine: str = "") -> bool:
        """Make one row durable (spool write, else SQLite commit); never raises.

        ``False`` = not stored (counted as lost).
        """
        try:
            if self._pid != os.getpid():
                self._ensure_process()
            # A body that might not fit max_bytes takes the SQLite path, which says so at once.
            if self._spool_on and len(body) <= self._spool_max_len and \
                    self._spool_write([(kind, engine, body, time.time())]):
                return True
            size = len(body) if body.isascii() else body_size(body)
            conns = self._conns
            with conns.write_lock:
                stored = self._entries.append(conns.writer(), [(kind, body, engine, size, time.time())])
                self._carry_loss_after_commit()
            return stored == 1
        except Exception as exc:  # noqa: BLE001 - never propagate into the host's hook
            self._append_failed(kind, engine, 1, exc)
            return False

    def append_many(self, rows: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str]]) -> int:
        """Make many rows durable in one write (or one transaction); returns how many were stored."""
        now = time.time()
        spooled = [(row[0], row[2] if len(row) > 2 else "", row[1], now) for row in rows]  # kind, engine, body
        if not spooled:
            return 0
        try:
            if self._pid != os.getpid():
                self._ensure_process()
            limit = self._spool_max_len
            if self._spool_on and all(len(row[2]) <= limit for row in spooled) and self._spool_write(spooled):
                return len(spooled)
            items = [(kind, body, engine, body_size(body), now) for kind, engine, body, _t in spooled]
            with self._conns.write_lock:
                stored = self._entries.append(self._conns.writer(), items)
                self._carry_loss_after_commit()
            return stored
        except Exception as exc:  # noqa: BLE001 - never propagate into the host's hook
            for kind, engine, _b, _t in spooled:
                self._append_failed(kind, engine, 1, exc)
            return 0

    def _spool_write(self, rows: list[tuple[str, str, str, float]]) -> bool:
        """Append to this process's spool file; False = use SQLite directly this time."""
        if self._closed:
            return False  # the SQLite path reports the closed store
        if self._lock is None and not self._owner:
            self._take_writer_lock()
        if self._loss.dirty and not self.owner:
            return self._spool_write_carrying_loss(rows)
        return self._spool.append(rows)

    def _spool_write_carrying_loss(self, rows: list[tuple[str, str, str, float]]) -> bool:
        """A non-owner has no I/O thread to commit its loss counts: they ride on its next spool
        write as one ``~loss`` record, in the same write() as the rows (so exactly once)."""
        counts = self._loss.take()
        if self._spool.append([encode_loss_record(counts, time.time()), *rows]):
            return True
        self._loss.give_back(counts)
        return False

    def _carry_loss_after_commit(self) -> None:
        """Caller holds the write lock: a non-owner whose appends take the SQLite path commits its
        loss counts there (at most once a second while that fails)."""
        if self._loss.dirty and not self.owner:
            self._loss.flush(self._conns.writer)

    def _append_failed(self, kind: str, engine: str, n: int, exc: BaseException | None,
                       reason: str | None = None) -> None:
        try:
            self._loss.append_failed(kind, engine, n, reason or f"{type(exc).__name__}: {exc}", str(self.path))
        except Exception:  # noqa: BLE001, S110 - counting must not fail the host's hook
            pass

    def _refused(self, kind: str, engine: str, reason: str) -> None:
        self._append_failed(kind, engine, 1, None, reason=reason)

    # ------------------------------------------------------------------ spool -> SQLite

    def ingest(self) -> int:
        """Owner's I/O duty: move spooled records (every process's) into SQLite and commit the
        loss counts this process holds in memory; returns rows moved. Never raises.

        The reads below (depth, telemetry, stats) never do this themselves: they report what the
        owner's I/O thread has kept current by calling it (a few times a second). A second caller
        waits for a pass in progress, so ``ingest(); depth()`` never misses rows being moved.
        """
        if self._closed or not self.owner:
            return 0
        moved = 0
        if self._spool_on:
            moved = self._ingest.run(self._entries, self._conns.write_lock, self._conns.writer)
        if self._loss.dirty:
            with self._conns.write_lock:
                self._loss.flush(self._conns.writer)
        return moved

    def depth_after_ingest(self) -> int:
        """``ingest()`` then ``depth()``: for the callers that must not miss a spooled row (the
        drain, ``flush()``, ``stop()``); health probes use ``depth()``."""
        self.ingest()
        return self.depth()

    # ------------------------------------------------------------------ drain side

    def read(self, after_id: int = 0, limit: int = 5000) -> list[BufferRow]:
        self._ensure_process()
        self.ingest()
        with self._conns.drain_lock:
            return entries.read(self._conns.drain(), after_id, limit)

    def delete(self, ids: Iterable[int]) -> int:
        id_runs = entries.runs(ids)
        if not id_runs:
            return 0
        self._ensure_process()
        with self._conns.write_lock:
            conn = self._conns.writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed, _ = entries.delete_runs(conn, id_runs)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        self._maybe_checkpoint()
        return removed

    def mark_attempt(self, ids: Iterable[int]) -> None:
        id_runs = entries.runs(ids)
        if not id_runs:
            return
        self._ensure_process()
        with self._conns.write_lock:
            conn = self._conns.writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                entries.mark_attempt(conn, id_runs)
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise

    # ------------------------------------------------------------------ pure reads

    def _probe(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``read`` on this process's query-only connection: it cannot write, and it never
        waits behind the drain or an append."""
        self._ensure_process()
        with self._conns.probe_lock:
            return read(self._conns.probe())

    def depth(self) -> int:
        """Rows committed and waiting (exact, O(log n)); spooled records count once ingested."""
        return self._probe(entries.totals)[0]

    def size_bytes(self) -> int:
        return self._probe(entries.totals)[1]

    def oldest_age(self) -> float | None:
        created = self._probe(entries.oldest_created_at)
        return None if created is None else max(0.0, time.time() - created)

    # ------------------------------------------------------------------ telemetry

    def count_loss(self, category: str, n: int = 1, *, engine: str | None = None) -> None:
        """Add ``n`` to a ``telemetry_loss`` counter (persisted).

        ``engine`` also adds ``n`` to ``adapter_events[engine]``; ``category`` may be
        ``"adapter_events"`` alone (then ``engine`` is required).
        """
        counts = counts_for_category(category, n, engine)
        if counts:
            self._loss.add(counts)
            self._flush_loss()

    def _flush_loss(self) -> None:
        if not self._loss.dirty:
            return
        try:
            self._ensure_process()
            with self._conns.write_lock:
                self._loss.flush(self._conns.writer, force=True)
        except Exception:  # noqa: BLE001, S110 - kept in memory; reported anyway
            pass

    def telemetry_loss(self) -> dict[str, Any]:
        """protocol.md 2.3 ``telemetry_loss`` object (exact key set; brain validates strictly):
        the ledger in the file plus this process's counts not committed yet. A pure read."""
        counters = self._loss.view(lambda: self._probe(read_persisted))
        return {"buffer_id": self.buffer_id, "runtime_id": f"{self.buffer_id}:{os.getpid()}", **counters}

    def stats(self) -> dict[str, Any]:
        """Local diagnostics (not sent on the wire). A pure read."""
        rows, nbytes, set_aside_count = self._probe(lambda conn: (*entries.totals(conn), corrupt_count(conn)))
        return {"path": str(self.path), "buffer_id": self.buffer_id, "owner": self.owner,
                "rows": rows, "bytes": nbytes, "max_rows": self.max_rows, "max_bytes": self.max_bytes,
                "corrupt_files_set_aside": set_aside_count, "append_failures": self._loss.append_failures,
                "fallback_reason": self.fallback_reason}

    # ------------------------------------------------------------------ command dedupe

    def seen_command(self, key: str) -> bool:
        return self._probe(lambda conn: self._dedupe.seen(conn, key))

    def remember_command(self, key: str, ttl_seconds: float) -> None:
        self._ensure_process()
        with self._conns.write_lock:
            self._dedupe.remember(self._conns.writer(), key, ttl_seconds)

    # ------------------------------------------------------------------ recovery

    def adopt_orphans(self) -> int:
        """Owner: fold dead siblings' buffers into this one; returns rows adopted."""
        if not self.owner:
            return 0
        return OrphanAdopter(self.path, self._deployment, self._conns, self._entries).adopt_all()

    # ------------------------------------------------------------------ maintenance

    def checkpoint(self) -> None:
        """Owner: PASSIVE checkpoint (never blocks appenders)."""
        self._ensure_process()
        with self._conns.drain_lock:
            try:
                self._conns.drain().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                log.warning("buffer.checkpoint_failed", path=str(self.path), error=str(exc))
        self._last_checkpoint = time.monotonic()

    def _maybe_checkpoint(self) -> None:
        if self.owner and time.monotonic() - self._last_checkpoint > 1.0:
            self.checkpoint()

    def close(self) -> None:
        """Idempotent. The owner removes the file when empty and no other process writes it."""
        if self._closed:
            return
        if self._pid != os.getpid():
            self._forked()
        self._spool.writer.close()
        if self.owner:
            self.ingest()  # every finished spool file, our own included, into SQLite
            self._flush_loss()
        conns = self._conns
        conns.hold_all()
        try:
            if self._closed:
                return
            remove = self._removable()
            self._closed = True
            conns.close_all()
            lock, self._lock = self._lock, None
            if lock is not None:
                if remove:
                    remove_files(self.path, lock)
                lock.release()
        finally:
            conns.release_all()
        connections.unregister(self)

    def _removable(self) -> bool:
        """Caller holds every lock. Empty, remembers nothing, and provably nobody else appends?"""
        conn = self._conns.open_writer
        if not self.owner or self._lock is None or conn is None:
            return False
        try:
            remove = (forgettable(conn) and not self._ingest.reader.names()
                      and self._lock.upgrade_to_exclusive())
            if not remove:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return remove
        except sqlite3.Error:
            return False

    def __enter__(self) -> BufferStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BufferStore path={str(self.path)!r} owner={self.owner} closed={self._closed}>"
