"""Durable stream authority, sequences, outbound projection frames and the operation journals.

One small SQLite file next to the agent's buffer (schedules.md 6.2). A sequence is reserved in
the same transaction that writes every frame of its observation, so a crash, a full disk or a
framing error leaves neither a burnt sequence nor half a snapshot. Frames leave only when the
brain acks them (or when a newer epoch makes them meaningless). Only the process that opened
the store uses it; a forked child that touches it gets a clear error instead of a shared handle.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..logs import get_logger

log = get_logger(__name__)

JOURNAL_MAX_ENTRIES = 10_000
JOURNAL_MAX_BYTES = 64 * 2**20
CONTROL_KEEP_SECONDS = 7 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS authority (
    owner TEXT NOT NULL, source_scope TEXT NOT NULL, stream_id TEXT NOT NULL, epoch_uuid TEXT NOT NULL,
    epoch_number INTEGER NOT NULL, adapter_instance_id TEXT NOT NULL, process_generation TEXT NOT NULL,
    last_sequence INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (owner, source_scope), UNIQUE (stream_id, epoch_uuid));
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, epoch_uuid TEXT NOT NULL,
    sequence INTEGER NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS controls (
    operation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, source_scope TEXT NOT NULL, epoch_uuid TEXT NOT NULL,
    identity TEXT NOT NULL, reserved_sequence INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS mutations (
    operation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, request_digest TEXT NOT NULL, status TEXT NOT NULL,
    receipt TEXT, size INTEGER NOT NULL, created_at REAL NOT NULL);
"""


class StoreError(Exception):
    """A durable schedule operation was refused; the message says why."""


class StaleAuthority(StoreError):
    """The stream authority changed under an observation or a control (a newer epoch won)."""


@dataclass(frozen=True, slots=True)
class Authority:
    owner: str
    source_scope: str
    stream_id: str
    epoch_uuid: str
    epoch_number: int
    adapter_instance_id: str
    process_generation: str = ""
    last_sequence: int = 0

    def binding(self) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "epoch_uuid": self.epoch_uuid, "epoch_number": self.epoch_number,
                "owner": self.owner, "source_scope": self.source_scope,
                "adapter_instance_id": self.adapter_instance_id}

    def same_epoch(self, other: Authority) -> bool:
        return (self.owner, self.source_scope, self.stream_id, self.epoch_uuid, self.epoch_number,
                self.adapter_instance_id) == (other.owner, other.source_scope, other.stream_id, other.epoch_uuid,
                                              other.epoch_number, other.adapter_instance_id)


@dataclass(frozen=True, slots=True)
class PendingFrame:
    id: int
    owner: str
    epoch_uuid: str
    sequence: int
    body: str


class ScheduleStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.generation = str(uuid.uuid4())  # this process's claim on the authorities it accepts
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a reservation must survive a power cut too
        self._conn.executescript(_SCHEMA)
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    @classmethod
    def beside(cls, buffer_path: str | os.PathLike[str]) -> ScheduleStore:
        buffer_path = Path(buffer_path)
        return cls(buffer_path.with_name(buffer_path.stem + ".schedules.sqlite"))

    def __repr__(self) -> str:
        return f"ScheduleStore(path={str(self.path)!r})"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if os.getpid() != self._pid:
            raise StoreError("the schedule store belongs to the process that installed the agent, not a fork")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                self._conn.close()

    # -- authority ----------------------------------------------------------------------------

    def authority(self, owner: str, scope: str) -> Authority | None:
        with self._tx() as conn:
            return self._authority(conn, owner, scope)

    @staticmethod
    def _authority(conn: sqlite3.Connection, owner: str, scope: str) -> Authority | None:
        row = conn.execute(
            "SELECT owner, source_scope, stream_id, epoch_uuid, epoch_number, adapter_instance_id, "
            "process_generation, last_sequence FROM authority WHERE owner=? AND source_scope=?", (owner, scope)
        ).fetchone()
        return None if row is None else Authority(*row)

    def activate(self, new: Authority) -> Authority:
        """Record a newer epoch for the scope (last_sequence back to 0); returns what is stored."""
        new = replace(new, process_generation=self.generation, last_sequence=0)
        with self._tx() as conn:
            old = self._authority(conn, new.owner, new.source_scope)
            if old is not None and old.process_generation == self.generation:
                if old.same_epoch(new):
                    return old  # a duplicate delivery: keep counting from where the epoch is
                if old.stream_id != new.stream_id or new.epoch_number <= old.epoch_number:
                    raise StoreError("scheduler adapter activation is not a newer epoch for the same source")
            if conn.execute("SELECT 1 FROM controls WHERE owner=? AND source_scope=? AND epoch_uuid=? "
                            "AND status='reserved'", (new.owner, new.source_scope, new.epoch_uuid)).fetchone():
                raise StoreError("an unresolved external control reservation exists for this scope")
            # Whatever an older epoch left behind can never be accepted by the brain again.
            conn.execute("UPDATE controls SET status='abandoned' WHERE owner=? AND source_scope=? AND "
                         "status='reserved'", (new.owner, new.source_scope))
            conn.execute("DELETE FROM frames WHERE owner=? AND epoch_uuid<>?", (new.owner, new.epoch_uuid))
            conn.execute("DELETE FROM authority WHERE owner=? AND source_scope=?", (new.owner, new.source_scope))
            conn.execute("DELETE FROM authority WHERE stream_id=? AND epoch_uuid=?", (new.stream_id, new.epoch_uuid))
            conn.execute("INSERT INTO authority VALUES (?,?,?,?,?,?,?,?,?)", (
                new.owner, new.source_scope, new.stream_id, new.epoch_uuid, new.epoch_number,
                new.adapter_instance_id, new.process_generation, 0, time.time()))
        return new

    def forget(self, auth: Authority) -> None:
        """Drop an authority whose activation snapshot could not be buffered."""
        with self._tx() as conn:
            conn.execute("DELETE FROM authority WHERE owner=? AND source_scope=? AND epoch_uuid=? AND "
                         "process_generation=?", (auth.owner, auth.source_scope, auth.epoch_uuid, self.generation))
            conn.execute("DELETE FROM frames WHERE owner=? AND epoch_uuid=?", (auth.owner, auth.epoch_uuid))

    def _current(self, conn: sqlite3.Connection, auth: Authority) -> Authority:
        row = self._authority(conn, auth.owner, auth.source_scope)
        if row is None or not row.same_epoch(auth) or row.process_generation != self.generation:
            raise StaleAuthority("the scheduler stream authority changed; this observation belongs to an older epoch")
        return row

    # -- sequenced frames ---------------------------------------------------------------------

    def commit_observation(self, auth: Authority, build: Callable[[int], list[str]],
                           expected_last: int | None = None,
                           control: str | None = None) -> tuple[int, list[PendingFrame]]:
        """Reserve the next sequence and write all its frames in one transaction.

        ``build(sequence)`` returns the event texts; if it raises, nothing is written.
        ``expected_last`` (controls) refuses unless the stream is exactly at that sequence;
        ``control`` names the reservation this publishes (marked in the same transaction).
        """
        with self._tx() as conn:
            row = self._current(conn, auth)
            if expected_last is not None and row.last_sequence != expected_last:
                raise StoreError("external control expected sequence is stale")
            sequence = row.last_sequence + 1
            texts = build(sequence)
            now = time.time()
            frames = []
            for text in texts:
                cur = conn.execute("INSERT INTO frames (owner, epoch_uuid, sequence, body, created_at) "
                                   "VALUES (?,?,?,?,?)", (auth.owner, auth.epoch_uuid, sequence, text, now))
                frames.append(PendingFrame(int(cur.lastrowid), auth.owner, auth.epoch_uuid, sequence, text))
            conn.execute("UPDATE authority SET last_sequence=?, updated_at=? WHERE owner=? AND source_scope=?",
                         (sequence, now, auth.owner, auth.source_scope))
            if control is not None:
                conn.execute("UPDATE controls SET status='published' WHERE operation_id=?", (control,))
        return sequence, frames

    def pending(self, owner: str, epoch_uuid: str) -> list[PendingFrame]:
        with self._tx() as conn:
            rows = conn.execute("SELECT id, owner, epoch_uuid, sequence, body FROM frames WHERE owner=? AND "
                                "epoch_uuid=? ORDER BY id", (owner, epoch_uuid)).fetchall()
        return [PendingFrame(*r) for r in rows]

    def pending_count(self) -> int:
        with self._tx() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0])

    def delete_frames(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._tx() as conn:
            conn.executemany("DELETE FROM frames WHERE id=?", [(i,) for i in ids])

    # -- control reservations -----------------------------------------------------------------

    def reserve_control(self, auth: Authority, operation_id: str, identity: str, expected: int) -> str:
        """'new' (reserved now), 'resume' (same operation, not yet published) or 'published'."""
        with self._tx() as conn:
            row = self._current(conn, auth)
            hit = conn.execute("SELECT identity, status FROM controls WHERE operation_id=?", (operation_id,)).fetchone()
            if hit is not None:
                if hit[0] != identity:
                    raise StoreError("external control operation id was reused with a different identity")
                if hit[1] == "published":
                    return "published"
                if hit[1] == "reserved":
                    return "resume"
                raise StoreError("external control operation belongs to an abandoned epoch")
            other = conn.execute("SELECT operation_id FROM controls WHERE owner=? AND source_scope=? AND "
                                 "status='reserved'", (auth.owner, auth.source_scope)).fetchone()
            if other is not None:
                raise StoreError("another external control is reserved and unresolved for this scheduler")
            if row.last_sequence != expected:
                raise StoreError("external control expected sequence is stale")
            conn.execute("DELETE FROM controls WHERE status<>'reserved' AND created_at<?",
                         (time.time() - CONTROL_KEEP_SECONDS,))
            conn.execute("INSERT INTO controls VALUES (?,?,?,?,?,?,?,?)", (
                operation_id, auth.owner, auth.source_scope, auth.epoch_uuid, identity, expected + 1, "reserved",
                time.time()))
        return "new"

    def publish_control(self, auth: Authority, operation_id: str, expected: int, text: str) -> list[PendingFrame]:
        """Write the control projection and advance the sequence; marks the reservation published."""
        _, frames = self.commit_observation(auth, lambda _seq: [text], expected_last=expected, control=operation_id)
        return frames

    def release_control(self, operation_id: str) -> None:
        """A control that failed before any effect: the scope may take another one."""
        with self._tx() as conn:
            conn.execute("UPDATE controls SET status='failed' WHERE operation_id=? AND status='reserved'",
                         (operation_id,))

    # -- native mutation journal --------------------------------------------------------------

    def claim_mutation(self, owner: str, operation_id: str, request_digest: str) -> dict[str, Any] | None:
        """The stored receipt of an identical earlier request, or None after claiming it now."""
        with self._tx() as conn:
            hit = conn.execute("SELECT request_digest, status, receipt FROM mutations WHERE operation_id=?",
                               (operation_id,)).fetchone()
            if hit is not None:
                if hit[0] == request_digest and hit[1] == "done" and hit[2]:
                    return json.loads(hit[2])
                raise StoreError("native mutation has an uncertain prior attempt; inspect source state")
            conn.execute("INSERT INTO mutations VALUES (?,?,?,?,?,?,?)",
                         (operation_id, owner, request_digest, "claimed", None, 256, time.time()))
            self._trim_journal(conn)
        return None

    def drop_claim(self, operation_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM mutations WHERE operation_id=? AND status='claimed'", (operation_id,))

    def finish_mutation(self, operation_id: str, receipt: dict[str, Any]) -> None:
        text = json.dumps(receipt, separators=(",", ":"), ensure_ascii=False)
        with self._tx() as conn:
            conn.execute("UPDATE mutations SET status='done', receipt=?, size=? WHERE operation_id=?",
                         (text, len(text.encode("utf-8")) + 256, operation_id))

    @staticmethod
    def _trim_journal(conn: sqlite3.Connection) -> None:
        count, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM mutations").fetchone()
        while count > JOURNAL_MAX_ENTRIES or size > JOURNAL_MAX_BYTES:
            oldest = conn.execute("SELECT operation_id, size FROM mutations WHERE status='done' "
                                  "ORDER BY created_at LIMIT 1").fetchone()
            if oldest is None:
                break
            conn.execute("DELETE FROM mutations WHERE operation_id=?", (oldest[0],))
            count, size = count - 1, size - oldest[1]
