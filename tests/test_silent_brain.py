"""A brain that goes silent is noticed, and the session comes back when it answers (issue 21, item 1).

The brain runs in a process of its own and is frozen with SIGSTOP: the kernel keeps its sockets
open, no FIN or RST ever comes, exactly like a frozen host or a black-holed path. Deadlines are
shortened through the same options an operator has (silence_timeout_seconds, connect_timeout);
tests/interop/test_faults_interop.py runs the real defaults against the real brain 1.13.
"""

from __future__ import annotations

import time
import uuid

import pytest
from brainproc import BrainProcess
from recording_engine import RecordingEngine
from rq import Queue
from rq_app import harness
from waiting import wait_for

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.testing import LocalBrain

pytestmark = pytest.mark.timeout(180)

SILENCE = 3.0
SHORT = {"silence_timeout_seconds": SILENCE, "connect_timeout": 2.0, "heartbeat_seconds": 1.0,
         "stop_timeout": 3.0}


def _wait(predicate, timeout, what):
    """The moment ``predicate`` held (the tests time how soon the agent noticed)."""
    wait_for(predicate, timeout, what, interval=0.05)
    return time.monotonic()


def _config(env, home, **options):
    return Config.resolve(brain_url=env["Z4J_BRAIN_URL"], token=env["Z4J_TOKEN"], hmac_secret=env["Z4J_HMAC_SECRET"],
                          project_id=env["Z4J_PROJECT_ID"], home=str(home), **{**SHORT, **options})


def test_a_frozen_brain_is_noticed_and_the_session_returns_when_it_answers(tmp_path):
    with BrainProcess(tmp_path / "brain") as brain:
        engine = RecordingEngine()
        runtime = build_runtime(_config(brain.env, tmp_path / "home"), [engine]).start()
        try:
            _wait(lambda: runtime.state is RuntimeState.RUNNING, 20, "the first session")
            for i in range(50):
                engine.emit_task(f"before-{i}", "task.received", "task.succeeded")
            assert runtime.flush(10)
            frozen_at = time.monotonic()
            brain.freeze()
            for i in range(50):  # while frozen: buffered, then delivered on the next session
                engine.emit_task(f"during-{i}", "task.received", "task.succeeded")
            time.sleep(SILENCE / 2)
            owed = runtime.health()["liveness"]
            assert owed["answer_owed_seconds"] is not None and owed["limit_seconds"] == SILENCE
            noticed = _wait(lambda: not runtime.health()["connected"], SILENCE + 7, "health() to say not connected")
            assert noticed - frozen_at < SILENCE + 6  # one ping interval, the limit, the loop
            health = runtime.health()
            assert "the brain stopped answering" in health["last_failure"]
            lost = [e for e in runtime.trace if e["trigger"] == "session_lost"]
            assert lost and lost[-1]["failure_class"] == "connection" and "no pong, ack or frame" in lost[-1]["reason"]
            # Keep it frozen across a connect attempt that times out (TCP is accepted by the
            # kernel, the upgrade never answered), then let it answer again.
            _wait(lambda: any(e["trigger"] == "connect_failed" for e in runtime.trace), 20, "a timed-out attempt")
            thawed_at = time.monotonic()
            brain.thaw()
            back = _wait(lambda: runtime.health()["connected"], 15, "the session to come back")
            assert back - thawed_at < 5.0, f"reconnected {back - thawed_at:.1f} s after the brain answered again"
            assert runtime.flush(15), runtime.health()
        finally:
            runtime.stop()
        assert brain.event_count() == 200  # nothing lost, nothing twice
        retried = [e for e in runtime.trace if e["trigger"] == "connect_failed"]
        assert all(e["retry_in_s"] < 2.0 for e in retried if "retry_in_s" in e), retried  # paced, not grown


@pytest.mark.slow
def test_a_frozen_brain_on_long_poll_is_noticed_at_the_defaults(tmp_path):
    """Long-poll holds a command poll open for 30 s by design; the poll's own timeout (40 s) ends
    the session with a frozen brain, within the 45 s, and timed-out probes are paced so the
    session is back within seconds of the brain answering again."""
    with BrainProcess(tmp_path / "brain") as brain:
        engine = RecordingEngine()
        config = Config.resolve(brain_url=brain.env["Z4J_BRAIN_URL"], token=brain.env["Z4J_TOKEN"],
                                hmac_secret=brain.env["Z4J_HMAC_SECRET"], project_id=brain.env["Z4J_PROJECT_ID"],
                                agent_id="00000000-0000-4000-8000-000000000000", transport="longpoll",
                                home=str(tmp_path / "home"), stop_timeout=3.0)
        runtime = build_runtime(config, [engine]).start()
        try:
            _wait(lambda: runtime.state is RuntimeState.RUNNING, 20, "the first session")
            frozen_at = time.monotonic()
            brain.freeze()
            engine.emit_task("lp-frozen", "task.received")
            noticed = _wait(lambda: not runtime.health()["connected"], 50, "health() to say not connected")
            _wait(lambda: any(e["trigger"] == "session_lost" and "probe" in e.get("reason", "")
                              for e in runtime.trace), 30, "a probe that timed out")
            thawed_at = time.monotonic()
            brain.thaw()
            back = _wait(lambda: runtime.health()["connected"], 20, "the session to come back")
            assert runtime.flush(10)
        finally:
            if brain.frozen:
                brain.thaw()
            runtime.stop()
        assert noticed - frozen_at < 45.0
        assert back - thawed_at < 5.0
        waits = [e["retry_in_s"] for e in runtime.trace if "probe" in e.get("reason", "") and "retry_in_s" in e]
        assert waits and max(waits) < 2.0, waits  # paced: each probe already waited its timeout


def test_a_real_worker_reconnects_after_the_brain_was_frozen_and_loses_nothing(tmp_path):
    queue_name = harness.unique_queue("silent")
    conn = harness.connection()
    with BrainProcess(tmp_path / "brain") as brain:
        env = {**brain.env, "Z4J_HOME": str(tmp_path / "worker-home"),
               **{f"Z4J_{k.upper()}": str(v) for k, v in SHORT.items()}}
        worker = harness.start_worker("z4j_rq.Worker", [queue_name], env, name=f"silent-{uuid.uuid4().hex[:6]}")
        out = ""
        try:
            queue = Queue(queue_name, connection=conn)
            first = [queue.enqueue("rq_app.jobs.add", i, 1) for i in range(5)]
            _wait(lambda: len(brain.task_ids("rq", "task.succeeded")) >= 5, 60, "the first jobs in the brain")
            brain.freeze()
            frozen = [queue.enqueue("rq_app.jobs.add", i, 2) for i in range(10)]
            _wait(lambda: all(j.get_status(refresh=True) == "finished" for j in frozen), 60,
                  "the jobs to run while the brain is frozen")
            time.sleep(SILENCE + 5)  # the agent gives the session up meanwhile
            brain.thaw()
            wanted = {j.id for j in first + frozen}
            _wait(lambda: wanted <= brain.task_ids("rq", "task.succeeded"), 30,
                  "every job's success in the brain after it answered again")
        finally:
            if brain.frozen:
                brain.thaw()
            out = harness.stop_worker(worker)
            harness.flush_queues(conn, [queue_name])
        # The worker's own output shows the warning an operator would see.
        assert "the brain stopped answering" in out, out[-3000:]


def test_a_brain_that_acks_slowly_but_answers_pings_is_not_declared_dead(tmp_path):
    """Acks that take longer than the silence limit do not end a session whose brain still
    answers: only silence does (the real brain takes seconds per large frame)."""
    with LocalBrain() as brain:
        creds = brain.mint_agent()
        brain.faults.ack_delay = 2.5  # every ack 2.5 s late, 2.5 times the limit below
        engine = RecordingEngine()
        config = Config.resolve(**creds.kwargs(), home=str(tmp_path / "home"), silence_timeout_seconds=1.0,
                                heartbeat_seconds=1.0)
        runtime = build_runtime(config, [engine]).start()
        try:
            _wait(lambda: runtime.state is RuntimeState.RUNNING, 20, "a session")
            for round_ in range(3):
                for i in range(500):
                    engine.emit_task(f"slow-{round_}-{i}", "task.received")
                time.sleep(1.0)
            assert runtime.flush(30), runtime.health()
        finally:
            runtime.stop()
        assert not [e for e in runtime.trace if e["trigger"] == "session_lost"], runtime.trace
        assert brain.event_count() == 1500


def test_the_limit_adapts_to_a_brain_that_stalls_longer_and_longer(tmp_path):
    """A brain whose process stalls (no pong, no ack: its loop busy) for 2, 3, 4.5, then 7 s, with a
    3 s base limit: each stall stays within what the session has already shown (3x the longest
    answer, less a ping interval of sampling), so none ends the session; a fixed 3 s deadline
    would have cut it at the third."""
    with BrainProcess(tmp_path / "brain") as brain:
        engine = RecordingEngine()
        runtime = build_runtime(_config(brain.env, tmp_path / "home", silence_timeout_seconds=3.0,
                                        connect_timeout=10.0), [engine]).start()
        try:
            _wait(lambda: runtime.state is RuntimeState.RUNNING, 20, "a session")
            for stall in (2.0, 3.0, 4.5, 7.0):
                brain.freeze()
                engine.emit_task(f"stall-{stall}", "task.received")
                time.sleep(stall)
                brain.thaw()
                time.sleep(1.0)
                assert runtime.health()["connected"], (stall, runtime.health()["last_failure"])
            liveness = runtime.health()["liveness"]
            assert runtime.flush(10)
        finally:
            if brain.frozen:
                brain.thaw()
            runtime.stop()
        assert not [e for e in runtime.trace if e["trigger"] == "session_lost"], runtime.trace
        assert liveness["longest_answer_seconds"] > 5.0 and liveness["limit_seconds"] > 15.0, liveness
        assert brain.event_count() == 4
