"""The runtime against the local reference brain over real sockets.

Tests that take ``wire`` run once per transport: WebSocket and HTTPS long-poll."""

from __future__ import annotations

import threading
import time

import pytest
from recording_engine import RecordingEngine
from waiting import wait_for

from z4j_bare import RuntimeState, install_agent
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.protocol import purge_token
from z4j_bare.testing import LocalBrain

FAST = dict(heartbeat_seconds=1.0, stop_timeout=3.0, backoff_max_connection=1.0, backoff_max_protocol=1.0)


@pytest.fixture
def brain():
    with LocalBrain(heartbeat_interval=1) as b:
        yield b


@pytest.fixture(params=["ws", "longpoll"])
def wire(request):
    """The transport a test runs over (the runtime, outbox and commands do not know which)."""
    return request.param


def _runtime(creds, engines, **options):
    config = Config.resolve(**creds.kwargs(), **{**FAST, **options})
    return build_runtime(config, engines)


def test_full_lifecycle_trace_and_delivery(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, transport=wire)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING, what="RUNNING")
    for i in range(50):
        engine.emit_task(f"t{i}", "task.received", "task.started", "task.succeeded")
    assert runtime.flush(10)
    assert brain.event_count() == 150
    assert brain.task("celery", "t7")["state"] == "SUCCESS"
    health = runtime.health()
    assert health["connected"] and health["buffer_depth"] == 0 and health["events_acked"] == 150
    assert health["transport"] == wire and health["transport_mode"] == wire and health["backoff"] is None
    agent = brain.wait_for_agent_online(creds.agent_id)
    if wire == "ws":  # long-poll has no hello (protocol.md 8.4)
        hello = agent["hello"]
        assert hello["framework"] == "bare" and hello["engines"] == ["celery"]
        assert "retry_by_reference_v1" in hello["capabilities"]["celery"]
    wait_for(lambda: brain.agent(creds.agent_id)["heartbeats"] >= 1, what="a heartbeat")
    assert runtime.stop(5) is True
    assert runtime.stop(5) is True  # idempotent
    path = [(e["source"], e["dest"], e["trigger"]) for e in runtime.trace]
    assert path == [("init", "connecting", "start"), ("connecting", "handshake", "connected"),
                    ("handshake", "running", "handshake_ok"), ("running", "draining", "stop"),
                    ("draining", "stopped", "drained")]
    assert all(e["elapsed_ms"] >= 0 for e in runtime.trace) and runtime.trace[1]["transport"] == wire


def test_events_written_before_connect_are_delivered_and_not_duplicated(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine], transport=wire)
    engine.attach(runtime.sinks["celery"])
    for i in range(20):
        engine.emit_task(f"early{i}", "task.received")
    runtime.start()
    assert runtime.flush(10)
    runtime.stop()
    assert brain.event_count() == 20


@pytest.mark.parametrize("spool", [True, False])
def test_buffer_spool_option_chooses_the_append_path_and_both_deliver(brain, spool):
    from z4j_bare.storage.spool import spool_dir_for

    engine = RecordingEngine()
    runtime = _runtime(brain.mint_agent(), [engine], buffer_spool=spool)
    engine.attach(runtime.sinks["celery"])
    for i in range(20):
        engine.emit_task(f"sp{i}", "task.received")
    assert spool_dir_for(runtime.buffer.path).exists() is spool
    runtime.start()
    assert runtime.flush(10)
    runtime.stop()
    assert brain.event_count() == 20


def _running_then_disconnected(brain, wire="ws"):
    engine = RecordingEngine()
    runtime = _runtime(brain.mint_agent(), [engine], transport=wire)
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    brain.pause()
    wait_for(lambda: runtime.state is not RuntimeState.RUNNING, what="disconnect")
    return runtime, engine


def test_brain_down_then_back_delivers_backlog(brain, wire):
    runtime, engine = _running_then_disconnected(brain, wire)
    for i in range(300):
        engine.emit_task(f"b{i}", "task.received", "task.succeeded")
    runtime.buffer.ingest()  # as the I/O thread does every second while the brain is away
    assert runtime.buffer.depth() >= 600
    brain.resume()
    assert runtime.flush(20), runtime.health()
    runtime.stop()
    assert len(brain.tasks(state="SUCCESS")) == 300
    triggers = [e["trigger"] for e in runtime.trace]
    assert "session_lost" in triggers or "connect_failed" in triggers


def test_spooled_events_move_into_the_buffer_while_the_brain_is_away(brain):
    import sqlite3

    runtime, engine = _running_then_disconnected(brain)
    for i in range(100):
        engine.emit_task(f"s{i}", "task.received")

    def in_sqlite() -> int:  # read-only look: does not ingest, unlike depth()
        with sqlite3.connect(f"file:{runtime.buffer.path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM entries WHERE kind = 'event'").fetchone()[0]

    wait_for(lambda: in_sqlite() >= 100, timeout=5, what="the I/O thread to ingest during backoff")
    brain.resume()
    assert runtime.flush(20), runtime.health()
    runtime.stop()


def test_unacked_batches_are_resent_without_restamping(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine], resend_after_seconds=1.0, transport=wire)
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    brain.faults.withhold_acks = True
    uploads = brain.longpoll.requests["events"]
    engine.emit_task("r1", "task.received", "task.started")
    wait_for(lambda: runtime.health()["inflight_frames"] == 1)
    time.sleep(1.5)
    brain.faults.withhold_acks = False
    assert runtime.flush(10)
    if wire == "ws":
        assert runtime.outbox.stats.resends >= 1
    else:  # long-poll: the uploader posts the unconfirmed batch again (re-signed), not the outbox
        assert runtime.outbox.stats.resends == 0 and brain.longpoll.requests["events"] - uploads >= 2
    runtime.stop()
    events = brain.events(task_id="r1")
    assert len(events) == 2  # the brain deduped the resend: same id, same occurred_at


def test_revoked_token_gets_auth_backoff(brain, wire):
    creds = brain.mint_agent()
    brain.revoke_agent(creds.agent_id)
    runtime = _runtime(creds, [RecordingEngine()], backoff_max_auth=600.0, transport=wire)
    runtime.start()
    wait_for(lambda: runtime.health()["failure_streaks"]["auth"] >= 1, what="auth failure")
    assert runtime.state in (RuntimeState.CONNECTING, RuntimeState.HANDSHAKE)
    started = time.monotonic()
    runtime.stop(2)  # interrupts a 10 s+ auth backoff at once
    assert time.monotonic() - started < 1.0
    assert runtime.state is RuntimeState.STOPPED


def test_incompatible_close_code_gets_incompatible_class(brain):
    creds = brain.mint_agent()
    brain.faults.reject_next(1, 4426)
    runtime = _runtime(creds, [RecordingEngine()])
    runtime.start()
    wait_for(lambda: runtime.health()["failure_streaks"]["incompatible"] >= 1, what="incompatible")
    assert runtime.backoff.last_delay >= 120
    runtime.stop(1)


def test_stop_is_bounded_when_brain_is_black_holed(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine], stop_timeout=1.0, transport=wire)
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    brain.faults.stall = True
    brain.faults.withhold_acks = True
    for i in range(100):
        engine.emit_task(f"s{i}", "task.received")
    started = time.monotonic()
    drained = runtime.stop(1.0)
    assert time.monotonic() - started < 1.5
    assert not drained and runtime.state is RuntimeState.STOPPED
    # Nothing lost: the events are still in the buffer file for the next process.
    assert runtime.buffer.depth() >= 100


def test_frames_respect_small_max_frame_size():
    with LocalBrain(max_frame_size=4096, heartbeat_interval=1) as brain:
        creds = brain.mint_agent()
        engine = RecordingEngine()
        runtime = _runtime(creds, [engine])
        runtime.start()
        wait_for(lambda: runtime.state is RuntimeState.RUNNING)
        for i in range(200):
            engine.emit_task(f"m{i}", "task.received")
        engine.emit_task("huge", "task.received", blob=["x" * 900] * 10)
        assert runtime.flush(15), runtime.health()
        runtime.stop()
        assert brain.event_count() == 200
        assert brain.close_codes.count(4400) == 0
        frames = brain.frames_received("event_batch")
        assert len(frames) > 1 and all(f["size"] <= 4096 for f in frames if "size" in f)
        assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 1


def test_two_engines_in_one_agent_route_events_and_commands(brain):
    creds = brain.mint_agent()
    celery, rq = RecordingEngine("celery"), RecordingEngine("rq", caps=("cancel_task",))
    runtime = install_agent(engines=[celery, rq], **creds.kwargs(), **FAST)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    celery.emit_task("c1", "task.received")
    rq.emit_task("r1", "task.received")
    assert runtime.flush(10)
    assert {e["engine"] for e in brain.events()} == {"celery", "rq"}
    hello = brain.wait_for_agent_online(creds.agent_id)["hello"]
    assert hello["capabilities"] == {"celery": sorted(["cancel_task", "purge_queue", "retry_by_reference_v1", "retry_task", "submit_task"]),
                                     "rq": ["cancel_task"]}
    record = brain.wait_for_command(brain.send_command("cancel_task", {"engine": "rq", "task_id": "r1"}, agent_id=creds.agent_id))
    assert record.status == "completed" and rq.calls and not celery.calls
    record = brain.wait_for_command(brain.send_command("purge_queue", {"engine": "rq", "queue": "q", "force": True}, agent_id=creds.agent_id))
    assert record.status == "failed" and "does not support" in record.error
    assert [c[0] for c in rq.calls] == ["cancel_task"]


def test_commands_results_truthful(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, transport=wire)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    send = lambda action, params: brain.wait_for_command(brain.send_command(action, params, agent_id=creds.agent_id), timeout=15)
    ok = send("retry_task", {"engine": "celery", "task_id": "abc", "task_name": "x", "args": None, "kwargs": None})
    assert ok.status == "completed" and ok.result["new_task_id"] == "new-abc"
    assert ok.acked
    failed = send("cancel_task", {"engine": "celery", "task_id": "finished"})
    assert failed.status == "failed" and "already finished" in failed.error
    bug = send("cancel_task", {"engine": "celery", "task_id": "boom"})
    assert bug.status == "failed" and bug.error.startswith("internal error: RuntimeError")
    unknown = send("launch_rockets", {"engine": "celery"})
    assert unknown.status == "failed" and "unrecognized action" in unknown.error
    wrong_engine = send("cancel_task", {"engine": "huey", "task_id": "x"})
    assert wrong_engine.status == "failed" and "not loaded" in wrong_engine.error
    assert runtime.state is RuntimeState.RUNNING


@pytest.mark.parametrize("case", ["valid", "missing", "wrong", "over_threshold", "force"])
def test_purge_token_checks(brain, case):
    creds = brain.mint_agent()
    engine = RecordingEngine(depth=3)
    runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, purge_threshold=2 if case == "over_threshold" else 1000)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    key = runtime.config.key
    params = {"engine": "celery", "queue": "default"}
    if case in ("valid", "over_threshold"):
        params["confirm_token"] = purge_token(key, "default", 3)
    elif case == "wrong":
        params["confirm_token"] = purge_token(key, "default", 4)
    elif case == "force":
        params["force"] = True
    record = brain.wait_for_command(brain.send_command("purge_queue", params, agent_id=creds.agent_id), timeout=15)
    if case in ("valid", "force"):
        assert record.status == "completed" and record.result["depth_before"] == 3
        assert [c[0] for c in engine.calls] == ["purge_queue"]
    else:
        assert record.status == "failed" and "refused" in record.error
        assert engine.calls == []


def test_forged_commands_are_never_executed(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, transport=wire)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    for kind in ("tampered", "replayed", "stale", "v3", "unsigned_command"):
        sessions_before = len([e for e in runtime.trace if e["trigger"] == "handshake_ok"])
        brain.faults.send_to_agent(kind)
        wait_for(lambda: len([e for e in runtime.trace if e["trigger"] == "handshake_ok"]) > sessions_before, timeout=15,
                 what=f"reconnect after {kind}")
        lost = [e for e in runtime.trace if e["trigger"] == "session_lost"][-1]
        assert lost["reason"].startswith("inbound frame rejected"), (kind, lost)
    assert engine.calls == []


def test_fatal_error_frame_ends_session_with_class(brain, wire):
    creds = brain.mint_agent()
    runtime = install_agent(engines=[RecordingEngine()], **creds.kwargs(), **FAST, transport=wire)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    brain.faults.send_to_agent("error_fatal")
    wait_for(lambda: sum(runtime.health()["failure_streaks"].values()) >= 1 or "fatal error frame" in str(runtime.health()["last_failure"]),
             what="session ended by fatal error frame")


def test_request_reconnect_opens_a_fresh_session(brain, wire):
    creds = brain.mint_agent()
    runtime = install_agent(engines=[RecordingEngine()], **creds.kwargs(), **FAST, transport=wire)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    first = runtime.health()["session_id"]
    runtime.request_reconnect()
    wait_for(lambda: runtime.health()["session_id"] not in (None, first), what="new session")
    assert ("running", "connecting", "reconnect") in [(e["source"], e["dest"], e["trigger"]) for e in runtime.trace]


def test_host_threads_emitting_while_runtime_runs(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, transport=wire)
    threads = [threading.Thread(target=lambda n=n: [engine.emit_task(f"h{n}-{i}", "task.received") for i in range(200)]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runtime.flush(15)
    assert brain.event_count() == 800


def test_secrets_never_in_repr_logs_or_wire(brain, wire):
    from structlog.testing import capture_logs

    creds = brain.mint_agent()
    engine = RecordingEngine()
    with capture_logs() as logs:
        runtime = install_agent(engines=[engine], **creds.kwargs(), **FAST, transport=wire)
        wait_for(lambda: runtime.state is RuntimeState.RUNNING)
        engine.emit_task("x", "task.received")
        runtime.flush(5)
        text = repr(runtime) + repr(runtime.config) + repr(runtime.health()) + repr(logs)
        runtime.stop()
    wire = repr(brain.frames_received())
    for secret in (creds.token, creds.hmac_secret):
        assert secret not in text and secret not in wire


def test_unexpected_error_in_session_reconnects_instead_of_dying(brain, monkeypatch, wire):
    import sqlite3

    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine], transport=wire)
    real_read = runtime.buffer.read
    failures = []

    def flaky_read(*args, **kwargs):
        # A fault we cannot cause on demand for real: the disk failing under SQLite once.
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        return real_read(*args, **kwargs)

    monkeypatch.setattr(runtime.buffer, "read", flaky_read)
    runtime.start()
    engine.emit_task("after-fault", "task.received")
    assert runtime.flush(15), runtime.health()
    assert failures and runtime.state is RuntimeState.RUNNING
    assert [e["trigger"] for e in runtime.trace].count("handshake_ok") == 2
    runtime.stop()
    assert brain.event_count() == 1


def test_stop_before_start_goes_straight_to_stopped(brain):
    runtime = _runtime(brain.mint_agent(), [RecordingEngine()])
    assert runtime.state is RuntimeState.INIT
    assert runtime.stop(1) is True
    assert runtime.state is RuntimeState.STOPPED
    assert [(e["source"], e["dest"]) for e in runtime.trace] == [("init", "stopped")]


class EchoChannel:
    """A channel of its own (like the schedule channel): claims `echo.ping` commands and answers
    them through the runtime's control path."""

    def __init__(self):
        self.handled, self.sessions, self.emit = [], [], None

    def hello_fields(self):
        return {"runtime_features": ["echo_v1"], "capabilities": {"echo": ["echo.ping"]}, "engines": ["ignored"]}

    def handles(self, frame):
        return frame.type == "command" and frame.payload.get("action") == "echo.ping"

    def handle(self, frame):
        self.handled.append(frame.id)
        claim = frame.payload.get("delivery_claim_token")
        self.emit("command_ack", frame.id, {"delivery_claim_token": claim})
        self.emit("command_result", frame.id, {"status": "success", "result": {"echo": frame.payload["parameters"]},
                                                "error": None, "delivery_claim_token": claim})

    def session_changed(self, session):
        self.sessions.append(session and session.session_id)


def test_a_registered_channel_extends_hello_takes_its_frames_and_sends_through_the_control_path(brain):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine])
    channel = EchoChannel()
    channel.emit = runtime.add_frame_handler(channel)
    runtime.start()
    with pytest.raises(RuntimeError, match="before the runtime starts"):
        runtime.add_frame_handler(EchoChannel())
    hello = brain.wait_for_agent_online(creds.agent_id)["hello"]
    assert "echo_v1" in hello["runtime_features"] and hello["capabilities"]["echo"] == ["echo.ping"]
    assert hello["engines"] == ["celery"]  # a channel never replaces a core field
    record = brain.wait_for_command(brain.send_command("echo.ping", {"n": 1}, agent_id=creds.agent_id, target={}), timeout=15)
    assert record.status == "completed" and record.result == {"echo": {"n": 1}} and record.acked
    assert engine.calls == [] and len(channel.handled) == 1
    assert runtime.flush(10) and runtime.buffer.depth() == 0  # delivered and removed
    runtime.stop()
    assert channel.sessions[0] and channel.sessions[-1] is None


class CommandsChannel:
    """A channel whose traffic is commands: the command channel runs them for it (ack, dedupe,
    redacted result), and the runtime starts, stops and reports it."""

    def __init__(self):
        self.calls, self.events = [], []

    def hello_fields(self):
        return {"runtime_features": ["tally_v1"]}

    def handles(self, frame):
        return False

    def handle(self, frame):
        raise AssertionError("not offered: it handles nothing")

    def session_changed(self, session):
        pass

    def executes(self, action):
        return action.startswith("tally.")

    def execute(self, action, parameters, target):
        from z4j_bare.engines.base import CommandFailed, Redacted

        self.calls.append(action)
        if action == "tally.fail":
            raise CommandFailed("tally refused", {"why": "asked to"})
        if action == "tally.redacted":
            return Redacted({"password": "kept-as-produced"})
        return {"password": "hunter2", "count": len(self.calls)}

    def start(self):
        self.events.append("start")

    def stop(self):
        self.events.append("stop")

    def health_fields(self):
        return {"tally": {"calls": len(self.calls)}, "state": "overridden?"}


def test_a_channel_executes_its_commands_through_the_command_channel(brain):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine])
    channel = CommandsChannel()
    runtime.add_frame_handler(channel)
    runtime.start()
    try:
        assert channel.events == ["start"]
        brain.wait_for_agent_online(creds.agent_id)
        ok = brain.wait_for_command(brain.send_command("tally.count", {}, agent_id=creds.agent_id, target={}), timeout=15)
        assert ok.status == "completed" and ok.acked and ok.result == {"password": "[REDACTED]", "count": 1}
        failed = brain.wait_for_command(brain.send_command("tally.fail", {}, agent_id=creds.agent_id, target={}),
                                        timeout=15)
        assert failed.status == "failed" and failed.error == "tally refused" and failed.result == {"why": "asked to"}
        kept = brain.wait_for_command(brain.send_command("tally.redacted", {}, agent_id=creds.agent_id, target={}),
                                      timeout=15)
        assert kept.result == {"password": "kept-as-produced"}  # its producer redacted it: sent as it is
        assert channel.calls == ["tally.count", "tally.fail", "tally.redacted"] and engine.calls == []
        health = runtime.health()
        assert health["tally"] == {"calls": 3} and health["state"] == "running"  # never replaces a runtime key
    finally:
        runtime.stop()
    assert channel.events == ["start", "stop"]


def test_add_frame_handler_refuses_an_object_that_is_not_one(brain):
    runtime = _runtime(brain.mint_agent(), [RecordingEngine()])
    with pytest.raises(TypeError, match="lacks handles, handle, session_changed"):
        runtime.add_frame_handler(type("Half", (), {"hello_fields": lambda self: {}})())
    runtime.stop(0)


def _edges(runtime):
    return [(e["source"], e["dest"], e["trigger"]) for e in runtime.trace]


def test_trace_of_a_failed_handshake_shows_the_class_reason_and_wait(brain, wire):
    creds = brain.mint_agent()
    brain.revoke_agent(creds.agent_id)
    runtime = _runtime(creds, [RecordingEngine()], backoff_max_auth=600.0, transport=wire)
    runtime.start()
    wait_for(lambda: runtime.health()["backoff"] is not None, what="the auth backoff")
    lost = runtime.trace[-1]
    assert _edges(runtime) == [("init", "connecting", "start"), ("connecting", "handshake", "connected"),
                               ("handshake", "connecting", "session_lost")]
    assert runtime.trace[1]["transport"] == wire
    refusal = "4401" if wire == "ws" else "HTTP 401"
    assert lost["failure_class"] == "auth" and refusal in lost["reason"] and lost["retry_in_s"] >= 10
    waiting = runtime.health()["backoff"]
    assert waiting["failure_class"] == "auth" and waiting["retry_in_s"] >= 10 and waiting["next_attempt_at"].endswith("Z")
    assert runtime.health()["state"] == "connecting" and not runtime.health()["ready"]
    runtime.stop(2)  # the on_enter_connecting wait ends at once
    assert _edges(runtime)[-1] == ("connecting", "stopped", "stop") and runtime.health()["backoff"] is None


def test_trace_of_connect_failures_then_a_session(brain, wire):
    creds = brain.mint_agent()
    brain.pause()
    runtime = _runtime(creds, [RecordingEngine()], transport=wire)
    runtime.start()
    wait_for(lambda: len(runtime.trace) >= 3, what="two failed connect attempts")
    failed = [e for e in runtime.trace if e["trigger"] == "connect_failed"]
    assert failed and all(e["failure_class"] == "connection" and "retry_in_s" in e for e in failed)
    brain.resume()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING, what="RUNNING once the brain is back")
    assert _edges(runtime)[-2:] == [("connecting", "handshake", "connected"), ("handshake", "running", "handshake_ok")]
    runtime.stop()


def test_trace_of_a_lost_session_and_the_reconnect(brain, wire):
    runtime, engine = _running_then_disconnected(brain, wire)
    lost = next(e for e in runtime.trace if e["trigger"] == "session_lost")
    assert lost["source"] == "running" and lost["failure_class"] == "connection" and lost["retry_in_s"] >= 0
    if wire == "ws":
        assert "1001" in lost["reason"]
    brain.resume()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING, what="the reconnect")
    engine.emit_task("after", "task.received")
    assert runtime.flush(10)
    runtime.stop()
    assert brain.event_count() == 1
    assert _edges(runtime)[-2:] == [("running", "draining", "stop"), ("draining", "stopped", "drained")]


def test_draining_delivers_what_is_buffered_before_stopping(brain, wire):
    creds = brain.mint_agent()
    engine = RecordingEngine()
    runtime = _runtime(creds, [engine], stop_timeout=10.0, transport=wire)
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    brain.faults.ack_delay = 0.2  # acks still in flight when stop() is called
    for i in range(500):
        engine.emit_task(f"d{i}", "task.received")
    assert runtime.stop() is True
    assert brain.event_count() == 500 and runtime.buffer.depth() == 0
    drain = runtime.trace[-1]
    assert _edges(runtime)[-2:] == [("running", "draining", "stop"), ("draining", "stopped", "drained")]
    assert drain["elapsed_ms"] > 0  # time spent in DRAINING delivering


def test_a_control_frame_over_the_frame_limit_is_refused_locally_and_counted(brain, wire):
    runtime = _runtime(brain.mint_agent(), [RecordingEngine()], transport=wire)
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING)
    session = runtime.health()["session_id"]
    runtime.controls.emit("command_result", "00000000-0000-4000-8000-000000000001",
                          {"status": "success", "result": {"blob": "x" * 1_100_000}, "error": None,
                           "delivery_claim_token": None})
    wait_for(lambda: runtime.controls.idle, what="the frame to be settled")
    assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 1
    assert runtime.flush(10) and runtime.health()["session_id"] == session  # never sent: the session lives on
    runtime.stop()
