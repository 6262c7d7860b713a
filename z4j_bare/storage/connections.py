"""One process's SQLite connections to a buffer file, and what a fork does to them.

Three connections per process, each opened on first use and each behind its own lock (threads
queue on the lock instead of SQLite's sleeping busy handler):

* ``writer``: appends that take the SQLite path, ingest, acks, counters;
* ``drain``: the owner's I/O thread reads batches and checkpoints (WAL readers never block the
  writer);
* ``probe``: ``PRAGMA query_only``, for the pure reads any thread may make (depth, totals,
  telemetry, dedupe lookups): it cannot start a write, and a probe never waits behind a drain.

Fork: before ``fork()`` every registered store holds all its locks, so no thread of ours is inside
SQLite (holding one of its global mutexes) at the moment the child is copied; the connections
stay open (closing them cost the parent a reopen on every fork, and RQ forks once per job).
The child forgets the inherited connections without touching them and opens its own lazily.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .schema import BufferStorageError, connect

__all__ = ["Connections", "ForkAware", "register", "unregister"]


class ForkAware(Protocol):
    def _quiesce_for_fork(self) -> None: ...
    def _resume_after_fork(self) -> None: ...
    def _forked(self) -> None: ...


_REGISTERED: weakref.WeakSet[Any] = weakref.WeakSet()
# Inherited connections a child must never close: they carry the parent's SQLite state (and its
# POSIX locks' bookkeeping), so closing them could drop the parent's locks or checkpoint under it.
_GRAVEYARD: list[sqlite3.Connection] = []


def register(store: ForkAware) -> None:
    _REGISTERED.add(store)


def unregister(store: ForkAware) -> None:
    _REGISTERED.discard(store)


# The stores quiesced for the fork in progress, listed before it. After fork() every page the
# parent or the child writes is copied first (several microseconds each on a VM, more with other
# threads running): iterating the WeakSet there wrote to its guard, its pending-removal list and
# the weakrefs, and cost an RQ worker ~0.2 ms per job. A plain list made before the fork does not.
_quiesced: list[Any] = []


def _before_fork() -> None:
    global _quiesced
    _quiesced = list(_REGISTERED)
    for store in _quiesced:
        store._quiesce_for_fork()


def _after_fork_parent() -> None:
    for store in _quiesced:
        store._resume_after_fork()


def _after_fork_child() -> None:
    for store in _quiesced:
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)


class Connections:
    """The writer, drain and probe connections of one store in this process."""

    def __init__(self, path: Path, *, before_first_writer: Callable[[], None]) -> None:
        self.path = path
        self.write_lock = threading.Lock()
        self.drain_lock = threading.Lock()
        self.probe_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._drain: sqlite3.Connection | None = None
        self._probe: sqlite3.Connection | None = None
        self._before_first_writer = before_first_writer
        self.closed = False

    def adopt_writer(self, conn: sqlite3.Connection) -> None:
        """The connection that created the schema becomes this process's writer."""
        self._writer = conn

    @property
    def open_writer(self) -> sqlite3.Connection | None:
        """The writer if this process has opened one (caller holds ``write_lock``)."""
        return self._writer

    def writer(self) -> sqlite3.Connection:
        """Caller holds ``write_lock``."""
        conn = self._writer
        if conn is None:
            self._check_open()
            self._before_first_writer()
            conn = self._writer = connect(self.path, role="writer")
        return conn

    def drain(self) -> sqlite3.Connection:
        """Caller holds ``drain_lock``."""
        conn = self._drain
        if conn is None:
            self._check_open()
            conn = self._drain = connect(self.path, role="drain")
        return conn

    def probe(self) -> sqlite3.Connection:
        """Caller holds ``probe_lock``."""
        conn = self._probe
        if conn is None:
            self._check_open()
            conn = self._probe = connect(self.path, role="probe")
        return conn

    def _check_open(self) -> None:
        if self.closed:
            raise BufferStorageError(f"buffer {self.path} is closed")

    def hold_all(self) -> None:
        self.write_lock.acquire()
        self.drain_lock.acquire()
        self.probe_lock.acquire()

    def release_all(self) -> None:
        self.probe_lock.release()
        self.drain_lock.release()
        self.write_lock.release()

    def forget_after_fork(self) -> None:
        """First moment in a child: drop the parent's handles without touching them."""
        _GRAVEYARD.extend(c for c in (self._writer, self._drain, self._probe) if c is not None)
        self._writer = self._drain = self._probe = None
        self.write_lock = threading.Lock()
        self.drain_lock = threading.Lock()
        self.probe_lock = threading.Lock()

    def close_all(self) -> None:
        """Caller holds every lock (``hold_all``)."""
        self.closed = True
        for name in ("_writer", "_drain", "_probe"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
