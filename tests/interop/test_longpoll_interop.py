"""HTTPS long-poll against the real z4j 1.13.0 brain: events, a retry command, hostile frames.

Brain 1.13 learns an agent's engines and capabilities from a WebSocket ``hello`` only; an agent
that never sent one is refused task commands (HTTP 422 to the operator). The agents here connect
once over WebSocket first, as one that moved behind an upgrade-refusing proxy would have.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from recording_engine import RecordingEngine
from waiting import wait_for

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.protocol import FrameType, SessionBinding, Signer, decode_hmac_secret, new_frame_id
from z4j_bare.transport import LongPollTransport
from z4j_bare.transport.longpoll import COMMANDS_PATH, EVENTS_PATH

from .lp_relay import LongPollRelay
from .realbrain import BrainCredentials, RealBrain
from .test_agent_interop import WORKER_AGENT_ENV, issue, wait_final, wait_online
from .workers import (
    CELERY_BACKEND,
    CeleryWorker,
    celery_producer,
    expected_counts,
    plan_celery_workload,
    publish,
    unique,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

PROJECT = "agent-longpoll"
TASKS = 60


def _kwargs(creds: BrainCredentials, **extra) -> dict:
    return dict(brain_url=creds.brain_url, token=creds.token, hmac_secret=creds.hmac_secret,
                project_id=creds.project_id, **extra)


@pytest.fixture(scope="module")
def lp_worker(real_brain: RealBrain, tmp_path_factory: pytest.TempPathFactory):
    creds = real_brain.mint_agent(PROJECT, "celery-longpoll")
    queue = unique("it-lp")
    env = {**creds.as_env(), **WORKER_AGENT_ENV, "Z4J_AGENT_NAME": "interop-longpoll"}
    first = CeleryWorker(queue=queue, home=tmp_path_factory.mktemp("lp-ws"), agent_env={**env, "Z4J_TRANSPORT": "ws"})
    try:
        wait_online(real_brain, creds, first)
    finally:
        first.stop()
    worker = CeleryWorker(queue=queue, home=tmp_path_factory.mktemp("lp"), loglevel="info",
                          agent_env={**env, "Z4J_TRANSPORT": "longpoll"})
    try:
        wait_for(lambda: "transport='longpoll'" in worker.log(10**6), 45, f"a long-poll session:\n{worker.log()}", interval=0.1)
        yield creds, worker
    finally:
        worker.stop()


def test_celery_worker_over_longpoll_reports_every_task(real_brain: RealBrain, lp_worker) -> None:
    creds, worker = lp_worker
    plan = plan_celery_workload(TASKS, unique("lp"))
    publish(celery_producer(), worker.queue, plan)
    rows = wait_final(real_brain, PROJECT, {t.task_id for t in plan}, 150, worker)
    assert sorted(r["state"] for r in rows.values()) == sorted(expected_counts(plan).elements())
    for task in plan:
        assert rows[task.task_id]["state"] == task.final and rows[task.task_id]["name"] == task.name
    log = worker.log(10**7)
    assert "transport='longpoll'" in log and "transport='ws'" not in log
    assert real_brain.agent(PROJECT, creds.agent_id)["state"] == "online"  # liveness from uploads


def test_retry_command_over_longpoll_reruns_a_failed_task(real_brain: RealBrain, lp_worker) -> None:
    creds, worker = lp_worker
    app = celery_producer()
    markers = redis.Redis.from_url(CELERY_BACKEND)
    key, task_id = unique("lp-marker"), unique("lp-retry-me")
    app.send_task("interop.fail_until_marker", args=(key,), task_id=task_id, queue=worker.queue)
    assert wait_final(real_brain, PROJECT, {task_id}, 60, worker)[task_id]["state"] == "failure"
    markers.set(key, "1", ex=600)
    markers.expire(f"runs:{key}", 600)
    record = issue(real_brain, PROJECT, "retry-task", creds, "celery", task_id)
    assert record["status"] == "completed", record
    new_id = record["result"]["new_task_id"]
    assert app.AsyncResult(new_id).get(timeout=30) == f"ran with {key}"
    assert wait_final(real_brain, PROJECT, {new_id}, 60)[new_id]["state"] == "success"
    markers.delete(key, f"runs:{key}")


# -- hostile frames: from us to the brain ----------------------------------------------------


def _established(creds: BrainCredentials) -> tuple[LongPollTransport, SessionBinding]:
    lp = LongPollTransport(creds.brain_url, creds.token, decode_hmac_secret(creds.hmac_secret), timeout=10)
    lp.open()
    info = lp.establish({"runtime_features": [], "capabilities": {}}, 10)
    return lp, info.binding


def _post(lp: LongPollTransport, frames: list[bytes]):
    body = json.dumps({"frames": [f.decode() for f in frames]}).encode()
    return lp._http.request("POST", EVENTS_PATH, lp.headers(**{"Content-Type": "application/json"}), body)


@pytest.fixture
def lp_creds(real_brain: RealBrain) -> BrainCredentials:
    return real_brain.mint_agent(PROJECT, unique("lp-agent"))


@pytest.mark.parametrize("kind", ["tampered", "replayed", "stale"])
def test_the_brain_invalidates_a_session_that_uploads_a_hostile_frame(lp_creds: BrainCredentials, kind: str) -> None:
    brain_creds = lp_creds
    lp, binding = _established(brain_creds)
    key = decode_hmac_secret(brain_creds.hmac_secret)
    try:
        good = Signer(key, binding).sign(FrameType.HEARTBEAT, new_frame_id("hb_"), {"buffer_size": 0, "adapter_health": {}})
        if kind == "tampered":
            frames = [good.replace(b'"buffer_size":0', b'"buffer_size":7')]
        elif kind == "replayed":
            assert _post(lp, [good]).status == 200
            frames = [good]
        else:
            old = (datetime.now(UTC) - timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            frames = [Signer(key, binding, clock=lambda: old).sign(FrameType.HEARTBEAT, new_frame_id("hb_"),
                                                                    {"buffer_size": 0, "adapter_health": {}})]
        assert _post(lp, frames).status == 409
        # The nonce stays invalid (what our agent answers with a fresh one) ...
        answer = lp._http.request("GET", f"{COMMANDS_PATH}?wait=0&max_frames=1", lp.headers())
        assert answer.status == 409
    finally:
        lp.close()
    # ... and a fresh nonce is a working session again.
    lp, binding = _established(brain_creds)
    try:
        ok = Signer(key, binding).sign(FrameType.HEARTBEAT, new_frame_id("hb_"), {"buffer_size": 0, "adapter_health": {}})
        answer = _post(lp, [ok])
        assert answer.status == 200 and answer.json()["accepted"] == 1
    finally:
        lp.close()


# -- hostile frames: from the brain to us ----------------------------------------------------


@pytest.mark.parametrize("kind", ["tampered", "replayed", "stale"])
def test_a_command_edited_on_the_way_is_never_executed(real_brain: RealBrain, lp_creds: BrainCredentials,
                                                       tmp_path: Path, kind: str) -> None:
    brain_creds = lp_creds
    ws = build_runtime(Config.resolve(**_kwargs(brain_creds, transport="ws", home=tmp_path / "ws")),
                       [RecordingEngine()])
    ws.start()
    wait_for(lambda: ws.state is RuntimeState.RUNNING, 30, "a WebSocket session (for the hello)", interval=0.1)
    ws.stop(5)
    relay = LongPollRelay(brain_creds.brain_url, brain_creds.hmac_secret, kind)
    engine = RecordingEngine()
    options = {**_kwargs(brain_creds, transport="longpoll", home=tmp_path / "lp", backoff_max_connection=1.0),
               "brain_url": relay.url}
    runtime = build_runtime(Config.resolve(**options), [engine])
    try:
        runtime.start()
        wait_for(lambda: runtime.state is RuntimeState.RUNNING, 30, "a long-poll session through the relay", interval=0.1)
        first = runtime.health()["session_id"]
        # Long-poll liveness comes from authenticated uploads: wait for the first heartbeat's.
        wait_for(lambda: (real_brain.agent(brain_creds.project_id, brain_creds.agent_id) or {}).get("state") == "online",
                 30, "the brain to see the long-poll agent online", interval=0.1)
        real_brain.command(brain_creds.project_id, "cancel-task",
                           {"agent_id": brain_creds.agent_id, "engine": "celery", "task_id": "lp-hostile"})
        wait_for(lambda: relay.edited, 40, "the relay to edit the command", interval=0.1)
        wait_for(lambda: runtime.health()["session_id"] not in (None, first), 30, "a new session (fresh nonce)", interval=0.1)
        lost = [e for e in runtime.trace if e["trigger"] == "session_lost"][-1]
        assert lost["reason"].startswith("inbound frame rejected"), lost
        calls = [params.get("task_id") for action, params in engine.calls]
        assert "forged-by-the-relay" not in calls
        # A replayed command runs once at most (the first copy is the brain's own); the others never.
        assert calls == (["lp-hostile"] if kind == "replayed" else []), calls
        # The agent is healthy afterwards: a genuine command through the same relay completes.
        record = issue(real_brain, brain_creds.project_id, "cancel-task", brain_creds, "celery", "lp-after")
        assert record["status"] == "completed", record
    finally:
        runtime.stop(5)
        relay.close()
