"""Per-process append-only spool files: the hot path under ``BufferStore.append``.

A SQLite commit rewrites a whole 4 KiB page into the WAL and takes several file locks: in a
busy Celery main process that cost 50-100 us per event (docs/performance.md, "Buffer"). One
``write()`` of the record to a file opened with ``O_APPEND`` costs about 2 us and is exactly as
durable against a crash of the process: the kernel holds the bytes. Neither survives a power
cut without fsync, like SQLite's WAL with ``synchronous=NORMAL`` that the buffer uses.

The buffer's owner moves spooled records into SQLite in batches (``SpoolReader.collect`` here, the
insert in ``ingest.py``); the offset it has consumed in each file is committed in the same
transaction as the rows, so a crash at any point delivers every record at least once and
never skips one.

Files: ``<buffer>.spool/<pid>-<random>.log``, one per writing process (a forked child opens
its own), each held with an exclusive ``flock`` by its writer for as long as it is open (it is
created as ``.new`` and renamed once locked, so no reader ever sees it unlocked). A file the
owner can lock is finished (its writer rotated or died) and is removed once consumed.

Record: ``<u32 payload length><u32 crc32(payload)>`` then the payload
``<f64 created_at><u8 len(kind)><u8 len(engine)>kind engine body`` (UTF-8). A record cut short
by a dying writer (or a full disk) fails its length or CRC and is counted as lost.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..logs import get_logger

__all__ = ["SpoolAppender", "SpoolBatch", "SpoolReader", "SpoolWriter", "encode_records", "spool_dir_for"]

log = get_logger(__name__)

_HEAD = struct.Struct("<II")
_META = struct.Struct("<dBB")
#: A file is closed and a new one started past this size (finished files are removed once read).
ROTATE_BYTES = 8 << 20
#: At most this much is read from one file per collect pass (bounds the owner's memory).
READ_CHUNK = 256 << 10
#: A length field above this is corruption, not a record still being written.
MAX_RECORD = 64 << 20
SUFFIX = ".log"
STAGING_SUFFIX = ".new"  # a file being created (not yet locked by its writer): readers skip it
#: Spool writes between two checks of the spool's size against the buffer's max_bytes.
CHECK_EVERY = 1024


def spool_dir_for(buffer_path: Path) -> Path:
    return buffer_path.with_name(buffer_path.name + ".spool")


def encode_records(rows: Sequence[tuple[str, str, str, float]]) -> bytes:
    """(kind, engine, body, created_at) rows -> bytes for one write().

    ValueError (UnicodeEncodeError included) for a row SQLite could not store either.
    """
    parts = []
    for kind, engine, body, created_at in rows:
        k = kind.encode()
        e = engine.encode()
        payload = _META.pack(created_at, len(k), len(e)) + k + e + body.encode("utf-8")
        parts.append(_HEAD.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


class SpoolWriter:
    """This process's spool file. Thread-safe; a forked child lazily opens its own file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._pid = 0
        self._size = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Append ``data`` whole, or raise OSError with the file left as it was."""
        if self._pid != os.getpid():
            self._reset(close=False)  # a fork the at-fork hook did not see: see after_fork_in_child
        with self._lock:
            if self._fd < 0:
                self._open()
            fd = self._fd
            start = self._size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                # Only this thread of this process writes this file: cut the partial record off
                # so the records appended after it stay readable.
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    self._close_locked()  # leave the torn tail to the reader's CRC check
                raise
            self._size = start + len(data)
            if self._size >= ROTATE_BYTES:
                self._close_locked()

    def close(self) -> None:
        if self._pid != os.getpid():
            self._reset(close=False)
            return
        with self._lock:
            self._close_locked()

    def after_fork_in_child(self) -> None:
        """Run by the buffer's at-fork hook: drop the parent's file while its descriptor number
        is surely still that file (later, the host may have closed and reused the number)."""
        self._reset(close=True)

    def _reset(self, *, close: bool) -> None:
        # Closing the child's copy leaves the parent's file and flock alone (the lock belongs to
        # the open file, which the parent still holds). Without ``close`` the copy leaks: the
        # file then counts as written until this process exits, which only delays its removal.
        if close and self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._size = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _open(self) -> None:
        # Created under a name the owner ignores, locked, then renamed into place: an owner that
        # saw the file between its creation and our flock would take it for a dead writer's
        # empty file, finish it and remove it, and every record we then wrote would be lost.
        self.directory.mkdir(mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        staging = self.directory / (name + STAGING_SUFFIX)
        fd = os.open(staging, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(staging, self.directory / (name + SUFFIX))
        except OSError:
            os.close(fd)
            try:
                os.unlink(staging)
            except OSError:
                pass
            raise
        self._fd = fd
        self._size = 0

    def _close_locked(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)  # releases the flock: the owner may now finish the file
            except OSError:
                pass
        self._fd = -1
        self._size = 0


class SpoolAppender:
    """The hot path's use of this process's spool file: whether to use it, and its failures.

    ``append`` answers False (the caller then commits to SQLite, whose caps apply) when the row
    cannot be encoded, the file cannot be written, or the spool, which only a live owner empties,
    has grown past ``max_bytes``: without that check a dead owner's spool would fill the disk.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.writer = SpoolWriter(directory)
        self.max_bytes = max_bytes
        self._budget = CHECK_EVERY
        self.errors = 0

    @property
    def directory(self) -> Path:
        return self.writer.directory

    def append(self, rows: Sequence[tuple[str, str, str, float]]) -> bool:
        self._budget -= 1
        if self._budget < 0 and not self._has_room():
            return False
        try:
            data = encode_records(rows)
        except (ValueError, struct.error):
            return False  # the SQLite path refuses and counts the same row
        try:
            self.writer.write(data)
            return True
        except OSError as exc:
            self.errors += 1
            self._budget = CHECK_EVERY
            if self.errors == 1 or self.errors % 1000 == 0:
                log.warning("buffer.spool_failed", path=str(self.writer.directory), errors=self.errors,
                            error=f"{type(exc).__name__}: {exc}", fallback="SQLite commits (slower, same durability)")
            return False

    def _has_room(self) -> bool:
        """Is the spool (what no owner has moved into SQLite yet) under max_bytes?"""
        self._budget = CHECK_EVERY
        total = 0
        try:
            with os.scandir(self.writer.directory) as it:
                for entry in it:
                    total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return True
        return total < self.max_bytes


@dataclass(slots=True)
class SpoolBatch:
    """What one collect pass found: rows to insert and the new offset of each file."""

    rows: list[tuple[str, str, str, int, float]]  # kind, body, engine, UTF-8 size, created_at (by time)
    offsets: dict[str, int]  # file name -> offset consumed after these rows
    finished: list[str]  # files whose writer is gone and which these rows consume entirely
    torn: int  # records lost to a cut or corrupt tail

    def __bool__(self) -> bool:
        return bool(self.rows or self.finished or self.torn)


class SpoolReader:
    """Reads spool files from given offsets (the owner's side)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX))
        except OSError:  # none yet, or not usable (the writers then fall back to SQLite)
            return []

    def collect(self, offsets: dict[str, int], *, max_rows: int = 50_000, lock: bool = True) -> SpoolBatch:
        """Records after ``offsets``; ``lock=False`` for a read-only look (``finished`` stays empty)."""
        batch = SpoolBatch([], {}, [], 0)
        for name in self.names():
            if len(batch.rows) >= max_rows:
                break
            self._collect_file(name, offsets.get(name, 0), batch, lock)
        batch.rows.sort(key=lambda r: r[4])  # one timeline across processes, as commits gave
        return batch

    def _collect_file(self, name: str, offset: int, batch: SpoolBatch, lock: bool = True) -> None:
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            finished = False
            if lock:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    finished = True  # nobody writes it any more: what is there is all there will be
                except OSError:
                    pass
            size = os.fstat(fd).st_size
            data = os.pread(fd, min(size - offset, READ_CHUNK), offset) if size > offset else b""
            if len(data) >= _HEAD.size:
                need = _HEAD.size + _HEAD.unpack_from(data)[0]
                if len(data) < need <= min(size - offset, _HEAD.size + MAX_RECORD):  # one big record
                    data = os.pread(fd, need, offset)
        finally:
            os.close(fd)
        used, corrupt = _parse(data, batch.rows)
        read_to = offset + len(data)
        end = offset + used
        if corrupt:
            # Nothing after a corrupt record can be trusted to be aligned: count it, skip what
            # was read (a live writer's next records start at the current end).
            batch.torn += 1
            end = read_to
        if finished and read_to >= size:
            if used < len(data) and not corrupt:
                batch.torn += 1  # a record its writer never finished
            batch.finished.append(name)
        if end != offset:
            batch.offsets[name] = end

    def remove_staging(self) -> None:
        """Remove files a writer died creating (empty: nothing was written to them)."""
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(STAGING_SUFFIX)]
        except OSError:
            return
        for name in names:
            self.remove(name)

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass


def _parse(data: bytes, out: list[tuple[str, str, str, int, float]]) -> tuple[int, bool]:
    """Append the whole records of ``data`` to ``out``: (bytes used, stopped at a corrupt one).

    An incomplete last record (still being written, or cut by its writer's death) is not
    corrupt: the caller knows whether more can come.
    """
    view = memoryview(data)
    names: dict[bytes, tuple[str, str]] = {}  # kind+engine repeat: decode each pair once
    head = _HEAD.size
    meta = _META.size
    unpack_head = _HEAD.unpack_from
    unpack_meta = _META.unpack_from
    crc32 = zlib.crc32
    append = out.append
    pos = 0
    end = len(data)
    while end - pos >= head:
        length, crc = unpack_head(data, pos)
        start = pos + head
        if length < meta or length > MAX_RECORD:
            return pos, True
        stop = start + length
        if stop > end:
            return pos, False
        if crc32(view[start:stop]) != crc:
            return pos, True
        created_at, nk, ne = unpack_meta(data, start)
        text_at = start + meta + nk + ne
        key = data[start + meta:text_at]
        pair = names.get(key)
        if pair is None:
            pair = names[key] = (key[:nk].decode(), key[nk:].decode())
        append((pair[0], str(view[text_at:stop], "utf-8"), pair[1], stop - text_at, created_at))
        pos = stop
    return pos, False
