"""BufferStore in one process: ordering, acks, caps, telemetry, locks, corrupt files, fallback."""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import threading
import time

import pytest
from structlog.testing import capture_logs

from z4j_bare.buffer import LOSS_KEYS, BufferStorageError, BufferStore

EVENT = '{"id":"207bec54-268a-47d8-8262-ad5a22fb1843","occurred_at":"2026-11-28T21:04:50.643607+00:00","n":%d}'


@pytest.fixture
def store(tmp_path):
    s = BufferStore(tmp_path / "home" / "buffer-dep.sqlite", deployment="dep")
    yield s
    s.close()


def test_file_and_dir_are_private_and_wal(tmp_path, store):
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    assert store.append("event", "{}")
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_rows_come_back_in_order_with_body_text_unchanged(store):
    bodies = [EVENT % i for i in range(50)] + ['{"name":"caf\u00e9 \u2603","z":1.0}']
    for b in bodies:
        assert store.append("event", b, "celery") is True
    rows = store.read()
    assert [r.body for r in rows] == bodies
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    assert rows[0].engine == "celery" and rows[0].attempts == 0
    assert [r.body for r in store.read(after_id=rows[9].id, limit=3)] == bodies[10:13]
    assert store.depth() == 51
    assert store.size_bytes() == sum(len(b.encode()) for b in bodies)


def test_delete_only_what_is_acked_and_ids_are_never_reused(store):
    for i in range(10):
        store.append("event", EVENT % i)
    ids = [r.id for r in store.read()]
    assert store.delete(ids[2:5]) == 3
    assert store.delete([ids[-1]]) == 1  # the highest row: becomes a tombstone
    assert [r.id for r in store.read()] == ids[:2] + ids[5:9]
    store.append("event", "new")
    new = store.read(after_id=ids[-1])
    assert [r.body for r in new] == ["new"] and new[0].id > ids[-1]
    assert store.delete(r.id for r in store.read()) == 7
    assert store.depth() == 0 and store.read() == [] and store.oldest_age() is None
    store.append("event", "after-empty")
    (row,) = store.read()
    assert row.id > new[0].id, "an id must never be handed out twice"
    assert store.delete([12345678]) == 0


def test_attempts_counter_and_oldest_age(store):
    store.append("event", "a")
    store.append("event", "b")
    ids = [r.id for r in store.read()]
    store.mark_attempt(ids)
    store.mark_attempt(ids[:1])
    assert [r.attempts for r in store.read()] == [2, 1]
    assert [r.body for r in store.read()] == ["a", "b"]
    age = store.oldest_age()
    assert age is not None and 0 <= age < 5


def test_append_many_is_one_transaction(store):
    assert store.append_many([("event", "x", "rq"), ("command_ack", "{}"), ("heartbeat", "{}")]) == 3
    assert [(r.kind, r.engine) for r in store.read()] == [("event", "rq"), ("command_ack", ""), ("heartbeat", "")]


def test_row_cap_evicts_oldest_first_and_counts_by_kind(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", max_rows=1000)
    try:
        for i in range(300):
            s.append("command_result", f"r{i}")
        for i in range(700):
            s.append("event", f"e{i}", "celery" if i % 2 else "rq")
        s.ingest()  # the owner's I/O thread moves spooled rows in; depth() only reads
        assert s.depth() == 1000
        for i in range(500):
            assert s.append("heartbeat", f"h{i}")
        s.ingest()
        depth = s.depth()
        assert 1000 - 5 <= depth <= 1000  # slack: 0.5% of the cap
        rows = s.read(limit=10_000)
        assert rows[-1].body == "h499", "the newest row always survives"
        loss = s.telemetry_loss()
        evicted = 1500 - depth
        assert loss["capacity_evicted_frames"] == evicted
        assert loss["command_results"] == 300
        assert loss["event_records"] == evicted - 300 - loss["other_frames"]
        assert sum(loss["adapter_events"].values()) == loss["event_records"]
        # exactly the oldest ones went
        assert [r.body for r in rows] == ([f"e{i}" for i in range(700)] + [f"h{i}" for i in range(500)])[-depth:]
    finally:
        s.close()


def test_byte_cap(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", max_bytes=64 * 1024)
    try:
        body = "x" * 1000
        for _ in range(200):
            assert s.append("event", body, "celery")
        s.ingest()
        assert s.size_bytes() <= 64 * 1024
        assert s.depth() >= 60
        assert s.telemetry_loss()["event_records"] == 200 - s.depth()
        assert s.append("event", "y" * 70_000, "celery") is False  # can never fit
        assert s.telemetry_loss()["adapter_events"]["celery"] == 200 - s.depth() + 1
        assert s.stats()["append_failures"] == 1
    finally:
        s.close()


def test_telemetry_loss_shape_and_persistence(tmp_path):
    path = tmp_path / "b.sqlite"
    s = BufferStore(path)
    s.count_loss("content_rejected_frames", 2)
    s.count_loss("event_records", 3, engine="rq")
    s.append("event", "keep")  # non-empty: file kept on close
    loss = s.telemetry_loss()
    assert set(loss) == {"buffer_id", "runtime_id", *LOSS_KEYS, "adapter_events"}
    assert loss["runtime_id"] == f"{loss['buffer_id']}:{os.getpid()}"
    assert len(loss["buffer_id"]) == 32
    s.close()
    s2 = BufferStore(path)
    try:
        loss2 = s2.telemetry_loss()
        assert loss2["buffer_id"] == loss["buffer_id"]
        assert (loss2["content_rejected_frames"], loss2["event_records"], loss2["adapter_events"]) == (2, 3, {"rq": 3})
        with pytest.raises(ValueError, match="unknown telemetry_loss category"):
            s2.count_loss("bogus")
    finally:
        s2.close()


def test_seen_commands_ttl_and_durability(tmp_path):
    path = tmp_path / "b.sqlite"
    s = BufferStore(path)
    s.remember_command("cmd-1", 60)
    s.remember_command("cmd-2", 0.05)
    s.append("event", "keep")
    assert s.seen_command("cmd-1") and s.seen_command("cmd-2") and not s.seen_command("cmd-3")
    time.sleep(0.1)
    assert not s.seen_command("cmd-2")
    s.close()
    s2 = BufferStore(path)
    assert s2.seen_command("cmd-1")
    s2.close()


def test_close_removes_empty_file_keeps_non_empty(tmp_path):
    s = BufferStore(tmp_path / "a.sqlite")
    s.append("event", "x")
    s.delete(r.id for r in s.read())
    s.close()
    s.close()  # idempotent
    assert os.listdir(tmp_path) == []
    s = BufferStore(tmp_path / "b.sqlite")
    s.append("event", "x")
    s.close()
    assert (tmp_path / "b.sqlite").exists()
    assert s.append("event", "late") is False


def test_second_owner_is_refused_and_deployment_picks_a_sibling(tmp_path):
    a = BufferStore.open_for_deployment(tmp_path, "dep")
    try:
        assert a.path == tmp_path / "buffer-dep.sqlite"
        with pytest.raises(BufferStorageError, match=f"locked by pid {os.getpid()}"):
            BufferStore(a.path)
        b = BufferStore.open_for_deployment(tmp_path, "dep")
        assert b.path == tmp_path / "buffer-dep-1.sqlite"
        b.close()
        c = BufferStore.open_for_deployment(None, "dep", buffer_path=tmp_path / "custom.db")
        assert c.path == tmp_path / "custom.db"
        c.close()
    finally:
        a.close()
    with pytest.raises(ValueError, match="deployment"):
        BufferStore.open_for_deployment(tmp_path, "../evil")


def test_home_defaults_to_z4j_home(tmp_path, monkeypatch):
    monkeypatch.setenv("Z4J_HOME", str(tmp_path / "zh"))
    s = BufferStore.open_for_deployment(None, "dep")
    try:
        assert s.path == (tmp_path / "zh" / "buffer-dep.sqlite").resolve()
    finally:
        s.close()


def test_other_deployment_file_is_left_alone(tmp_path):
    a = BufferStore(tmp_path / "buffer-x.sqlite", deployment="other")
    a.append("event", "theirs")
    a.close()
    b = BufferStore.open_for_deployment(None, "mine", buffer_path=tmp_path / "buffer-x.sqlite")
    try:
        assert b.path.name == "buffer-x-1.sqlite"
        assert b.adopt_orphans() == 0
        assert (tmp_path / "buffer-x.sqlite").exists()
    finally:
        b.close()


@pytest.mark.parametrize("content", [b"this is not a database at all" * 10, "sqlite-foreign"])
def test_corrupt_or_foreign_file_is_set_aside(tmp_path, content):
    path = tmp_path / "buffer-dep.sqlite"
    if content == "sqlite-foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users(name TEXT)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(content)
    with capture_logs() as logs:
        s = BufferStore.open_for_deployment(tmp_path, "dep")
    try:
        assert s.path == path
        assert s.append("event", "fresh")
        s.ingest()
        assert s.depth() == 1
        aside = [p for p in os.listdir(tmp_path) if ".corrupt-" in p]
        assert len(aside) == 1 and aside[0].startswith("buffer-dep.sqlite.corrupt-")
        assert s.stats()["corrupt_files_set_aside"] == 1
        assert any(e["event"] == "buffer.corrupt_set_aside" for e in logs)
        assert set(s.telemetry_loss()) == {"buffer_id", "runtime_id", *LOSS_KEYS, "adapter_events"}
    finally:
        s.close()


def test_unwritable_home_relocates_once_with_a_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    with capture_logs() as logs:
        s = BufferStore.open_for_deployment(blocker / "home", "dep")
    try:
        assert s.path == fallback / f"z4j-{os.geteuid()}" / "buffer-dep.sqlite"
        assert s.fallback_reason and "regular-file" in s.fallback_reason
        assert stat.S_IMODE(os.stat(s.path.parent).st_mode) == 0o700
        warnings = [e for e in logs if e["event"] == "buffer.relocated"]
        assert len(warnings) == 1 and "Z4J_HOME" in warnings[0]["fix"]
        assert s.append("event", "x")
    finally:
        s.close()


def test_nothing_writable_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))
    with pytest.raises(BufferStorageError, match="Z4J_HOME"):
        BufferStore.open_for_deployment(blocker / "home", "dep")


def test_group_writable_home_is_not_trusted(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    s = BufferStore.open_for_deployment(shared, "dep")
    try:
        assert s.path.parent != shared and "writable by group or others" in s.fallback_reason
    finally:
        s.close()


def test_threads_append_concurrently_without_loss(store):
    def worker(t):
        for i in range(300):
            assert store.append("event", f"{t}:{i}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows = store.read(limit=10_000)
    assert len(rows) == 1200 == store.depth()
    for t in range(4):
        mine = [int(r.body.split(":")[1]) for r in rows if r.body.startswith(f"{t}:")]
        assert mine == list(range(300))


def test_append_never_raises_on_sqlite_failure(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", spool=False)  # the SQLite path (spool: see test_spool.py)
    try:
        s.append("event", "ok")
        s._conns.writer().execute("DROP TABLE entries")  # a real SQLite error on the hot path
        assert s.append("event", "lost", "celery") is False
        assert s.append_many([("command_result", "x")]) == 0
        loss = s.telemetry_loss()
        assert loss["event_records"] == 1 and loss["adapter_events"] == {"celery": 1}
        assert loss["command_results"] == 1
    finally:
        s.close()


def test_rejects_bad_caps(tmp_path):
    with pytest.raises(ValueError, match="max_rows"):
        BufferStore(tmp_path / "b.sqlite", max_rows=0)
    with pytest.raises(ValueError, match="max_bytes"):
        BufferStore(tmp_path / "b.sqlite", max_bytes=10)


def test_close_keeps_file_with_command_memory_or_losses(tmp_path):
    from z4j_bare.buffer import BufferStore

    path = tmp_path / "keep.sqlite"
    store = BufferStore(path)
    store.count_loss("content_rejected_frames", 2)
    store.close()
    assert path.exists()
    reopened = BufferStore(path)
    assert reopened.telemetry_loss()["content_rejected_frames"] == 2
    reopened.close()
