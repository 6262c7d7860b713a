"""HTTPS long-poll against the local brain's long-poll endpoints and their fault knobs.

The runtime-level behaviour both transports share runs over long-poll in test_runtime.py (the
``wire`` parameter); these are the long-poll-specific answers: 409, 413, 415/422, 429/5xx with
Retry-After, slow polls."""

from __future__ import annotations

import time

import pytest
from recording_engine import RecordingEngine
from waiting import wait_for

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.protocol import BackoffClass
from z4j_bare.testing import LocalBrain
from z4j_bare.transport.http import HttpAnswer
from z4j_bare.transport.longpoll import classify_refusal

FAST = dict(heartbeat_seconds=1.0, stop_timeout=3.0, backoff_max_connection=1.0, backoff_max_protocol=1.0,
            transport="longpoll")


@pytest.fixture
def brain():
    with LocalBrain(heartbeat_interval=1) as b:
        yield b


def _running(brain, **options):
    engine = RecordingEngine()
    config = Config.resolve(**brain.mint_agent().kwargs(), **{**FAST, **options})
    runtime = build_runtime(config, [engine])
    runtime.start()
    wait_for(lambda: runtime.state is RuntimeState.RUNNING, what="RUNNING over long-poll")
    return runtime, engine


def test_409_ends_the_session_and_the_next_one_has_a_fresh_nonce(brain):
    runtime, engine = _running(brain)
    first = runtime.health()["session_id"]
    brain.longpoll.faults.invalidate_next(1)
    wait_for(lambda: runtime.health()["session_id"] not in (None, first), what="a session with a new nonce")
    lost = [e for e in runtime.trace if e["trigger"] == "session_lost"][-1]
    assert "409" in lost["reason"] and lost["failure_class"] == "connection"
    engine.emit_task("after-409", "task.received")
    assert runtime.flush(10)
    runtime.stop()
    # The nonce's other request in flight (the poll, or an upload) gets its 409 too.
    assert brain.event_count() == 1 and {status for _, status in brain.longpoll.refusals} == {409}


def test_413_halves_the_upload_and_nothing_is_lost(brain):
    runtime, engine = _running(brain, max_batch_events=5, max_inflight_frames=8)
    brain.longpoll.faults.max_upload_frames = 1
    for i in range(60):
        engine.emit_task(f"big{i}", "task.received")
    assert runtime.flush(20), runtime.health()
    runtime.stop()
    assert brain.event_count() == 60 and ("events", 413) in brain.longpoll.refusals
    assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 0


def test_the_brains_body_limit_shrinks_the_frames_and_nothing_is_lost(brain):
    brain.longpoll.max_body_bytes = 3000  # below the 8 KiB the agent starts with (brain 1.13's default)
    runtime, engine = _running(brain)
    for i in range(300):
        engine.emit_task(f"small{i}", "task.received", note="x" * 100)
    assert runtime.flush(30), runtime.health()
    assert brain.event_count() == 300 and ("events", 413) in brain.longpoll.refusals
    assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 0
    # An event the brain can never take in one upload is dropped and counted, not retried forever.
    engine.emit_task("huge", "task.received", note="y" * 5000)
    engine.emit_task("after-huge", "task.received")
    assert runtime.flush(15), runtime.health()
    runtime.stop()
    assert brain.events(task_id="after-huge") and not brain.events(task_id="huge")
    assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 1


def test_uploads_grow_while_the_brain_takes_them(brain):
    brain.longpoll.max_body_bytes = 4 * 2**20
    runtime, engine = _running(brain)
    for i in range(3000):
        engine.emit_task(f"g{i}", "task.received", note="z" * 100)
    assert runtime.flush(30), runtime.health()
    transport = runtime.lifecycle.session.transport
    assert transport.frame_limit > 100_000 and brain.longpoll.refusals == []
    runtime.stop()
    assert brain.event_count() == 3000


def test_422_is_bisected_to_the_refused_frame_which_is_counted_as_lost(brain):
    runtime, engine = _running(brain, max_batch_events=1, max_inflight_frames=8)
    brain.longpoll.faults.refuse_marker = "poison-pill"
    for i in range(12):
        engine.emit_task("poison-pill" if i == 5 else f"fine{i}", "task.received")
    assert runtime.flush(20), runtime.health()
    runtime.stop()
    assert brain.event_count() == 11 and not brain.events(task_id="poison-pill")
    assert runtime.buffer.telemetry_loss()["content_rejected_frames"] == 1
    assert [r for r in brain.longpoll.refusals if r == ("events", 422)]
    assert runtime.trace[-1]["dest"] == "stopped" and not [e for e in runtime.trace if e["trigger"] == "session_lost"]


def test_503_with_retry_after_is_waited_out_then_the_upload_succeeds(brain):
    runtime, engine = _running(brain)
    brain.longpoll.faults.fail_next(2, 503, retry_after=2, path="events")
    started = time.monotonic()
    engine.emit_task("later", "task.received")
    assert runtime.flush(15)
    # Two answers of "Retry-After: 2": the uploader waited 2 s each time (its own backoff would
    # have waited 0.5 s, then 1 s), and the session survived.
    assert time.monotonic() - started >= 3.5
    assert brain.event_count() == 1 and brain.longpoll.refusals.count(("events", 503)) == 2
    assert not [e for e in runtime.trace if e["trigger"] == "session_lost"]
    runtime.stop()


def test_429_on_the_command_poll_is_waited_out_and_the_command_still_arrives(brain):
    runtime, engine = _running(brain)
    agent_id = runtime.lifecycle.session.info.binding.agent_id
    brain.longpoll.faults.fail_next(1, 429, retry_after=1, path="commands")
    record = brain.wait_for_command(brain.send_command("cancel_task", {"engine": "celery", "task_id": "t"},
                                                       agent_id=agent_id), timeout=15)
    assert record.status == "completed" and record.acked and engine.calls
    runtime.stop()


def test_a_slow_poll_never_delays_uploads(brain):
    runtime, engine = _running(brain)
    brain.longpoll.faults.poll_delay = 8.0  # the poll in flight now answers 8 s late, at best
    time.sleep(0.5)
    for i in range(50):
        engine.emit_task(f"s{i}", "task.received")
    assert runtime.flush(5), "uploads waited for the command poll"
    assert brain.event_count() == 50
    brain.longpoll.faults.poll_delay = 0.0
    runtime.stop()


@pytest.mark.parametrize("status, body, cls", [
    (401, b"", BackoffClass.AUTH),
    (403, b'{"error":"project_inactive"}', BackoffClass.AUTH),
    (403, b'{"error":"ip_denied"}', BackoffClass.AUTH),
    (403, b"forbidden by a proxy", BackoffClass.CONNECTION),
    (409, b"", BackoffClass.CONNECTION),
])
def test_refusals_map_to_backoff_classes(status, body, cls):
    assert classify_refusal(HttpAnswer(status, {}, body), "upload").backoff is cls


def test_the_probe_learns_the_ids_from_the_brain_and_commands_are_verified_first(brain):
    runtime, engine = _running(brain)
    info = runtime.lifecycle.session.info
    agent = brain.agents()[0]
    assert info.binding.agent_id == agent["agent_id"] and info.transport == "longpoll"
    assert len(info.session_id) == 22  # token_urlsafe(16): the nonce is the session binding
    brain.faults.send_to_agent("tampered")
    wait_for(lambda: any(e["trigger"] == "session_lost" for e in runtime.trace), what="the forged frame to end the session")
    assert engine.calls == []
    runtime.stop()
