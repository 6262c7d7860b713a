"""The local brain's fast ingest path keeps the documented semantics (no timing assertions).

Covers what the throughput work changed underneath: the occurred_at fast path, the in-memory
dedupe map (within a batch, across batches, across a reopen, after a failed batch), the counts
cache, the projection kept as untracked bytes, the migration of the first file layout, and the
per-session ingest backlog bound.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from z4j_bare.testing import LocalBrain, brain_event_id
from z4j_bare.testing.ingest import event_id_bytes, occurred_at_seconds, prepare_batch, task_key
from z4j_bare.testing.lanes import INGEST_QUEUE_EVENTS
from z4j_bare.testing.peer import RawPeer, make_event
from z4j_bare.testing.store import BrainStore

PROJECT = "11111111-2222-4333-8444-555555555555"


def _ingest(store: BrainStore, events: list, project: str = PROJECT, frame_id: str | None = None) -> int:
    text = json.dumps(events).encode()
    accepted, _ = store.ingest(json.loads(text), text, frame_id=frame_id or f"ev_{uuid.uuid4().hex}",
                               project_id=project, agent_id="agent")
    return accepted


def _iso(ts: float, **kw) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(**kw)


def test_fast_occurred_at_path_matches_the_reference_parser():
    now = time.time()
    values = []
    for offset in (0.0, 0.000001, 0.5, 1.999999, 59.0, 3600.25, 86400 * 3 + 0.123456, 86400 * 399):
        ts = now - offset
        values += [_iso(ts, timespec="microseconds"), _iso(ts, timespec="microseconds").replace("+00:00", "Z"),
                   _iso(ts, timespec="seconds"), _iso(ts, timespec="milliseconds"),
                   datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(timespec="microseconds"),
                   datetime.fromtimestamp(ts, timezone(timedelta(hours=-3))).isoformat(timespec="microseconds")]
    values += [_iso(now + 120, timespec="microseconds"), _iso(now - 401 * 86400, timespec="microseconds"),
               "2026-13-01T00:00:00.000000+00:00", "2026-01-01T24:00:00.000000+00:00",
               "2026-01-01T00:00:00.00000\u0661+00:00", "2026-01-01T00:00:00.+12345+00:00",
               "2026-01-01 00:00:00.000000+00:00", "garbage", "", None, 17]
    events = [{"engine": "celery", "kind": "task.started", "task_id": f"t{i}", "occurred_at": v}
              for i, v in enumerate(values)]
    prep = prepare_batch(events, batch=1, project_id=PROJECT, agent_id="a", now=now, positions={})
    assert len(prep.rows) == len(values)
    for row, value in zip(prep.rows, values, strict=True):
        assert row[8] == occurred_at_seconds(value, now), value
        expected = brain_event_id(PROJECT, "celery", row[6], "task.started", occurred_at_seconds(value, now))
        assert str(uuid.UUID(bytes=row[2])) == expected
        assert row[1] == int.from_bytes(row[2][:8], "big", signed=True)


def test_event_ids_without_task_id_are_unchanged():
    v4 = str(uuid.uuid4())
    prep = prepare_batch([{"engine": "rq", "kind": "worker.online", "id": v4}], batch=1, project_id=PROJECT,
                         agent_id="a", positions={})
    assert prep.rows[0][2] == event_id_bytes(PROJECT, "rq", "", "worker.online", 0.0, v4)


def test_dedupe_within_and_across_batches_and_after_reopen(tmp_path):
    db = tmp_path / "brain.sqlite"
    a, b = make_event("task.received", "t1"), make_event("task.started", "t1")
    store = BrainStore(db)
    assert _ingest(store, [a, a, b]) == 2  # the second a is a duplicate inside the batch
    assert _ingest(store, [b, a]) == 0
    store.close()
    again = BrainStore(db)
    assert _ingest(again, [a, b]) == 0  # the dedupe map is rebuilt from the file
    assert _ingest(again, [make_event("task.succeeded", "t1"), a]) == 1
    assert [e["kind"] for e in again.events()] == ["task.received", "task.started", "task.succeeded"]
    assert again.event_count() == 3 and again.event_count(task_id="t1") == 3
    assert again.task("celery", "t1")["state"] == "SUCCESS"
    again.close()


def test_a_batch_that_fails_leaves_no_dedupe_entries():
    store = BrainStore()
    good = make_event("task.received", "t1")
    bad = make_event("task.received", "\ud800")  # cannot be encoded for the uuid5 name
    events = [good, bad]
    with pytest.raises(UnicodeEncodeError):
        store.ingest(events, b"[]", frame_id="ev_bad", project_id=PROJECT, agent_id="a")
    assert store.event_count() == 0
    assert _ingest(store, [good]) == 1  # not mistaken for a duplicate of the failed batch
    assert store.task("celery", "t1")["state"] == "RECEIVED"


def test_duplicates_next_to_new_events_still_merge_into_the_projection():
    store = BrainStore()
    t0 = time.time() - 10
    first = make_event("task.received", "t1", occurred_at=_iso(t0), queue="q1", args=[1], kwargs={})
    assert _ingest(store, [first]) == 1
    # The same dedupe id with other data, next to a new event: the batch is stored, and (as with
    # INSERT OR IGNORE before) the duplicate's task row takes part in the merge...
    resend = {**first, "data": {**first["data"], "queue": "q2", "args": [2]}}
    assert _ingest(store, [resend, make_event("task.received", "t2")]) == 1
    row = store.task("celery", "t1")
    assert row["queue"] == "q2"
    assert row["args"] == [1]  # ...but args are read from the event stored under that id
    # A batch of duplicates only changes nothing.
    assert _ingest(store, [{**first, "data": {**first["data"], "queue": "q3"}}]) == 0
    assert store.task("celery", "t1")["queue"] == "q2"


def test_counts_follow_ingest_and_match_the_table():
    store = BrainStore()
    kinds = ["task.received", "task.started", "task.succeeded", "worker.online"]
    for round_ in range(5):
        batch = [make_event(kinds[i % 4], f"t{round_}-{i}" if i % 4 != 3 else None, engine=("celery", "rq")[i % 2])
                 for i in range(17)]
        _ingest(store, batch)
        for engine in (None, "celery", "rq", "nope"):
            for kind in (None, *kinds, "unknown"):
                clauses = [f"{c} = ?" for c, v in (("engine", engine), ("kind", kind)) if v is not None]
                params = [v for v in (engine, kind) if v is not None]
                sql = "SELECT COUNT(*) FROM events" + (" WHERE " + " AND ".join(clauses) if clauses else "")
                with store._lock:
                    expected = store._conn.execute(sql, params).fetchone()[0]
                assert store.event_count(engine=engine, kind=kind) == expected
    # 17 events a round: kinds cycle, so received gets 5 and the other three 4 each.
    assert store.kind_counts() == {"task.received": 25, "task.started": 20, "task.succeeded": 20, "worker.online": 20}


def test_projection_and_dedupe_map_are_not_tracked_by_the_garbage_collector():
    store = BrainStore()
    _ingest(store, [make_event(k, f"t{i}") for i in range(50) for k in ("task.received", "task.succeeded")])
    gc.collect()
    assert not gc.is_tracked(store._tasks) and not gc.is_tracked(store._positions)
    assert not gc.is_tracked(store._dirty)
    assert len(store.tasks(state="SUCCESS")) == 50


def test_first_file_layout_is_migrated(tmp_path):
    db = tmp_path / "v1.sqlite"
    now = time.time()
    ev = make_event("task.received", "t1", occurred_at=_iso(now - 5), args=[7], kwargs={"k": 1})
    ts = datetime.fromisoformat(ev["occurred_at"]).timestamp()
    eid = uuid.UUID(brain_event_id(PROJECT, "celery", "t1", "task.received", ts)).bytes
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE batches (seq INTEGER PRIMARY KEY, frame_id TEXT NOT NULL, project_id TEXT NOT NULL,
            agent_id TEXT NOT NULL, received_at REAL NOT NULL, events BLOB NOT NULL);
        CREATE TABLE events (key INTEGER PRIMARY KEY, id BLOB NOT NULL, batch INTEGER NOT NULL, idx INTEGER NOT NULL,
            engine TEXT NOT NULL, task_id TEXT NOT NULL, kind TEXT NOT NULL, occurred_at REAL NOT NULL);
        CREATE TABLE tasks (key INTEGER PRIMARY KEY, project_id TEXT NOT NULL, engine TEXT NOT NULL,
            task_id TEXT NOT NULL, agent_id TEXT, state TEXT NOT NULL, task_name TEXT NOT NULL, queue TEXT,
            worker TEXT, priority TEXT NOT NULL, tags TEXT, args_from BLOB, result_from BLOB, parent_task_id TEXT,
            root_task_id TEXT, runtime_ms INTEGER, exception TEXT, traceback TEXT, retry_count INTEGER NOT NULL,
            last_kind TEXT NOT NULL, last_event_at REAL NOT NULL, first_seen_at REAL NOT NULL,
            updated_at REAL NOT NULL);
    """)
    conn.execute("INSERT INTO batches VALUES (1, 'ev_1', ?, 'agent', ?, ?)", (PROJECT, now, json.dumps([ev]).encode()))
    conn.execute("INSERT INTO events VALUES (?, ?, 1, 0, 'celery', 't1', 'task.received', ?)",
                 (int.from_bytes(eid[:8], "big", signed=True), eid, ts))
    conn.execute(
        "INSERT INTO tasks VALUES (?, ?, 'celery', 't1', 'agent', 'RECEIVED', 'demo.add', 'default', NULL, 'normal',"
        " NULL, ?, NULL, NULL, NULL, NULL, NULL, NULL, 0, 'task.received', ?, ?, ?)",
        (task_key(PROJECT, "celery", "t1"), PROJECT, eid, ts, now, now),
    )
    conn.commit()
    conn.close()

    store = BrainStore(db)
    assert [e["id"] for e in store.events()] == [str(uuid.UUID(bytes=eid))]
    row = store.task("celery", "t1")
    assert row["args"] == [7] and row["kwargs"] == {"k": 1} and row["state"] == "RECEIVED"
    assert _ingest(store, [ev]) == 0  # still a duplicate after the migration
    assert _ingest(store, [make_event("task.succeeded", "t1", result=3)]) == 1
    assert store.task("celery", "t1")["result"] == 3 and store.task("celery", "t1")["args"] == [7]
    store.close()


def test_frames_larger_than_the_ingest_backlog_bound_are_all_stored_and_acked():
    n = INGEST_QUEUE_EVENTS + 500
    with LocalBrain(max_frame_size=16 * 1024 * 1024) as brain:
        creds = brain.mint_agent()
        with RawPeer.from_credentials(creds) as peer:
            peer.handshake()
            fids = [peer.send_events([make_event("task.received", f"f{f}-{i}") for i in range(n)]) for f in range(3)]
            acks = [peer.recv_type("event_batch_ack", timeout=30).payload for _ in fids]
    assert [a["acked_id"] for a in acks] == fids
    assert all(a == {"acked_id": a["acked_id"], "received": n, "accepted": n, "rejected": 0} for a in acks)
    assert brain.event_count(kind="task.received") == 3 * n
    assert len(brain.tasks(state="RECEIVED")) == 3 * n
