"""Dramatiq end to end on Redis: one real ``dramatiq`` command (supervisor, 2 worker processes,
the z4j agent process) against the local brain, for the whole module.

Messages are sent from this process (no agent here: the middleware does nothing in a process
without one); every assertion goes through the brain, plus Redis for what a command really did.
"""

from __future__ import annotations

import time

import pytest
from dramatiq_app import harness

from z4j_bare.protocol import decode_hmac_secret, purge_token
from z4j_bare.testing import LocalBrain

pytestmark = pytest.mark.timeout(180)
ENGINE = "dramatiq"


@pytest.fixture(scope="module")
def brain():
    with LocalBrain() as b:
        yield b


@pytest.fixture(scope="module")
def app():
    from dramatiq_app import redis_actors

    harness.flush_namespace()
    yield redis_actors
    harness.flush_namespace()


@pytest.fixture(scope="module")
def cmd(brain, app, tmp_path_factory):
    creds = brain.mint_agent("dramatiq-redis")
    home = tmp_path_factory.mktemp("dq-redis-home")
    command = harness.Command("dramatiq_app.redis_actors", [app.QUEUE],
                              {**creds.env(), "Z4J_HOME": str(home), "Z4J_STOP_TIMEOUT": "5"},
                              home / "dramatiq.log")
    command.creds = creds
    command.home = home
    try:
        brain.wait_for_agent_online(creds.agent_id, timeout=60)
        harness.wait_for(lambda: len(brain.events(engine=ENGINE, kind="worker.online")) >= 2, 30,
                         "worker.online from both worker processes")
    except BaseException:
        command.stop()
        raise AssertionError(f"dramatiq command did not come up:\n{command.log()[-4000:]}") from None
    yield command
    code = command.stop()
    assert code == 0, command.log()[-4000:]
    harness.assert_clean_log(command.log())
    # The supervisor stops relaying its children's logs once the workers are gone, so the agent
    # process's last lines are not in the log: the drained buffer and the brain show it.
    offline = {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.offline")}
    online = {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.online")}
    assert offline == online and len(online) == 2
    assert harness.undelivered(command.home) == 0


def run(brain, cmd, action, params, timeout=30):
    cid = brain.send_command(action, params, agent_id=cmd.creds.agent_id, engine=ENGINE)
    return brain.wait_for_command(cid, timeout=timeout)


def events(brain, task_id):
    return {e["kind"]: e["data"] for e in brain.events(engine=ENGINE, task_id=task_id)}


def state(brain, task_id, expected, timeout=30):
    return brain.wait_for_task_state(ENGINE, task_id, expected, timeout=timeout)


def test_every_lifecycle_kind_with_its_fields(brain, app, cmd):
    a = app.actors
    ok = a["add"].send(2, 3, password="hunter2")
    bad = a["boom"].send(7)
    flaky = a["flaky"].send(1)
    once = a["fail_once"].send("once-" + ok.message_id)
    slow = a["too_slow"].send()
    aged = a["aged"].send()

    row = state(brain, ok.message_id, "SUCCESS")
    ev = events(brain, ok.message_id)
    assert ev["task.received"]["task_name"] == "add" and ev["task.received"]["queue"] == app.QUEUE
    assert ev["task.received"]["args"] == [2, 3] and ev["task.received"]["kwargs"]["password"] == "[REDACTED]"
    worker = ev["task.started"]["worker"]
    assert worker.startswith("dramatiq.") and ev["task.succeeded"]["worker"] == worker
    assert ev["task.started"]["attempt"] == 1 and ev["task.started"]["pid"] > 0
    assert ev["task.succeeded"]["result"] == 5 and isinstance(ev["task.succeeded"]["runtime_ms"], int)
    assert row["task_name"] == "add"

    state(brain, bad.message_id, "FAILURE")
    failed = events(brain, bad.message_id)["task.failed"]
    assert failed["exception"] == "ValueError" and failed["exception_message"] == "boom 7"
    assert "Traceback" in failed["traceback"] and failed["dead_lettered"] is True
    assert failed["reason"] == "exception" and "retry_count" not in failed
    assert app.broker.client.zcard(f"{harness.NS}:{app.QUEUE}.XQ") >= 1

    state(brain, flaky.message_id, "FAILURE")
    kinds = [e["kind"] for e in brain.events(engine=ENGINE, task_id=flaky.message_id)]
    assert kinds.count("task.retried") == 1 and kinds.index("task.retried") < kinds.index("task.failed")
    ev = events(brain, flaky.message_id)
    assert ev["task.retried"]["retry_count"] == 1 and 50 <= ev["task.retried"]["delay_ms"] <= 300
    assert ev["task.retried"]["exception"] == "RuntimeError" and ev["task.retried"]["eta"]
    assert ev["task.failed"]["retry_count"] == 1

    row = state(brain, once.message_id, "SUCCESS")
    assert "task.retried" in events(brain, once.message_id) and row["retry_count"] == 1

    state(brain, slow.message_id, "FAILURE")
    limited = events(brain, slow.message_id)["task.failed"]
    assert limited["reason"] == "time_limit" and limited["exception"] == "TimeLimitExceeded"

    state(brain, aged.message_id, "FAILURE")
    ev = events(brain, aged.message_id)
    assert ev["task.failed"]["reason"] == "age_limit" and "task.started" not in ev
    assert harness.marker_value("aged-ran") == 0


def test_two_worker_processes_share_one_session(brain, app, cmd):
    # Each process holds at most 4 messages (prefetch = 2 x threads): with 8 one-second messages
    # the second process must take the rest while the first is busy.
    keys = [f"share-{i}" for i in range(8)]
    sent = [app.actors["sleepy"].send(1.0, key) for key in keys]
    for message in sent:
        state(brain, message.message_id, "SUCCESS")
    pids = {events(brain, m.message_id)["task.started"]["pid"] for m in sent}
    assert len(pids) == 2, f"expected both worker processes to run messages, got {pids}"
    online = {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.online")}
    assert pids <= online
    agent = brain.agent(cmd.creds.agent_id)
    assert agent["open_sessions"] == 1 and agent["online"]
    assert agent["hello"]["engines"] == ["dramatiq"]
    assert agent["hello"]["worker_pid"] not in online  # the session is the agent process's
    health = {k: v for k, v in agent["last_heartbeat"]["adapter_health"].items() if k.startswith("dramatiq.")}
    assert health["dramatiq.broker_type"] == "redis" and health["dramatiq.broker_connected"] == "True"
    assert app.QUEUE in health["dramatiq.queue_depths"]


def test_retry_by_reference_sends_a_linked_copy_that_runs(brain, app, cmd):
    key = "retry-ref"
    original = app.actors["count_and_fail"].send(key)
    state(brain, original.message_id, "FAILURE")
    assert harness.marker_value(key) == 1

    rec = run(brain, cmd, "retry_task", {"task_id": original.message_id, "task_name": "count_and_fail",
                                         "args": None, "kwargs": None})
    assert rec.status == "completed", rec
    new_id = rec.result["new_task_id"]
    assert new_id != original.message_id and rec.result["source"] == "dead_letter_queue"  # Redis: as sent
    assert rec.result["original_task_id"] == original.message_id and rec.result["queue"] == app.QUEUE
    harness.wait_for(lambda: harness.marker_value(key) == 2, 20, "the retried message to run")
    state(brain, new_id, "FAILURE")
    assert events(brain, new_id)["task.received"]["retry_of"] == original.message_id

    rec = run(brain, cmd, "retry_task", {"task_id": original.message_id, "override_args": ["retry-ref-2"],
                                         "override_kwargs": {}})
    assert rec.status == "completed", rec
    harness.wait_for(lambda: harness.marker_value("retry-ref-2") == 1, 20, "the overridden retry to run")

    rec = run(brain, cmd, "retry_task", {"task_id": "no-such-message"})
    assert rec.status == "failed" and "not known to this agent" in rec.error
    rec = run(brain, cmd, "retry_task", {"task_id": original.message_id, "task_name": "add"})
    assert rec.status == "failed" and "refusing to guess" in rec.error


def test_cancel_waiting_running_and_delayed_messages(brain, app, cmd):
    client = app.broker.client
    waiting = app.idle["count"].send("cancel-waiting")
    rec = run(brain, cmd, "cancel_task", {"task_id": waiting.message_id})
    assert rec.status == "completed", rec
    assert rec.result["cancelled"] is True and rec.result["how"] == "removed from the queue"
    assert client.llen(f"{harness.NS}:{app.IDLE}") == 0
    assert not client.hlen(f"{harness.NS}:{app.IDLE}.msgs")
    state(brain, waiting.message_id, "REVOKED")

    running = app.actors["sleepy"].send(2.5, "cancel-running")
    harness.wait_for(lambda: harness.marker_exists("cancel-running:started"), 20, "the sleepy message to start")
    rec = run(brain, cmd, "cancel_task", {"task_id": running.message_id})
    assert rec.status == "failed" and "running" in rec.error and rec.result["cancelled"] is False
    state(brain, running.message_id, "SUCCESS")
    assert harness.marker_exists("cancel-running:done")

    delayed = app.actors["count"].send_with_options(args=("cancel-delayed",), delay=4000)
    dq = f"{harness.NS}:{app.QUEUE}.DQ"
    harness.wait_for(lambda: client.llen(dq) == 0, 10, "a worker to take the delayed message into memory")
    rec = run(brain, cmd, "cancel_task", {"task_id": delayed.message_id})
    assert rec.status == "completed", rec
    assert rec.result["cancel_pending"] is True and rec.result["cancelled"] is False
    state(brain, delayed.message_id, "REVOKED", timeout=20)  # the worker skipped it when it fell due
    assert events(brain, delayed.message_id)["task.revoked"]["reason"] == "skipped"
    time.sleep(0.5)
    assert harness.marker_value("cancel-delayed") == 0

    rec = run(brain, cmd, "cancel_task", {"task_id": running.message_id})
    assert rec.status == "failed" and "nothing to cancel" in rec.error and rec.result["cancelled"] is False


def test_purge_with_confirm_token(brain, app, cmd):
    client = app.broker.client
    sent = [app.idle["count"].send(f"purge-{i}") for i in range(3)]
    key = decode_hmac_secret(cmd.creds.hmac_secret)
    rec = run(brain, cmd, "purge_queue", {"queue": app.IDLE, "confirm_token": purge_token(key, app.IDLE, 2)})
    assert rec.status == "failed" and client.llen(f"{harness.NS}:{app.IDLE}") == 3
    rec = run(brain, cmd, "purge_queue", {"queue": app.IDLE, "confirm_token": purge_token(key, app.IDLE, 3)})
    assert rec.status == "completed", rec
    assert rec.result["purged"] == 3 and rec.result["depth_before"] == 3
    assert client.llen(f"{harness.NS}:{app.IDLE}") == 0 and not client.hlen(f"{harness.NS}:{app.IDLE}.msgs")
    for message in sent:
        assert state(brain, message.message_id, "REVOKED")["task_name"] == "idle_count"


def test_dead_letters_requeue_and_reconcile(brain, app, cmd):
    key = "dlq-requeue"
    dead = app.actors["count_and_fail"].send(key)
    state(brain, dead.message_id, "FAILURE")
    rec = run(brain, cmd, "dlq.list", {"queue": app.QUEUE, "limit": 200})
    assert rec.status == "completed", rec
    page = rec.result
    assert page["engine"] == ENGINE and page["total"] >= 1
    entry = next(e for e in page["entries"] if e["task_id"] == dead.message_id)
    assert entry["task_name"] == "count_and_fail" and entry["queue"] == app.QUEUE and entry["failed_at"]
    assert entry["error_excerpt"] == f"ValueError: failed run of {key}" and entry["attempts"] == 1
    small = run(brain, cmd, "dlq.list", {"queue": app.QUEUE, "limit": 1}).result
    assert len(small["entries"]) == 1 and (small["next_cursor"] or page["total"] == 1)

    rec = run(brain, cmd, "reconcile_task", {"task_id": dead.message_id})
    assert rec.result["engine_state"] == "failure" and rec.result["source"] == "dead_letter_queue"

    rec = run(brain, cmd, "requeue_dead_letter", {"task_id": dead.message_id})
    assert rec.status == "completed", rec
    assert rec.result == {"task_id": dead.message_id, "queue": app.QUEUE, "source": "dead_letter_queue",
                          "requeued": True}
    harness.wait_for(lambda: harness.marker_value(key) == 2, 20, "the requeued message to run again")

    done = app.actors["add"].send(1, 1)
    state(brain, done.message_id, "SUCCESS")
    rec = run(brain, cmd, "reconcile_task", {"task_id": done.message_id})
    assert rec.result["engine_state"] == "success" and rec.result["source"] == "results_backend"
    waiting = app.idle["count"].send("reconcile-waiting")
    rec = run(brain, cmd, "reconcile_task", {"task_id": waiting.message_id})
    assert rec.result["engine_state"] == "pending" and rec.result["source"] == "broker"


def test_submit_task_by_actor_name(brain, app, cmd):
    rec = run(brain, cmd, "submit_task", {"name": "add", "args": [20, 22], "kwargs": {}})
    assert rec.status == "completed", rec
    assert rec.result["queue"] == app.QUEUE and rec.result["engine"] == ENGINE
    new_id = rec.result["task_id"]
    state(brain, new_id, "SUCCESS")
    assert events(brain, new_id)["task.succeeded"]["result"] == 42
    rec = run(brain, cmd, "submit_task", {"name": "no_such_actor", "args": [], "kwargs": {}})
    assert rec.status == "failed" and "no actor named" in rec.error
