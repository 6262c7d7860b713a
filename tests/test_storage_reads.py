"""Reads never write: depth, totals, telemetry and stats report what the owner's I/O thread keeps
current; health() from a probe thread starts no write on the buffer."""

from __future__ import annotations

import sqlite3
import threading
import time

from recording_engine import RecordingEngine

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.buffer import BufferStore
from z4j_bare.config import Config
from z4j_bare.storage.spool import spool_dir_for
from z4j_bare.testing import LocalBrain


def _loss_rows(path) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT name, engine, n FROM counters WHERE name LIKE 'loss.%'").fetchall()


def test_reads_report_committed_state_and_change_nothing(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite", max_bytes=64 * 1024)
    try:
        for i in range(10):
            assert s.append("event", f"e{i}", "rq")
        assert s.append("event", "y" * 70_000, "rq") is False  # can never fit: counted in memory
        spool_before = sorted(p.stat().st_size for p in spool_dir_for(s.path).iterdir())
        changes_before = s._conns.open_writer.total_changes
        s._ingest.lock.acquire()  # an ingest in progress does not hold up a read
        try:
            assert s.depth() == 0 and s.size_bytes() == 0 and s.oldest_age() is None
            loss = s.telemetry_loss()
            stats = s.stats()
        finally:
            s._ingest.lock.release()
        assert loss["event_records"] == 1 and loss["adapter_events"] == {"rq": 1}
        assert stats["rows"] == 0 and stats["append_failures"] == 1
        # Nothing was moved, committed or flushed by those reads.
        assert s._conns.open_writer.total_changes == changes_before
        assert _loss_rows(s.path) == []
        assert sorted(p.stat().st_size for p in spool_dir_for(s.path).iterdir()) == spool_before
        # The owner's duty does both: rows in, loss counts committed; the reads then agree.
        assert s.ingest() == 10
        assert s.depth() == 10 and s.oldest_age() is not None
        assert sorted(_loss_rows(s.path)) == [("loss.adapter_events", "rq", 1), ("loss.event_records", "", 1)]
        assert s.telemetry_loss()["event_records"] == 1  # committed now, not counted twice
    finally:
        s.close()


def test_the_probe_connection_refuses_writes(tmp_path):
    s = BufferStore(tmp_path / "b.sqlite")
    try:
        s.depth()
        with s._conns.probe_lock:
            probe = s._conns.probe()
            assert probe.execute("PRAGMA query_only").fetchone()[0] == 1
            try:
                probe.execute("DELETE FROM entries")
            except sqlite3.OperationalError as exc:
                assert "readonly" in str(exc)
            else:
                raise AssertionError("the probe connection accepted a write")
    finally:
        s.close()


def test_health_from_a_probe_thread_starts_no_write_while_the_io_thread_ingests():
    with LocalBrain(heartbeat_interval=1) as brain:
        engine = RecordingEngine()
        config = Config.resolve(**brain.mint_agent().kwargs(), heartbeat_seconds=1.0, stop_timeout=3.0)
        runtime = build_runtime(config, [engine])
        runtime.start()
        deadline = time.monotonic() + 20
        while runtime.state is not RuntimeState.RUNNING:
            assert time.monotonic() < deadline, "never connected"
            time.sleep(0.02)
        buffer = runtime.buffer
        probe_threads: set[int] = set()
        by_probe: list[str] = []  # statements a probe thread ran on a connection that may write

        def trace(statement: str) -> None:
            if threading.get_ident() in probe_threads:
                by_probe.append(statement)

        with buffer._conns.write_lock:
            buffer._conns.writer().set_trace_callback(trace)
        with buffer._conns.drain_lock:
            buffer._conns.drain().set_trace_callback(trace)
        snapshots: list[dict] = []
        done = threading.Event()

        def probe() -> None:
            probe_threads.add(threading.get_ident())
            while not done.is_set():
                snapshots.append(runtime.health())

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            for i in range(300):
                engine.emit_task(f"p{i}", "task.received", "task.succeeded")
                if i % 50 == 0:
                    time.sleep(0.05)  # let the I/O thread ingest and send while we probe
            assert runtime.flush(20), runtime.health()
        finally:
            done.set()
            prober.join(10)
        runtime.stop()
        assert brain.event_count() == 600
        assert len(snapshots) > 10 and all(isinstance(h["buffer_depth"], int) for h in snapshots)
        assert by_probe == [], f"health() ran {by_probe[:3]} on a connection that can write"
        with buffer._conns.probe_lock:
            assert buffer._conns.probe().total_changes == 0


def test_status_lists_buffer_files_only(tmp_path):
    from z4j_bare.diagnostics import buffer_status

    home = tmp_path / "home"
    s = BufferStore(home / "buffer-0123456789abcdef.sqlite", deployment="0123456789abcdef")
    try:
        assert s.append("event", "{}")
        beside = sqlite3.connect(home / "buffer-0123456789abcdef.schedules.sqlite")  # a neighbour's file
        beside.execute("CREATE TABLE authority(x)")
        beside.close()
        status = buffer_status(home)
        assert [b["path"] for b in status["buffers"] if b["location"] == "home"] == [str(s.path)]
        assert status["problems"] == [] and status["total_depth"] >= 1
    finally:
        s.close()
