"""A small SQLite file that callers only queue rows for: what the engines' stores share.

The Celery request store and the Dramatiq message store remember, on the host, what a retry by
reference needs. Their writers are a worker's hot path, so a writer only queues (a list of rows
or, where the newest row per key wins, a dict); a thread started on the first queued row commits
everything queued ``linger`` seconds later in one transaction. ``flush`` commits at once (readers
call it first, and ``close``).

A commit the file refuses (another process holds it past ``busy_timeout``, or is still creating
it when several processes start together) keeps its rows queued, and the writer tries again with
a growing pause. Only a file that keeps refusing is worth a warning; rows beyond ``max_queued``
are then dropped, oldest first, and counted in ``dropped``. Rows queued when the process is
SIGKILLed (at most one linger) are lost: the store then says "not known to this agent".

A forked child starts afresh: new locks, no writer thread, and it never touches the parent's
connection (closing it could drop the parent's SQLite locks), so the handle is kept aside.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

from ..logs import get_logger
from ..safety import safe_call

log = get_logger(__name__)

MAX_QUEUED = 20_000
RETRY_MAX_SECONDS = 2.0
WARN_AFTER_REFUSALS = 8     # about 6 s of refusals in a row
_INHERITED: list[sqlite3.Connection] = []  # a parent's handles a forked child must never close


class QueuedStore:
    """Subclasses name their ``schema``, write a batch (``_write``) and bound the file (``_prune``)."""

    schema: tuple[str, ...] = ()
    thread_name = "z4j-store"
    flush_site = "store.flush"
    prune_every = 1000

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int, ttl: float, linger: float,
                 keyed: bool, busy_timeout: float = 5.0, max_queued: int = MAX_QUEUED) -> None:
        self.path = str(path)
        self.max_rows = max(1, int(max_rows))
        self.ttl = float(ttl)
        self.linger = float(linger)
        self.busy_timeout = float(busy_timeout)
        self.max_queued = max(1, int(max_queued))
        self.dropped = 0  # rows given up after the file kept refusing them
        self._keyed = keyed
        self._lock = threading.Lock()  # the connection, and a write in progress
        self._conn: sqlite3.Connection | None = None
        self._queue_lock = threading.Lock()
        self._queued: Any = {} if keyed else []
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._pid = os.getpid()
        self._since_prune = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, max_rows={self.max_rows})"

    # -- what a subclass provides ----------------------------------------------------------------
    def _write(self, conn: sqlite3.Connection, batch: Any) -> None:
        raise NotImplementedError

    def _prune(self, conn: sqlite3.Connection) -> None:
        raise NotImplementedError

    # -- the file --------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for statement in self.schema:
                    conn.execute(statement)
            except BaseException:
                conn.close()  # set up again from scratch next time
                raise
            self._conn = conn
        return self._conn

    # -- writing ---------------------------------------------------------------------------------
    def _enqueue(self, rows: Any) -> None:
        """Queue ``rows`` (a list of rows, or a dict for a keyed store); committed within ``linger``."""
        self._check_process()
        with self._queue_lock:
            if self._keyed:
                self._queued.update(rows)
            else:
                self._queued.extend(rows)
            backlog = len(self._queued)
        if backlog >= self.max_queued or self._closed:
            # The writer is slow, stuck or gone: the caller commits. A refusal keeps the rows
            # queued (bounded) for the writer's next try; the caller's work goes on.
            try:
                self.flush()
                return
            except sqlite3.OperationalError:
                if self._closed:
                    return
        self._ensure_writer()
        self._wake.set()

    def flush(self) -> None:
        """Commit every queued row now; a refused commit raises and leaves its rows queued."""
        self._check_process()
        with self._lock:
            with self._queue_lock:
                batch, self._queued = self._queued, ({} if self._keyed else [])
            if not batch:
                return
            try:
                conn = self._commit(batch)
            except sqlite3.OperationalError:
                self._requeue(batch)
                raise
            self._since_prune += len(batch)
            if self._since_prune >= self.prune_every:
                self._since_prune = 0
                self._prune(conn)

    def _commit(self, batch: Any) -> sqlite3.Connection:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._write(conn, batch)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return conn

    def _requeue(self, batch: Any) -> None:
        """A refused batch goes back before what was queued since (which is newer), within bounds."""
        with self._queue_lock:
            queued = {**batch, **self._queued} if self._keyed else [*batch, *self._queued]
            excess = len(queued) - self.max_queued
            if excess > 0:
                if self._keyed:
                    for key in list(queued)[:excess]:
                        del queued[key]
                else:
                    del queued[:excess]
                self.dropped += excess
            self._queued = queued

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._queue_lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name=self.thread_name, daemon=True)
                    self._writer.start()

    def _write_loop(self) -> None:
        wake = self._wake
        refusals = 0
        while not self._closed:
            wake.wait(None if refusals == 0 else min(RETRY_MAX_SECONDS, 0.05 * 2 ** refusals))
            wake.clear()
            if not self._closed:
                time.sleep(self.linger)
            refusals = safe_call(self._flush_once, refusals, site=self.flush_site, default=0)

    def _flush_once(self, refusals: int) -> int:
        """One flush for the writer thread; returns how many flushes in a row the file refused."""
        try:
            self.flush()
        except sqlite3.OperationalError as exc:
            # Normal for a moment when several processes start at once: the rows wait in the
            # queue. Only a file that keeps refusing is news.
            refusals += 1
            level = log.warning if refusals == WARN_AFTER_REFUSALS else log.debug
            level("store.refused", path=self.path, error=getattr(exc, "sqlite_errorname", "?"),
                  refusals=refusals, queued=len(self._queued), dropped=self.dropped)
            return refusals
        return 0

    def _check_process(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queued = type(self._queued)(self._queued)
        self._wake = threading.Event()
        self._writer = None
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None

    def close(self) -> None:
        self._check_process()
        self._closed = True
        self._wake.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(1.0)
        safe_call(self.flush, site=self.flush_site)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
