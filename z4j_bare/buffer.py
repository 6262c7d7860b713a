"""BufferStore: the durable local outbox (SQLite in WAL mode).

Every outbound record is durable before the hook that produced it returns; the drainer reads
rows in id order and deletes them only when the brain confirms them.

Design notes (the why; figures in docs/performance.md, "Buffer"):

* Hot path = one ``write()`` to this process's spool file (``spool.py``): a SQLite commit costs
  a page write and several file locks, which a busy Celery main process felt on every event.
  The owner moves spooled records into ``entries`` in batches (``ingest``, run by ``read()``
  and the totals) and commits each file's offset with the rows. A row that may not fit
  ``max_bytes``, a spool that cannot be written, or a spool past ``max_bytes`` with nobody
  emptying it, fall back to the SQLite path below, whose caps then apply.
* SQLite path = one prepared INSERT in autocommit. Row and byte totals are kept *without*
  triggers or AUTOINCREMENT (each costs an extra page write per commit): ids are dense
  (``max(id)+1``) and a running ``cum`` byte total is stored per row, so
  ``rows = max(id) - gone_rows`` and ``bytes = max(cum) - gone_bytes``, where the ``gone``
  counters are updated inside every delete transaction. Both are O(log n) and exact.
* Ids are never reused: deleting the highest row would let SQLite hand its id out again
  (a drainer reading ``after_id`` would skip new rows), so the highest row is turned into
  a *tombstone* (kind ``~``, empty body) instead and removed once a newer row exists.
* Caps are checked only every few appends (a per-connection budget derived from the
  remaining room, halved each check, never more than 64); when over, the oldest rows are
  evicted in one transaction, with a small slack (0.5% of the cap, at most 256 rows) so a
  full buffer does not pay an eviction on every append. Several processes may overshoot a cap by at most
  their unchecked budgets, transiently.
* One writer connection per process behind a ``threading.Lock`` (threads queue on the
  lock instead of SQLite's sleeping busy handler), and a separate reader connection for
  the drainer (WAL readers never block the writer).
* Fork: before ``fork()`` every store in the process is quiesced and its connections are
  closed, so a child never inherits live SQLite state (SQLite's own advice); each process
  reopens lazily, detected by pid. Children are non-owners.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import struct
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import buffer_files as bf
from .logs import get_logger
from .spool import SpoolReader, SpoolWriter, encode_records, spool_dir_for

__all__ = ["FORMAT", "LOSS_KEYS", "BufferRow", "BufferStorageError", "BufferStore"]

log = get_logger(__name__)

FORMAT = "z4j-bare-buffer-1"
TOMBSTONE = "~"
LOSS_KEYS = (
    "capacity_evicted_frames",
    "content_rejected_frames",
    "event_records",
    "command_results",
    "other_frames",
    "unclassified_frames",
)
_COMMAND_KINDS = frozenset({"command_ack", "command_result"})
_MAX_UNCHECKED = 64
_REQUIRED_TABLES = frozenset({"meta", "entries", "counters", "seen_commands"})

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # INTEGER PRIMARY KEY without AUTOINCREMENT: see module docstring (tombstone).
    "CREATE TABLE IF NOT EXISTS entries("
    " id INTEGER PRIMARY KEY, kind TEXT NOT NULL, engine TEXT NOT NULL DEFAULT '',"
    " size INTEGER NOT NULL, cum INTEGER NOT NULL, created_at REAL NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters(name TEXT NOT NULL, engine TEXT NOT NULL DEFAULT '',"
    " n INTEGER NOT NULL, PRIMARY KEY(name, engine)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS seen_commands(key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID",
    # How far the owner has moved each spool file into ``entries`` (committed with the rows).
    "CREATE TABLE IF NOT EXISTS spool(name TEXT PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID",
)
#: Spool writes between two checks of the spool's size against max_bytes.
_SPOOL_CHECK_EVERY = 1024
#: Rows moved from the spool into SQLite per transaction (bounds the memory one pass holds).
_INGEST_ROWS = 1024

_INSERT = (
    "INSERT INTO entries(kind, engine, size, cum, created_at, body) VALUES"
    " (?1, ?2, ?3, ?3 + coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0), ?4, ?5)"
)
_INSERT_CUM = "INSERT INTO entries(kind, engine, size, cum, created_at, body) VALUES (?, ?, ?, ?, ?, ?)"
_LAST_CUM = "SELECT coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0)"
_TOTALS = (
    "SELECT coalesce((SELECT id FROM entries ORDER BY id DESC LIMIT 1), 0)"
    " - coalesce((SELECT n FROM counters WHERE name='gone.rows' AND engine=''), 0),"
    " coalesce((SELECT cum FROM entries ORDER BY id DESC LIMIT 1), 0)"
    " - coalesce((SELECT n FROM counters WHERE name='gone.bytes' AND engine=''), 0)"
)
_BUMP = (
    "INSERT INTO counters(name, engine, n) VALUES (?, ?, ?)"
    " ON CONFLICT(name, engine) DO UPDATE SET n = n + excluded.n"
)


class BufferStorageError(RuntimeError):
    """The buffer cannot be opened or created; the message names the path and the fix."""


class _LockedError(BufferStorageError):
    pass


class _OtherDeploymentError(BufferStorageError):
    pass


class _UnwritableError(BufferStorageError):
    pass


@dataclass(frozen=True, slots=True)
class BufferRow:
    id: int
    kind: str
    body: str
    attempts: int
    created_at: float
    engine: str = ""


_ROW_NEW = object.__new__
_ROW_SET = tuple(BufferRow.__dict__[f].__set__ for f in ("id", "kind", "body", "attempts", "created_at", "engine"))


def _make_row(values: tuple) -> BufferRow:
    # The frozen dataclass __init__ costs ~4 us per row (object.__setattr__ per field);
    # slot descriptors set the same fields ~4x faster, which matters at 5000 rows a read.
    row = _ROW_NEW(BufferRow)
    s0, s1, s2, s3, s4, s5 = _ROW_SET
    v0, v1, v2, v3, v4, v5 = values
    s0(row, v0); s1(row, v1); s2(row, v2); s3(row, v3); s4(row, v4); s5(row, v5)
    return row


# --------------------------------------------------------------------------- fork hygiene

_STORES: weakref.WeakSet[BufferStore] = weakref.WeakSet()
_GRAVEYARD: list[Any] = []  # inherited connections a child must never close (see _forked)


def _before_fork() -> None:
    for store in list(_STORES):
        store._quiesce_for_fork()


def _after_fork_parent() -> None:
    for store in list(_STORES):
        store._resume_after_fork()


def _after_fork_child() -> None:
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)


def _disable_checkpoint_on_close(conn: sqlite3.Connection) -> bool:
    """Make ``close()`` cheap: no checkpoint, no WAL deletion (the drainer checkpoints).

    Closing the last connection otherwise checkpoints with an fsync and deletes the WAL,
    ~10-100 ms, which would land on every fork (RQ forks per job).
    """
    const = getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", None)
    setconfig = getattr(conn, "setconfig", None)
    try:
        if setconfig is not None and const is not None:
            setconfig(const, True)
            return True
        # CPython 3.10/3.11: pysqlite_Connection starts with PyObject_HEAD, then `sqlite3 *db`.
        if sys.implementation.name != "cpython" or sys.version_info[:2] not in ((3, 10), (3, 11)):
            return False
        lib = _sqlite_lib()
        if lib is None:
            return False
        import ctypes

        db = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        out = ctypes.c_int(-1)
        rc = lib.sqlite3_db_config(ctypes.c_void_p(db), ctypes.c_int(1006), ctypes.c_int(1),
                                   ctypes.byref(out))
        return rc == 0 and out.value == 1
    except Exception:  # an optimisation only
        return False


_LIB: Any = False


def _sqlite_lib() -> Any:
    global _LIB
    if _LIB is False:
        try:
            import _sqlite3
            import ctypes

            lib = ctypes.CDLL(_sqlite3.__file__)
            lib.sqlite3_db_config.restype = ctypes.c_int
            _LIB = lib
        except Exception:
            _LIB = None
    return _LIB


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
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


def _body_size(body: str) -> int:
    return len(body) if body.isascii() else len(body.encode("utf-8", "surrogatepass"))


def _loss_bucket(kind: str) -> str:
    if kind == "event":
        return "event_records"
    if kind in _COMMAND_KINDS:
        return "command_results"
    return "other_frames"


def _inspect(path: Path) -> str | None:
    """Why the existing file is not a z4j buffer, or ``None`` if it is (or is empty)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        header = bf.is_sqlite_header(path)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if header is None:
        return None
    if header is False:
        return "not a SQLite database"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None,
                               timeout=5.0, check_same_thread=False)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        _disable_checkpoint_on_close(conn)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if not _REQUIRED_TABLES <= tables:
            return "foreign schema (tables: " + ", ".join(sorted(tables)[:8]) + ")"
        row = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if row is None or row[0] != FORMAT:
            return f"foreign format {row[0] if row else None!r}"
        conn.execute("SELECT id, kind, engine, size, cum, created_at, attempts, body"
                     " FROM entries ORDER BY id DESC LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        return f"corrupt: {exc}"
    finally:
        conn.close()
    return None

def _set_aside(path: Path, problem: str) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    for side in bf.side_files(path):
        try:
            os.replace(side, target.with_name(target.name + side.name[len(path.name):]))
        except FileNotFoundError:
            pass
    log.warning("buffer.corrupt_set_aside", path=str(path), moved_to=str(target),
                reason=problem)


# --------------------------------------------------------------------------- the store


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
        # Evict a little more than strictly needed so a full buffer pays one eviction per
        # ~slack appends instead of one per append (0.5% of the cap, at most 256 rows).
        self._slack_rows = min(256, max_rows // 200)
        self._slack_bytes = max_bytes // 200
        self._evict_log_at = 0.0
        self._evicted_since_log = 0
        self._deployment = deployment
        self._owner = owner
        self._pid = os.getpid()
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock: bf.SidecarLock | None = None
        self._closed = False
        self._budget_rows = 0
        self._budget_bytes = 0
        self._pending_loss: dict[tuple[str, str], int] = {}
        self._append_failures = 0
        self._corrupt_set_aside = 0
        self._last_checkpoint = time.monotonic()
        self._remember_calls = 0
        self.buffer_id = ""
        self._spool_on = bool(spool)
        self._spool = SpoolWriter(spool_dir_for(self.path))
        self._spool_reader = SpoolReader(spool_dir_for(self.path))
        self._spool_offsets: dict[str, int] = {}
        self._spool_budget = _SPOOL_CHECK_EVERY
        self._spool_errors = 0
        self._ingest_failures = 0
        self._spool_max_len = max_bytes // 4  # characters: at most 4 UTF-8 bytes each
        self._ilock = threading.Lock()
        self._writer_lock_tried = False

        parent = self.path.parent
        reason = bf.check_private_dir(parent) if not parent.exists() else None
        if reason is not None:
            raise _UnwritableError(f"buffer directory unusable: {reason}; set Z4J_HOME or "
                                   "buffer_path to a writable persistent directory")
        try:
            self._lock = bf.SidecarLock.acquire(self._lock_path, bf.OWNER if owner else bf.WRITER)
        except bf.LockBusy as busy:
            who = f"pid {busy.pid}" if busy.pid else "another process"
            raise _LockedError(f"buffer {self.path} is locked by {who} (a live agent owns it); "
                               "use BufferStore.open_for_deployment to pick a free sibling") from None
        except OSError as exc:
            raise _UnwritableError(f"cannot create lock file {self._lock_path}: {exc.strerror}; set "
                                   "Z4J_HOME or buffer_path to a writable persistent directory") from None
        try:
            self._prepare_file()
        except BaseException:
            self._lock.release()
            self._lock = None
            raise
        _STORES.add(self)

    # ------------------------------------------------------------------ opening

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def owner(self) -> bool:
        return self._owner and self._pid == os.getpid()

    def _prepare_file(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            problem = _inspect(self.path)
            if problem is not None:
                if not self._owner:
                    raise BufferStorageError(f"buffer {self.path} is unusable ({problem}); the owning "
                                             "agent sets it aside on its next start")
                _set_aside(self.path, problem)
                self._corrupt_set_aside += 1
        if not self.path.exists():
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            except FileExistsError:
                pass  # another process of the family created it first: fine
            except OSError as exc:
                raise _UnwritableError(f"cannot create buffer file {self.path}: {exc.strerror}; set "
                                       "Z4J_HOME or buffer_path to a writable persistent directory") from None
        conn = self._connect(writer=True)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("buffer.no_wal", path=str(self.path), journal_mode=mode)
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('buffer_id', ?)", (uuid.uuid4().hex,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(time.time()),))
            if self._deployment:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('deployment', ?)", (self._deployment,))
            if self._corrupt_set_aside:
                conn.execute(_BUMP, ("corrupt_files_set_aside", "", self._corrupt_set_aside))
                self._corrupt_set_aside = 0
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if self._owner:
                self._spool_offsets = self._load_offsets(conn, self._spool_reader.names())
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise BufferStorageError(f"cannot initialise buffer {self.path}: {exc}") from None
        if self._deployment and meta.get("deployment", self._deployment) != self._deployment:
            conn.close()
            raise _OtherDeploymentError(f"buffer {self.path} belongs to another deployment")
        self.buffer_id = meta["buffer_id"]
        self._wconn = conn
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                               timeout=5.0, cached_statements=64)
        _disable_checkpoint_on_close(conn)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        # The drainer checkpoints (PASSIVE) periodically; this is only a backstop for
        # processes nobody drains, so appends never pay for a checkpoint in normal runs.
        conn.execute("PRAGMA wal_autocheckpoint=16384")
        conn.execute("PRAGMA journal_size_limit=67108864")
        if not writer:
            conn.execute("PRAGMA mmap_size=67108864")
        return conn

    # ------------------------------------------------------------------ fork handling

    def _quiesce_for_fork(self) -> None:
        # Hold our locks across fork() so no thread of ours is inside SQLite (holding one of its
        # global mutexes) at the moment the child is copied. The connections stay open: closing
        # them here cost the parent a reopen on every fork (RQ forks once per job).
        self._wlock.acquire()
        self._rlock.acquire()

    def _resume_after_fork(self) -> None:
        self._rlock.release()
        self._wlock.release()

    def _forked(self) -> None:
        """First moment in a child: forget the parent's handles without touching them."""
        # The parent's connections carry its SQLite state (and its POSIX locks' bookkeeping):
        # closing them here could drop the parent's locks or checkpoint under it, so the child
        # keeps them referenced forever and never uses them.
        _GRAVEYARD.extend(c for c in (self._wconn, self._rconn) if c is not None)
        self._wconn = self._rconn = None
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        if self._lock is not None:
            self._lock.forget_in_child()
            self._lock = None
        self._pid = os.getpid()
        self._owner = False
        self._budget_rows = self._budget_bytes = 0
        self._writer_lock_tried = False
        self._ilock = threading.Lock()
        self._spool.after_fork_in_child()

    def _ensure_process(self) -> None:
        if self._pid != os.getpid():
            self._forked()

    def _writer(self) -> sqlite3.Connection:
        """Caller holds ``_wlock``."""
        conn = self._wconn
        if conn is None:
            if self._closed:
                raise BufferStorageError(f"buffer {self.path} is closed")
            if self._lock is None and not self._owner:
                self._take_writer_lock()
            conn = self._wconn = self._connect(writer=True)
        return conn

    def _take_writer_lock(self) -> None:
        """A non-owner process says "I may append" (no adoption or removal meanwhile); once."""
        if self._writer_lock_tried:
            return
        self._writer_lock_tried = True
        try:
            self._lock = bf.SidecarLock.acquire(self._lock_path, bf.WRITER)
        except (bf.LockBusy, OSError):
            pass  # an adopter holds it right now; appends still land in the file

    def _reader(self) -> sqlite3.Connection:
        """Caller holds ``_rlock``."""
        conn = self._rconn
        if conn is None:
            if self._closed:
                raise BufferStorageError(f"buffer {self.path} is closed")
            conn = self._rconn = self._connect(writer=False)
        return conn

    # ------------------------------------------------------------------ locating

    @classmethod
    def open_for_deployment(cls, home: Path | None, deployment: str, *,
                            buffer_path: Path | None = None, **caps: Any) -> BufferStore:
        """Open this deployment's buffer as owner, choosing a free sibling if one is locked.

        Falls back to a private directory under $TMPDIR (one ``buffer.relocated`` warning)
        when the configured directory cannot be used.
        """
        if not deployment or not all(c.isalnum() or c in "-_." for c in deployment) or len(deployment) > 64:
            raise ValueError("deployment must be 1-64 characters of [A-Za-z0-9._-] "
                             f"(got {len(deployment)} characters)")
        if buffer_path is not None:
            first = Path(buffer_path).expanduser()
            if not first.is_absolute():
                first = Path.cwd() / first
        else:
            first = Path(home if home is not None else bf.z4j_home()) / f"buffer-{deployment}.sqlite"
        reason = bf.check_private_dir(first.parent)
        if reason is None:
            store, reason = cls._first_free(first, deployment, caps)
            if store is not None:
                return store
        root = bf.fallback_root()
        store = None
        why_not = "no private directory could be created under $TMPDIR"
        if root is not None:
            store, why_not = cls._first_free(root / first.name, deployment, caps)
        if store is None:
            raise BufferStorageError(
                f"no writable location for the z4j buffer: {reason}; fallback: {why_not}. "
                "Fix: set Z4J_HOME (or buffer_path) to a persistent directory this user can write.")
        store.fallback_reason = reason
        log.warning("buffer.relocated", path=str(store.path), wanted=str(first), reason=reason,
                    fix="set Z4J_HOME or buffer_path to a persistent directory owned by this user; "
                        "buffered events under $TMPDIR may be lost on reboot")
        return store

    @classmethod
    def _first_free(cls, first: Path, deployment: str,
                    caps: dict[str, Any]) -> tuple[BufferStore | None, str]:
        last = f"all {bf.MAX_SIBLINGS} buffer names next to {first} are in use"
        for candidate in bf.sibling_paths(first):
            try:
                return cls(candidate, owner=True, deployment=deployment, **caps), ""
            except (_LockedError, _OtherDeploymentError) as exc:
                last = str(exc)
                continue
            except _UnwritableError as exc:
                return None, str(exc)
            except BufferStorageError as exc:
                last = str(exc)
                continue
        return None, last

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
            size = len(body) if body.isascii() else _body_size(body)
            with self._wlock:
                conn = self._wconn or self._writer()
                self._budget_rows -= 1
                self._budget_bytes -= size
                if self._budget_rows < 0 or self._budget_bytes < 0:
                    return self._append_checked(conn, [(kind, body, engine, size, time.time())]) == 1
                conn.execute(_INSERT, (kind, engine, size, time.time(), body))
            return True
        except Exception as exc:  # never propagate into the host's hook
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
            items = [(kind, body, engine, _body_size(body), now) for kind, engine, body, _t in spooled]
            with self._wlock:
                conn = self._writer()
                self._budget_rows -= len(items)
                self._budget_bytes -= sum(item[3] for item in items)
                if self._budget_rows < 0 or self._budget_bytes < 0:
                    return self._append_checked(conn, items)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_INSERT, [(kind, engine, size, now, body) for kind, body, engine, size, _t in items])
                    conn.execute("COMMIT")
                except BaseException:
                    self._rollback(conn)
                    raise
                return len(items)
        except Exception as exc:
            for kind, engine, _b, _t in spooled:
                self._append_failed(kind, engine, 1, exc)
            return 0

    def _spool_write(self, rows: list[tuple[str, str, str, float]]) -> bool:
        """Append to this process's spool file; False = use SQLite directly this time."""
        if self._closed:
            return False  # the SQLite path reports the closed store
        self._spool_budget -= 1
        if self._spool_budget < 0 and not self._spool_has_room():
            return False
        try:
            data = encode_records(rows)
        except (ValueError, struct.error):
            return False  # the SQLite path refuses and counts the same row
        if self._lock is None and not self._owner:
            self._take_writer_lock()
        try:
            self._spool.write(data)
            return True
        except OSError as exc:
            self._spool_errors += 1
            self._spool_budget = _SPOOL_CHECK_EVERY  # the SQLite path for a while
            if self._spool_errors == 1 or self._spool_errors % 1000 == 0:
                log.warning("buffer.spool_failed", path=str(self._spool.directory), errors=self._spool_errors,
                            error=f"{type(exc).__name__}: {exc}", fallback="SQLite commits (slower, same durability)")
            return False

    def _spool_has_room(self) -> bool:
        """Every few thousand writes: is the spool (not yet moved into SQLite) under max_bytes?

        Without a live owner nothing empties it; past the cap, appends go to SQLite, whose
        caps evict the oldest rows (counted) instead of letting the disk fill.
        """
        self._spool_budget = _SPOOL_CHECK_EVERY
        total = 0
        try:
            with os.scandir(self._spool.directory) as it:
                for entry in it:
                    total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return True
        return total < self.max_bytes

    def _append_checked(self, conn: sqlite3.Connection, items: list[tuple[str, str, str, int, float]]) -> int:
        """Slow path (caller holds ``_wlock``): enforce caps, insert, refresh the budget."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = self._insert_capped(conn, items)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        return stored

    def _insert_capped(self, conn: sqlite3.Connection, items: list[tuple[str, str, str, int, float]]) -> int:
        """Insert rows (kind, body, engine, size, created_at), evicting the oldest rows as the caps
        require; inside the caller's transaction. Refreshes the unchecked-append budget."""
        rows, nbytes = conn.execute(_TOTALS).fetchone()
        total = sum(item[3] for item in items)
        if rows + len(items) <= self.max_rows and nbytes + total <= self.max_bytes:
            # Everything fits (the common case): one executemany, running totals from Python.
            cum = conn.execute(_LAST_CUM).fetchone()[0]
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
                    self._append_failed(kind, engine, 1, None, reason="row larger than max_bytes")
                    continue
                if rows + 1 > self.max_rows or nbytes + size > self.max_bytes:
                    freed_rows, freed_bytes = self._evict_locked(
                        conn, rows + 1 - self.max_rows + self._slack_rows,
                        nbytes + size - self.max_bytes + self._slack_bytes)
                    rows -= freed_rows
                    nbytes -= freed_bytes
                conn.execute(_INSERT, (kind, engine, size, created_at, body))
                rows += 1
                nbytes += size
                stored += 1
        self._budget_rows = min(_MAX_UNCHECKED, (self.max_rows - rows) // 2)
        self._budget_bytes = (self.max_bytes - nbytes) // 2
        return stored

    def _evict_locked(self, conn: sqlite3.Connection, need_rows: int, need_bytes: int) -> tuple[int, int]:
        """Delete the oldest rows until both needs are met; count them as capacity loss."""
        freed_rows = freed_bytes = 0
        last = 0
        by_bucket: dict[tuple[str, str], int] = {}
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
                bucket = _loss_bucket(kind)
                by_bucket[(bucket, "")] = by_bucket.get((bucket, ""), 0) + 1
                if bucket == "event_records" and engine:
                    by_bucket[("adapter_events", engine)] = by_bucket.get(("adapter_events", engine), 0) + 1
                if freed_rows >= need_rows and freed_bytes >= need_bytes:
                    break
            else:
                continue
            break
        if not last:
            return 0, 0
        self._delete_runs_locked(conn, [(1, last)])
        by_bucket[("capacity_evicted_frames", "")] = freed_rows
        conn.executemany(_BUMP, [(f"loss.{k}", e, n) for (k, e), n in by_bucket.items()])
        self._evicted_since_log += freed_rows
        now = time.monotonic()
        if now - self._evict_log_at >= 60.0:  # a full buffer evicts often: one line a minute
            log.warning("buffer.evicted", path=str(self.path), rows=self._evicted_since_log,
                        max_rows=self.max_rows, max_bytes=self.max_bytes,
                        fix="the brain is unreachable or slow; raise the buffer caps or fix the link")
            self._evict_log_at = now
            self._evicted_since_log = 0
        return freed_rows, freed_bytes

    def _append_failed(self, kind: str, engine: str, n: int, exc: BaseException | None,
                       reason: str | None = None) -> None:
        try:
            bucket = _loss_bucket(kind)
            self._pending_loss[(bucket, "")] = self._pending_loss.get((bucket, ""), 0) + n
            if bucket == "event_records" and engine:
                key = ("adapter_events", engine)
                self._pending_loss[key] = self._pending_loss.get(key, 0) + n
            self._append_failures += n
            if self._append_failures == 1 or self._append_failures % 1000 == 0:
                log.error("buffer.append_failed", path=str(self.path), kind=kind,
                          reason=reason or f"{type(exc).__name__}: {exc}", failures=self._append_failures)
        except Exception:
            pass

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # ------------------------------------------------------------------ spool -> SQLite

    @staticmethod
    def _load_offsets(conn: sqlite3.Connection, present: list[str]) -> dict[str, int]:
        offsets = dict(conn.execute("SELECT name, offset FROM spool").fetchall())
        files = set(present)
        gone = [name for name in offsets if name not in files]
        if gone:  # files removed after their rows were committed (see _finish_spool_files)
            conn.executemany("DELETE FROM spool WHERE name = ?", [(n,) for n in gone])
        return {name: offset for name, offset in offsets.items() if name not in gone}

    def ingest(self) -> int:
        """Owner: move spooled records (every process's) into SQLite; returns rows moved.

        Called by read() and the totals, so they count spooled rows too; a thread that finds
        another one ingesting waits for it (depth() must never miss rows being moved).
        """
        if not self._spool_on or not self.owner or self._closed:
            return 0
        self._ilock.acquire()
        moved = 0
        try:
            while True:
                batch = self._spool_reader.collect(self._spool_offsets, max_rows=_INGEST_ROWS)
                if not batch:
                    return moved
                with self._wlock:
                    conn = self._writer()
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        stored = self._insert_capped(conn, batch.rows)
                        conn.executemany("INSERT OR REPLACE INTO spool(name, offset) VALUES (?, ?)",
                                         list(batch.offsets.items()))
                        if batch.torn:
                            conn.execute(_BUMP, ("loss.unclassified_frames", "", batch.torn))
                        conn.execute("COMMIT")
                    except BaseException:
                        self._rollback(conn)
                        raise
                self._spool_offsets.update(batch.offsets)
                if batch.torn:
                    log.error("buffer.spool_torn", path=str(self._spool.directory), records=batch.torn)
                if batch.finished:
                    self._finish_spool_files(batch.finished)
                moved += stored
                if not batch.rows:
                    return moved
        except Exception as exc:  # the rows stay spooled: the next call retries
            self._ingest_failures += 1
            if self._ingest_failures == 1 or self._ingest_failures % 1000 == 0:  # called ~20 times a second
                log.error("buffer.ingest_failed", path=str(self.path), failures=self._ingest_failures,
                          error=f"{type(exc).__name__}: {exc}", effect="events stay in the spool until it succeeds")
            return moved
        finally:
            self._ilock.release()

    def _finish_spool_files(self, names: list[str]) -> None:
        for name in names:
            self._spool_reader.remove(name)
            self._spool_offsets.pop(name, None)
        # After the unlink: a crash in between leaves a row for a file that no longer exists
        # (harmless, names are never reused), never a file without its offset.
        with self._wlock:
            self._writer().executemany("DELETE FROM spool WHERE name = ?", [(n,) for n in names])

    # ------------------------------------------------------------------ drain side

    def read(self, after_id: int = 0, limit: int = 5000) -> list[BufferRow]:
        self._ensure_process()
        self.ingest()
        with self._rlock:
            rows = self._reader().execute(
                "SELECT id, kind, body, attempts, created_at, engine FROM entries"
                " WHERE id > ? AND kind != '~' ORDER BY id LIMIT ?", (int(after_id), int(limit))).fetchall()
        return [_make_row(r) for r in rows]

    def delete(self, ids: Iterable[int]) -> int:
        runs = _runs(ids)
        if not runs:
            return 0
        self._ensure_process()
        with self._wlock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed, _ = self._delete_runs_locked(conn, runs)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        self._maybe_checkpoint()
        return removed

    def _delete_runs_locked(self, conn: sqlite3.Connection, runs: list[tuple[int, int]]) -> tuple[int, int]:
        top = conn.execute("SELECT id, kind FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        if top is None:
            return 0, 0
        top_id, top_kind = top
        row = conn.execute("SELECT n FROM counters WHERE name='tomb' AND engine=''").fetchone()
        old_tomb = row[0] if row else None
        new_tomb = top_id if top_kind == TOMBSTONE else None
        removed = freed = 0
        for lo, hi in runs:
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
            conn.executemany(_BUMP, [("gone.rows", "", removed), ("gone.bytes", "", freed)])
        return removed, freed

    def mark_attempt(self, ids: Iterable[int]) -> None:
        runs = _runs(ids)
        if not runs:
            return
        self._ensure_process()
        with self._wlock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("UPDATE entries SET attempts = attempts + 1"
                                 " WHERE id BETWEEN ? AND ? AND kind != '~'", runs)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise

    def _totals(self) -> tuple[int, int]:
        self._ensure_process()
        self.ingest()
        with self._rlock:
            rows, nbytes = self._reader().execute(_TOTALS).fetchone()
        return int(rows), int(nbytes)

    def depth(self) -> int:
        """Rows waiting (exact, O(log n))."""
        return self._totals()[0]

    def size_bytes(self) -> int:
        return self._totals()[1]

    def oldest_age(self) -> float | None:
        self._ensure_process()
        self.ingest()
        with self._rlock:
            row = self._reader().execute("SELECT created_at FROM entries WHERE kind != '~'"
                                         " ORDER BY id LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - row[0])

    # ------------------------------------------------------------------ telemetry

    def count_loss(self, category: str, n: int = 1, *, engine: str | None = None) -> None:
        """Add ``n`` to a ``telemetry_loss`` counter (persisted).

        ``engine`` also adds ``n`` to ``adapter_events[engine]``; ``category`` may be
        ``"adapter_events"`` alone (then ``engine`` is required).
        """
        if category not in LOSS_KEYS and category != "adapter_events":
            raise ValueError(f"unknown telemetry_loss category {category!r}; expected one of "
                             f"{', '.join(LOSS_KEYS)} or adapter_events")
        if category == "adapter_events" and not engine:
            raise ValueError("count_loss('adapter_events') needs engine=")
        if n <= 0:
            return
        deltas = {(category, engine if category == "adapter_events" else ""): n}
        if engine and category != "adapter_events":
            deltas[("adapter_events", engine)] = n
        for key, v in deltas.items():
            self._pending_loss[key] = self._pending_loss.get(key, 0) + v
        self._flush_loss()

    def _flush_loss(self) -> None:
        if not self._pending_loss:
            return
        try:
            self._ensure_process()
            with self._wlock:
                pending, self._pending_loss = self._pending_loss, {}
                try:
                    conn = self._writer()
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(_BUMP, [(f"loss.{k}", e, v) for (k, e), v in pending.items()])
                    conn.execute("COMMIT")
                except Exception:
                    if self._wconn is not None:
                        self._rollback(self._wconn)
                    for key, v in pending.items():  # keep them in memory; reported anyway
                        self._pending_loss[key] = self._pending_loss.get(key, 0) + v
        except Exception:
            pass

    def telemetry_loss(self) -> dict[str, Any]:
        """protocol.md 2.3 ``telemetry_loss`` object (exact key set; brain validates strictly)."""
        self._flush_loss()
        out: dict[str, Any] = {"buffer_id": self.buffer_id, "runtime_id": f"{self.buffer_id}:{os.getpid()}"}
        out.update({k: 0 for k in LOSS_KEYS})
        adapters: dict[str, int] = {}
        try:
            self._ensure_process()
            with self._rlock:
                rows = self._reader().execute(
                    "SELECT name, engine, n FROM counters WHERE name LIKE 'loss.%'").fetchall()
        except Exception:
            rows = []
        merged = [(name[5:], engine, n) for name, engine, n in rows]
        merged += [(k, e, v) for (k, e), v in self._pending_loss.items()]
        for key, engine, n in merged:
            if key == "adapter_events":
                adapters[engine] = adapters.get(engine, 0) + int(n)
            elif key in out:
                out[key] += int(n)
        out["adapter_events"] = adapters
        return out

    def stats(self) -> dict[str, Any]:
        """Local diagnostics (not sent on the wire)."""
        rows, nbytes = self._totals()
        with self._rlock:
            got = self._reader().execute(
                "SELECT coalesce(sum(n), 0) FROM counters WHERE name='corrupt_files_set_aside'").fetchone()
        return {"path": str(self.path), "buffer_id": self.buffer_id, "owner": self.owner,
                "rows": rows, "bytes": nbytes, "max_rows": self.max_rows, "max_bytes": self.max_bytes,
                "corrupt_files_set_aside": int(got[0]), "append_failures": self._append_failures,
                "fallback_reason": self.fallback_reason}

    # ------------------------------------------------------------------ command dedupe

    def seen_command(self, key: str) -> bool:
        self._ensure_process()
        with self._rlock:
            row = self._reader().execute("SELECT 1 FROM seen_commands WHERE key=? AND expires_at > ?",
                                         (key, time.time())).fetchone()
        return row is not None

    def remember_command(self, key: str, ttl_seconds: float) -> None:
        now = time.time()
        self._ensure_process()
        with self._wlock:
            conn = self._writer()
            conn.execute("INSERT INTO seen_commands(key, expires_at) VALUES (?, ?) ON CONFLICT(key)"
                         " DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                         (key, now + float(ttl_seconds)))
            self._remember_calls += 1
            if self._remember_calls % 256 == 0:
                conn.execute("DELETE FROM seen_commands WHERE expires_at <= ?", (now,))

    # ------------------------------------------------------------------ recovery

    def adopt_orphans(self) -> int:
        """Owner: fold dead siblings' buffers into this one; returns rows adopted."""
        if not self.owner:
            return 0
        pattern = bf.family_pattern(self._family_first())
        total = 0
        try:
            names = sorted(os.listdir(self.path.parent))
        except OSError:
            return 0
        for name in names:
            if name == self.path.name or not pattern.match(name):
                continue
            total += self._adopt_one(self.path.with_name(name))
        if total:
            self._budget_rows = 0
        return total

    def _family_first(self) -> Path:
        stem = self.path.stem
        head, sep, tail = stem.rpartition("-")
        if sep and tail.isdigit() and head:
            stem = head
        return self.path.with_name(stem + self.path.suffix)

    def _adopt_one(self, orphan: Path) -> int:
        lock_path = orphan.with_name(orphan.name + ".lock")
        try:
            st = os.lstat(orphan)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                return 0
            lock = bf.SidecarLock.acquire(lock_path, bf.ADOPTER)
        except (bf.LockBusy, OSError):
            return 0
        adopted = 0
        try:
            problem = _inspect(orphan)
            if problem is not None:
                _set_aside(orphan, problem)
                with self._wlock:
                    self._writer().execute(_BUMP, ("corrupt_files_set_aside", "", 1))
                self._unlink_lock(lock)
                return 0
            if bf.is_sqlite_header(orphan) is None:
                self._remove_files(orphan, lock)
                return 0
            with self._wlock:
                adopted = self._copy_from(orphan)
            if adopted < 0:  # another deployment's, or a process still writes its spool
                return 0
            self._remove_files(orphan, lock)
            log.info("buffer.adopted", path=str(self.path), orphan=str(orphan), rows=adopted)
        except Exception as exc:
            log.error("buffer.adopt_failed", orphan=str(orphan), error=f"{type(exc).__name__}: {exc}")
            adopted = 0
        finally:
            lock.release()
        return adopted

    def _copy_from(self, orphan: Path) -> int:
        """Caller holds ``_wlock`` and the orphan's adopter lock. -1 = other deployment."""
        conn = self._writer()
        conn.execute("ATTACH DATABASE ? AS orphan", (str(orphan),))
        try:
            meta = dict(conn.execute("SELECT key, value FROM orphan.meta").fetchall())
            if self._deployment and meta.get("deployment", self._deployment) != self._deployment:
                return -1
            conn.execute("BEGIN IMMEDIATE")
            try:
                base = conn.execute("SELECT coalesce((SELECT cum FROM main.entries ORDER BY id DESC"
                                    " LIMIT 1), 0)").fetchone()[0]
                before = conn.total_changes
                conn.execute(
                    "INSERT INTO main.entries(kind, engine, size, cum, created_at, attempts, body)"
                    " SELECT kind, engine, size, ? + sum(size) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING),"
                    " created_at, attempts, body FROM orphan.entries WHERE kind != '~' ORDER BY id", (base,))
                adopted = conn.total_changes - before
                spooled = self._copy_spool(conn, orphan)
                if spooled < 0:
                    self._rollback(conn)
                    return -1
                adopted += spooled
                conn.execute(
                    "INSERT INTO main.seen_commands(key, expires_at) SELECT key, expires_at"
                    " FROM orphan.seen_commands WHERE expires_at > ? ON CONFLICT(key)"
                    " DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)", (time.time(),))
                conn.execute(
                    "INSERT INTO main.counters(name, engine, n) SELECT name, engine, n FROM orphan.counters"
                    " WHERE name LIKE 'loss.%' OR name = 'corrupt_files_set_aside' ON CONFLICT(name, engine)"
                    " DO UPDATE SET n = n + excluded.n")
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            return adopted
        finally:
            conn.execute("DETACH DATABASE orphan")

    def _copy_spool(self, conn: sqlite3.Connection, orphan: Path) -> int:
        """Inside _copy_from's transaction: the orphan's spooled records not yet in its entries.
        -1 when one of its spool files is still being written (adopt later)."""
        reader = SpoolReader(spool_dir_for(orphan))
        names = reader.names()
        if not names:
            return 0
        try:
            offsets = dict(conn.execute("SELECT name, offset FROM orphan.spool").fetchall())
        except sqlite3.OperationalError:
            offsets = {}  # a buffer file from before the spool existed
        finished: set[str] = set()
        stored = torn = 0
        while True:
            batch = reader.collect(offsets, max_rows=_INGEST_ROWS)
            if not batch:
                break
            stored += self._insert_capped(conn, batch.rows)
            offsets.update(batch.offsets)
            finished.update(batch.finished)
            torn += batch.torn
            if not batch.rows:
                break
        if set(names) - finished:
            return -1
        if torn:
            conn.execute(_BUMP, ("loss.unclassified_frames", "", torn))
        return stored

    @staticmethod
    def _unlink_lock(lock: bf.SidecarLock) -> None:
        try:
            os.unlink(lock.path)  # while still holding it: see SidecarLock.acquire's re-check
        except OSError:
            pass

    def _remove_files(self, path: Path, lock: bf.SidecarLock) -> None:
        spool = SpoolReader(spool_dir_for(path))
        for name in spool.names():
            spool.remove(name)
        for p in (path, *bf.side_files(path)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(spool.directory)
        except OSError:
            pass
        self._unlink_lock(lock)

    # ------------------------------------------------------------------ maintenance

    def checkpoint(self) -> None:
        """Owner: PASSIVE checkpoint (never blocks appenders)."""
        self._ensure_process()
        with self._rlock:
            try:
                self._reader().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
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
        remove = False
        self._spool.close()
        if self.owner:
            self.ingest()  # every finished spool file, our own included, into SQLite
            self._flush_loss()
        with self._wlock, self._rlock:
            if self._closed:
                return
            try:
                if self.owner and self._lock is not None and self._wconn is not None:
                    empty = self._wconn.execute(_TOTALS).fetchone()[0] == 0
                    # A file that remembers executed commands or counted losses is kept: the next
                    # agent of this deployment reopens it, so dedupe and loss totals survive restarts.
                    memory = self._wconn.execute(
                        "SELECT EXISTS(SELECT 1 FROM seen_commands WHERE expires_at > ?)"
                        " OR EXISTS(SELECT 1 FROM counters WHERE name LIKE 'loss.%' AND n > 0)",
                        (time.time(),)).fetchone()[0]
                    remove = (empty and not memory and not self._spool_reader.names()
                              and self._lock.upgrade_to_exclusive())
                    if not remove:
                        self._wconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                remove = False
            self._closed = True
            for name in ("_wconn", "_rconn"):
                conn = getattr(self, name)
                setattr(self, name, None)
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
            lock, self._lock = self._lock, None
            if lock is not None:
                if remove:
                    self._remove_files(self.path, lock)
                lock.release()
        _STORES.discard(self)

    def __enter__(self) -> BufferStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BufferStore path={str(self.path)!r} owner={self.owner} closed={self._closed}>"
