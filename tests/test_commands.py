"""The command channel on its own: dedupe (also across restarts), ack before result, timeouts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from recording_engine import RecordingEngine
from z4j_bare.buffer import BufferStore
from z4j_bare.commands import CommandChannel
from z4j_bare.orchestrator import detect_orchestrator
from z4j_bare.protocol import Frame, FrameType


def _frame(cid: str, action: str, **params) -> Frame:
    return Frame(FrameType.COMMAND, cid, {"action": action, "target": {}, "parameters": params, "delivery_claim_token": "claim-1"})


class Collector:
    def __init__(self):
        self.frames: list[tuple[str, str, dict]] = []
        self.cond = threading.Condition()

    def __call__(self, kind, frame_id, payload):
        with self.cond:
            self.frames.append((kind, frame_id, payload))
            self.cond.notify_all()

    def wait_results(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.results()) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {self.frames}"
                self.cond.wait(left)
        return self.results()

    def results(self):
        return [f for f in self.frames if f[0] == "command_result"]


@pytest.fixture
def buffer(tmp_path: Path):
    store = BufferStore(tmp_path / "buffer.sqlite")
    yield store
    store.close()


def _channel(buffer, engine, emit, **kw):
    return CommandChannel({engine.name: engine}, buffer, b"k" * 32, emit, **kw)


def test_ack_first_then_one_result_with_claim_token(buffer):
    engine, emit = RecordingEngine(), Collector()
    channel = _channel(buffer, engine, emit)
    channel.submit(_frame("c1", "cancel_task", task_id="t1"))
    [result] = emit.wait_results(1)
    assert emit.frames[0] == ("command_ack", "c1", {"delivery_claim_token": "claim-1"})
    assert result[2]["status"] == "success" and result[2]["delivery_claim_token"] == "claim-1"


def test_duplicate_in_session_and_after_restart_runs_once(buffer, tmp_path):
    engine, emit = RecordingEngine(), Collector()
    channel = _channel(buffer, engine, emit)
    channel.submit(_frame("c1", "cancel_task", task_id="t1"))
    emit.wait_results(1)
    channel.submit(_frame("c1", "cancel_task", task_id="t1"))
    time.sleep(0.2)
    assert len(engine.calls) == 1 and [f[0] for f in emit.frames].count("command_ack") == 2
    channel.shutdown()
    buffer.close()
    # A new agent process on the same buffer file remembers the command id.
    reopened = BufferStore(tmp_path / "buffer.sqlite")
    emit2 = Collector()
    _channel(reopened, engine, emit2).submit(_frame("c1", "cancel_task", task_id="t1"))
    time.sleep(0.2)
    assert len(engine.calls) == 1 and emit2.frames == [("command_ack", "c1", {"delivery_claim_token": "claim-1"})]
    reopened.close()


def test_fire_duplicates_dedupe_by_fire_id(buffer):
    engine, emit = RecordingEngine(), Collector()
    channel = _channel(buffer, engine, emit)
    channel.submit(_frame("c1", "schedule.fire", fire_id="f1", task_name="x"))
    emit.wait_results(1)
    channel.submit(_frame("c2", "schedule.fire", fire_id="f1", task_name="x"))
    results = emit.wait_results(2)
    assert results[1][2]["result"] == {"deduplicated": True, "dedup_key": "fire:f1"}
    assert len(engine.calls) == 1


def test_slow_adapter_times_out_as_indeterminate(buffer):
    engine, emit = RecordingEngine(action_delay=1.0), Collector()
    channel = _channel(buffer, engine, emit, timeout=0.2)
    channel.submit(_frame("c1", "cancel_task", task_id="t1"))
    [result] = emit.wait_results(1)
    assert result[2]["status"] == "failed" and result[2]["result"]["indeterminate"] is True
    time.sleep(1.0)
    assert len(emit.results()) == 1  # the late completion does not produce a second result


def test_restart_worker_refused_without_orchestrator(buffer):
    engine, emit = RecordingEngine(), Collector()
    exits = []
    channel = _channel(buffer, engine, emit, orchestrated=False, exit_process=exits.append)
    channel.submit(_frame("c1", "restart_worker", worker_name="w"))
    [result] = emit.wait_results(1)
    assert result[2]["status"] == "failed" and "no orchestrator" in result[2]["error"] and exits == []


def test_restart_worker_flap_guard(buffer):
    engine, emit = RecordingEngine(), Collector()
    exits = []
    channel = _channel(buffer, engine, emit, orchestrated=True, exit_process=exits.append)
    channel.submit(_frame("c1", "restart_worker", worker_name="w"))
    [result] = emit.wait_results(1)
    assert "restart loop" in result[2]["error"] and exits == []


def test_restart_worker_self_exit_when_orchestrated(buffer):
    engine, emit = RecordingEngine(), Collector()
    exits = []
    channel = _channel(buffer, engine, emit, orchestrated=True, exit_process=exits.append)
    channel._started_at -= 120
    channel.submit(_frame("c1", "restart_worker", worker_name="w"))
    [result] = emit.wait_results(1)
    assert result[2]["result"]["restarted_via"] == "self_exit"
    time.sleep(0.4)
    assert exits == [0]
    assert any('"worker.offline"' in row.body for row in buffer.read())


@pytest.mark.parametrize("env, files, pid, expected", [
    ({}, {}, 1, True),
    ({"Z4J_ORCHESTRATED": "0"}, {}, 1, False),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {".dockerenv": ""}, 42, True),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {}, 42, False),
    ({}, {"proc/1/cgroup": "0::/kubepods/x"}, 42, False),
    ({"Z4J_ORCHESTRATED": "1"}, {"etc/z4j-orchestrated": ""}, 42, True),
    ({"INVOCATION_ID": "abc"}, {"proc/1/cgroup": "0::/docker/x"}, 42, True),
])
def test_orchestrator_detection(tmp_path, env, files, pid, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert (detect_orchestrator(env, tmp_path, pid) is not None) is expected


def test_results_and_errors_are_scrubbed_before_they_leave(buffer):
    from z4j_bare.redaction import Redactor

    class LeakyEngine(RecordingEngine):
        def cancel_task(self, request):
            raise ConnectionError("cannot reach redis://:hunter2-secret@cache.internal:6379/0")

        def submit_task(self, request):
            return {"task_id": "t", "password": "hunter2-secret", "echo": "mail bob@example.com"}

    engine, emit = LeakyEngine(), Collector()
    channel = _channel(buffer, engine, emit, redactor=Redactor())
    channel.submit(_frame("c1", "cancel_task", task_id="t"))
    channel.submit(_frame("c2", "submit_task", name="x"))
    results = {f[1]: f[2] for f in emit.wait_results(2)}
    assert "hunter2" not in repr(results) and "bob@example.com" not in repr(results)
    assert results["c1"]["status"] == "failed" and "ConnectionError" in results["c1"]["error"]
    assert results["c2"]["result"]["task_id"] == "t"
