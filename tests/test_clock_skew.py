"""A host whose clock is off by minutes still delivers, says so once, and keeps replay protection
(issue 21, item 2).

The brain refuses a signed frame whose ts is more than 60 s from its own clock. The local brain
runs its clock 300 s ahead of or behind the host's (``clock_offset``: its hello_ack, Date
headers, signatures and replay checks); tests/interop/test_faults_interop.py does the same with
the real brain 1.13 under libfaketime.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from email.utils import formatdate

import pytest
from agent_records import agent_records
from brainproc import BrainProcess
from recording_engine import RecordingEngine
from rq import Queue
from rq_app import harness
from waiting import wait_for

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.diagnostics import run_doctor
from z4j_bare.testing import LocalBrain
from z4j_bare.transport.clock import BrainClock, date_offset

pytestmark = pytest.mark.timeout(120)

SKEWS = [300.0, -300.0]


@pytest.fixture
def warnings_seen():
    with agent_records(logging.INFO, keep_from=logging.WARNING) as seen:
        yield seen


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------- unit


def test_the_brain_clock_moves_signatures_and_status_times_and_warns_once(warnings_seen):
    host = [1_800_000_000.0]
    clock = BrainClock(lambda: host[0])
    assert clock.now() == host[0] and clock.snapshot() == {"skew_seconds": None, "source": None}
    clock.measured(-300.25, "hello_ack")
    assert clock.now() == host[0] - 300.25 and clock.to_brain(host[0] - 10) == host[0] - 310.25
    assert _epoch(clock.now_text()) == pytest.approx(host[0] - 300.25)
    clock.measured(-299.9, "hello_ack")  # every connect measures again; the warning stays single
    clock.measured(2.0, "date")
    assert clock.snapshot() == {"skew_seconds": 2.0, "source": "date"}
    skew_warnings = [r for r in warnings_seen if r.z4j_event == "runtime.clock_skew"]
    assert len(skew_warnings) == 1
    text = skew_warnings[0].getMessage()
    assert "this host's clock is 300.2 s ahead of the brain's" in text and "NTP" in text
    assert BrainClock(warn=False) is not None


def test_a_date_header_gives_the_offset_to_the_half_second():
    brain = 1_796_180_400.0  # 2026-12-02 03:00:00 UTC
    assert formatdate(brain, usegmt=True) == "Wed, 02 Dec 2026 03:00:00 GMT"
    assert date_offset("Wed, 02 Dec 2026 03:00:00 GMT", brain - 300) == pytest.approx(300.5)
    assert date_offset(None, 0.0) is None and date_offset("yesterday", 0.0) is None


# ---------------------------------------------------------------------------------------------- runtime


@pytest.mark.parametrize("transport", ["ws", "longpoll"])
@pytest.mark.parametrize("skew", SKEWS)
def test_an_agent_delivers_to_a_brain_whose_clock_is_minutes_off(tmp_path, warnings_seen, transport, skew):
    with LocalBrain(heartbeat_interval=1, clock_offset=skew) as brain:
        creds = brain.mint_agent()
        engine = RecordingEngine()
        config = Config.resolve(**creds.kwargs(), agent_id=creds.agent_id, transport=transport,
                                home=str(tmp_path / "home"), heartbeat_seconds=1.0, stop_timeout=3.0)
        runtime = build_runtime(config, [engine]).start()
        try:
            wait_for(lambda: runtime.state is RuntimeState.RUNNING, 15, "a session")
            for i in range(100):
                engine.emit_task(f"skew-{i}", "task.received", "task.succeeded")
            assert runtime.flush(15), runtime.health()
            runtime.request_reconnect()  # a second connect measures again, warns no more
            wait_for(lambda: sum(e["trigger"] == "handshake_ok" for e in runtime.trace) >= 2, 15, "a second session")
            wait_for(lambda: (brain.agent(creds.agent_id)["last_heartbeat"] or {}).get("last_flush_at"), 10,
                     "a heartbeat sent after the flush")
            health = runtime.health()
            agent = brain.agent(creds.agent_id)
        finally:
            runtime.stop()
        assert brain.event_count() == 200
        assert not [e for e in runtime.trace if e["trigger"] in ("session_lost", "connect_failed")], runtime.trace
        tolerance = 0.1 if transport == "ws" else 1.0  # hello_ack's ts vs a whole-second Date header
        assert health["clock_skew_seconds"] == pytest.approx(skew, abs=tolerance)
        assert health["clock_skew_source"] == ("hello_ack" if transport == "ws" else "date")
        assert agent["last_agent_status"]["clock_skew_seconds"] == pytest.approx(skew, abs=tolerance)
        # Times the brain compares with its own clock are in its time (last_flush_at sets a worker's
        # last heartbeat there): within a few seconds of the brain's now, not 300 s off.
        flushed = agent["last_heartbeat"]["last_flush_at"]
        assert flushed and abs(_epoch(flushed) - (time.time() + skew)) < 15, flushed
        skew_warnings = [r for r in warnings_seen if r.z4j_event == "runtime.clock_skew"]
        assert len(skew_warnings) == 1, skew_warnings
        assert skew_warnings[0].z4j_fields["skew_seconds"] == pytest.approx(skew, abs=tolerance)
        assert ("behind the brain's" if skew > 0 else "ahead of the brain's") in skew_warnings[0].getMessage()


@pytest.mark.parametrize("kind,options", [("stale", {"skew": 300.0}), ("stale", {"skew": -90.0}),
                                          ("replayed", {})])
def test_replay_protection_is_as_strict_on_the_brains_clock(tmp_path, kind, options):
    """The brain runs 300 s ahead. A frame stamped with the host's own time now (300 s before the
    brain's) or 90 s in the brain's future is refused, and so is a replayed seq and nonce: only the
    reference clock moved, nothing got looser."""
    with LocalBrain(clock_offset=300.0) as brain:
        creds = brain.mint_agent()
        runtime = build_runtime(Config.resolve(**creds.kwargs(), home=str(tmp_path / "home"), stop_timeout=2.0,
                                               backoff_max_connection=1.0), [RecordingEngine()]).start()
        try:
            wait_for(lambda: runtime.state is RuntimeState.RUNNING, 15, "a session")
            assert brain.faults.send_to_agent(kind, **options) == 1
            wait_for(lambda: any(e["trigger"] == "session_lost" for e in runtime.trace), 10, "the session to end")
            lost = next(e for e in runtime.trace if e["trigger"] == "session_lost")
            wait_for(lambda: runtime.state is RuntimeState.RUNNING, 15, "the next session")
        finally:
            runtime.stop()
        assert "inbound frame rejected" in lost["reason"], lost
        assert ("seq" in lost["reason"]) if kind == "replayed" else ("ts is" in lost["reason"]), lost


@pytest.mark.parametrize("skew", SKEWS)
def test_a_real_worker_on_a_skewed_host_delivers_every_job(tmp_path, skew):
    """A real RQ worker against a brain process whose clock is 300 s ahead of / behind the host's."""
    queue_name = harness.unique_queue("skew")
    conn = harness.connection()
    with BrainProcess(tmp_path / "brain", "--clock-offset", str(skew)) as brain:
        env = {**brain.env, "Z4J_HOME": str(tmp_path / "worker-home"), "Z4J_STOP_TIMEOUT": "5"}
        try:
            queue = Queue(queue_name, connection=conn)
            jobs = [queue.enqueue("rq_app.jobs.add", i, 1) for i in range(10)]
            proc = harness.run_burst("z4j_rq.Worker", [queue_name], env)
        finally:
            harness.flush_queues(conn, [queue_name])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(lambda: {j.id for j in jobs} <= brain.task_ids("rq", "task.succeeded"), 20, "every job in the brain")
    out = proc.stdout + proc.stderr
    way = "behind the brain's" if skew > 0 else "ahead of the brain's"
    assert out.count("runtime.clock_skew") == 1 and way in out, out[-3000:]
    assert "session_failed" not in out, out[-3000:]


# ---------------------------------------------------------------------------------------------- doctor


@pytest.mark.parametrize("skew,status", [(0.0, "pass"), (30.0, "warn"), (300.0, "fail"), (-300.0, "fail")])
def test_doctor_reports_the_skew_and_still_proves_the_key(skew, status):
    with LocalBrain(clock_offset=skew) as brain:
        creds = brain.mint_agent()
        report = run_doctor({**creds.kwargs(), "agent_id": creds.agent_id})
    stage = report.probe("skew")
    assert stage.status == status, stage
    assert stage.details["skew_seconds"] == pytest.approx(skew, abs=0.5) and stage.details["source"] == "hello_ack"
    # The skew is reported in its own stage; the key is still proven (signed on the brain's clock).
    assert report.probe("hmac").status == "pass" and report.probe("runtime").status == "pass"
    if status != "pass":
        assert "NTP" in stage.fix
    if status == "fail":
        assert "beyond the brain's 60 s window" in stage.message and not report.ok
        assert "skew" in report.render_text()
