"""The spool under BufferStore.append: per-process files the owner moves into SQLite."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from z4j_bare.buffer import BufferStore
from z4j_bare.storage.spool import SpoolWriter, encode_records, spool_dir_for


def bodies(store: BufferStore) -> list[str]:
    return [row.body for row in store.read(limit=100_000)]


def spool_files(store: BufferStore) -> list[str]:
    directory = spool_dir_for(store.path)
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_appends_are_spooled_then_read_in_order_and_files_cleaned(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        for i in range(50):
            assert s.append("event", f"e{i}", "celery")
        assert s.append_many([("event", "m1", "rq"), ("command_result", "m2")]) == 2
        assert len(spool_files(s)) == 1  # this process's file
        assert bodies(s) == [f"e{i}" for i in range(50)] + ["m1", "m2"]
        assert s.depth() == 52
    finally:
        s.close()
    reopened = BufferStore(tmp_path / "b.sqlite")
    try:
        assert bodies(reopened) == [f"e{i}" for i in range(50)] + ["m1", "m2"]  # exactly once
        assert spool_files(reopened) == []  # the closed writer's file was finished and removed
    finally:
        reopened.close()


def run_in_child(fn) -> bytes:
    """``fn()`` in a forked child; what it returns (b"!" if it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        out = b"!"
        try:
            out = fn()
        finally:
            os.write(w, out)
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return data


def test_forked_child_records_join_the_parent_timeline(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        s.append("event", "parent-before")
        assert run_in_child(lambda: b"ok" if s.append("event", "child") and not s.owner else b"no") == b"ok"
        s.append("event", "parent-after")
        assert bodies(s) == ["parent-before", "child", "parent-after"]
        assert len(spool_files(s)) == 1  # the dead child's file is gone, ours stays open
    finally:
        s.close()


def test_a_live_writers_file_is_read_incrementally_without_duplicates(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    writer = SpoolWriter(spool_dir_for(s.path))  # another open file: to the owner, a live writer
    writer.write(encode_records([("event", "rq", f"w{i}", 1.0 + i) for i in range(10)]))
    assert bodies(s) == [f"w{i}" for i in range(10)]
    s.close()  # keeps the buffer: a spool file is still being written
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        writer.write(encode_records([("event", "rq", f"w{i}", 1.0 + i) for i in range(10, 15)]))
        assert bodies(s) == [f"w{i}" for i in range(15)]  # the offset survived the reopen
        writer.close()
        assert s.depth() == 15 and spool_files(s) == [name for name in spool_files(s) if name.startswith(f"{os.getpid()}-")]
    finally:
        s.close()


@pytest.mark.parametrize("tail", [b"\x05\x00", struct.pack("<II", 40, 0) + b"partial", struct.pack("<II", 3, 0) + b"bad"])
def test_a_dead_writers_torn_tail_is_counted_and_its_file_removed(tmp_path, tail):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        directory = spool_dir_for(s.path)
        directory.mkdir(mode=0o700, exist_ok=True)
        (directory / "999999-dead.log").write_bytes(encode_records([("event", "celery", "whole", 1.0)]) + tail)
        assert bodies(s) == ["whole"]
        assert s.telemetry_loss()["unclassified_frames"] == 1
        assert "999999-dead.log" not in spool_files(s)
    finally:
        s.close()


def test_a_corrupt_record_in_a_live_file_is_skipped_and_later_records_still_arrive(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    writer = SpoolWriter(spool_dir_for(s.path))
    try:
        good = encode_records([("event", "rq", "before", 1.0)])
        payload = b"\x00" * 12
        writer.write(good + struct.pack("<II", len(payload), zlib.crc32(payload) ^ 1) + payload)
        assert bodies(s) == ["before"]
        assert s.telemetry_loss()["unclassified_frames"] == 1
        writer.write(encode_records([("event", "rq", "after", 2.0)]))
        assert bodies(s) == ["before", "after"]
    finally:
        writer.close()
        s.close()


def test_spool_that_cannot_be_created_falls_back_to_sqlite(tmp_path):
    spool_dir_for(tmp_path / "b.sqlite").write_text("not a directory")
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        assert s.append("event", "still durable")
        assert s.append_many([("event", "also")]) == 1
        assert bodies(s) == ["still durable", "also"]
        assert s.stats()["append_failures"] == 0
    finally:
        s.close()


def test_unicode_and_big_bodies_round_trip(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", max_bytes=64 * 1024)
    try:
        texts = ["caf\u00e9 \u2603 \U0001f600", "x" * 16_000]
        for text in texts:
            assert s.append("event", text)
        assert s.append("event", "lone \udc80 surrogate") is False  # SQLite could not store it either
        assert bodies(s) == texts
        assert s.append("event", "y" * 70_000) is False  # can never fit: refused at once
    finally:
        s.close()


def test_depth_after_ingest_waits_for_an_ingest_in_progress_instead_of_missing_its_rows(tmp_path):
    import threading

    s = BufferStore(tmp_path / "b.sqlite")
    try:
        for i in range(10):
            s.append("event", f"e{i}")
        s._ingest.lock.acquire()  # as if the I/O thread were moving rows right now
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(s.depth_after_ingest()))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive(), "depth_after_ingest() answered while rows were being moved"
        s._ingest.lock.release()
        reader.join(5)
        assert got == [10]
    finally:
        s.close()


def test_a_forked_child_drops_the_parents_spool_file_at_fork(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        s.append("event", "parent")
        (parent_file,) = spool_files(s)

        def holds_parent_file() -> bytes:
            targets = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    targets.append(os.readlink(f"/proc/self/fd/{fd}"))
                except OSError:
                    pass
            return b"1" if any(t.endswith(parent_file) for t in targets) else b"0"

        assert run_in_child(holds_parent_file) == b"0", "the child kept the parent's spool file open"
    finally:
        s.close()


def test_an_ingest_that_fails_keeps_the_records_spooled_until_it_succeeds(tmp_path):
    import sqlite3

    s = BufferStore(tmp_path / "b.sqlite")
    try:
        s.append("event", "kept")
        blocker = sqlite3.connect(s.path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past busy_timeout
        try:
            assert s.ingest() == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert bodies(s) == ["kept"]
        assert s.telemetry_loss()["unclassified_frames"] == 0
    finally:
        s.close()


def test_a_new_spool_file_is_never_visible_before_its_writer_locks_it(tmp_path, monkeypatch):
    """An owner that found a new file unlocked would finish and remove it under its writer."""
    import fcntl

    s = BufferStore(tmp_path / "b.sqlite")
    seen_unlocked: list[str] = []
    real_flock = fcntl.flock

    def flock_then_look(fd, op):  # the instant between the writer's create and its lock
        if op == fcntl.LOCK_EX | fcntl.LOCK_NB and not seen_unlocked:
            seen_unlocked.extend(s._ingest.reader.names())
        return real_flock(fd, op)

    try:
        monkeypatch.setattr(fcntl, "flock", flock_then_look)
        assert s.append("event", "first")
        monkeypatch.undo()
        assert seen_unlocked == [], "the spool file was listed before its writer held its lock"
        assert bodies(s) == ["first"] and len(spool_files(s)) == 1
    finally:
        s.close()
