"""Dramatiq end to end on RabbitMQ: one real ``dramatiq`` command (2 worker processes and the z4j
agent process) against the local brain. Results and dramatiq-abort's events live in Redis."""

from __future__ import annotations

import time

import pika
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
    from dramatiq_app import rabbit_actors

    harness.flush_namespace()
    yield rabbit_actors
    harness.flush_namespace()
    rabbit_actors.broker.close()
    conn = pika.BlockingConnection(pika.URLParameters(harness.AMQP_URL))
    try:
        channel = conn.channel()
        for queue in (rabbit_actors.QUEUE, rabbit_actors.IDLE):
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cmd(brain, app, tmp_path_factory):
    creds = brain.mint_agent("dramatiq-rabbitmq")
    home = tmp_path_factory.mktemp("dq-rabbit-home")
    command = harness.Command("dramatiq_app.rabbit_actors", [app.QUEUE],
                              {**creds.env(), "Z4J_HOME": str(home), "Z4J_STOP_TIMEOUT": "5"}, home / "dramatiq.log")
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
    assert command.stop() == 0, command.log()[-4000:]
    harness.assert_clean_log(command.log())
    assert harness.undelivered(command.home) == 0


def run(brain, cmd, action, params, timeout=30):
    cid = brain.send_command(action, params, agent_id=cmd.creds.agent_id, engine=ENGINE)
    return brain.wait_for_command(cid, timeout=timeout)


def events(brain, task_id):
    return {e["kind"]: e["data"] for e in brain.events(engine=ENGINE, task_id=task_id)}


def state(brain, task_id, expected, timeout=30):
    return brain.wait_for_task_state(ENGINE, task_id, expected, timeout=timeout)


def counts(app, queue):
    return app.broker.get_queue_message_counts(queue)


def test_lifecycle_and_capabilities_on_rabbitmq(brain, app, cmd):
    caps = brain.agent(cmd.creds.agent_id)["hello"]["capabilities"]["dramatiq"]
    assert caps == ["bulk_retry", "cancel_task", "list_dead_letters", "purge_queue", "retry_by_reference_v1",
                    "retry_task", "submit_task"]
    a = app.actors
    ok = a["add"].send(2, 3, password="hunter2")
    bad = a["boom"].send(7)
    flaky = a["flaky"].send(1)
    slow = a["too_slow"].send()

    state(brain, ok.message_id, "SUCCESS")
    ev = events(brain, ok.message_id)
    assert ev["task.received"]["kwargs"]["password"] == "[REDACTED]" and ev["task.received"]["queue"] == app.QUEUE
    assert ev["task.succeeded"]["result"] == 5 and ev["task.started"]["worker"].startswith("dramatiq.")

    state(brain, bad.message_id, "FAILURE")
    failed = events(brain, bad.message_id)["task.failed"]
    assert failed["exception"] == "ValueError" and failed["dead_lettered"] is True
    harness.wait_for(lambda: counts(app, app.QUEUE)[2] >= 1, 10, "the dead letter in RabbitMQ's XQ")

    state(brain, flaky.message_id, "FAILURE")
    ev = events(brain, flaky.message_id)
    assert ev["task.retried"]["retry_count"] == 1 and ev["task.failed"]["retry_count"] == 1

    state(brain, slow.message_id, "FAILURE")
    assert events(brain, slow.message_id)["task.failed"]["reason"] == "time_limit"

    rec = run(brain, cmd, "dlq.list", {"queue": app.QUEUE})
    assert rec.status == "completed", rec
    assert rec.result["total"] == counts(app, app.QUEUE)[2] >= 3 and rec.result["entries"] == []
    assert "cannot be read without consuming" in rec.result["note"]
    rec = run(brain, cmd, "requeue_dead_letter", {"task_id": bad.message_id})
    assert rec.status == "failed" and "does not support" in rec.error


def test_retry_by_reference_from_the_agent_store(brain, app, cmd):
    key = "rabbit-retry"
    original = app.actors["count_and_fail"].send(key)
    state(brain, original.message_id, "FAILURE")
    rec = run(brain, cmd, "bulk_retry", {"filter": {"engine": ENGINE, "task_ids": [original.message_id]}, "max": 5})
    assert rec.status == "completed", rec
    assert rec.result["succeeded"] == 1
    new_id = rec.result["results"][0]["new_task_id"]
    harness.wait_for(lambda: harness.marker_value(key) == 2, 20, "the retried message to run")
    state(brain, new_id, "FAILURE")
    assert events(brain, new_id)["task.received"]["retry_of"] == original.message_id


def test_cancel_delayed_and_running_messages(brain, app, cmd):
    delayed = app.actors["count"].send_with_options(args=("rabbit-delayed",), delay=4000)
    harness.wait_for(lambda: counts(app, app.QUEUE)[1] == 0, 10, "a worker to take the delayed message")
    rec = run(brain, cmd, "cancel_task", {"task_id": delayed.message_id})
    assert rec.status == "completed", rec
    assert rec.result["cancel_pending"] is True and rec.result["cancelled"] is False
    state(brain, delayed.message_id, "REVOKED", timeout=20)
    assert events(brain, delayed.message_id)["task.revoked"]["reason"] == "skipped"
    time.sleep(0.5)
    assert harness.marker_value("rabbit-delayed") == 0
    assert counts(app, app.QUEUE)[:2] == (0, 0)

    running = app.actors["sleepy"].send(2.5, "rabbit-running")
    harness.wait_for(lambda: harness.marker_exists("rabbit-running:started"), 20, "the sleepy message to start")
    rec = run(brain, cmd, "cancel_task", {"task_id": running.message_id})
    assert rec.status == "failed" and "running" in rec.error
    state(brain, running.message_id, "SUCCESS")


def test_purge_idle_queue(brain, app, cmd):
    sent = [app.idle["count"].send(f"rabbit-purge-{i}") for i in range(3)]
    harness.wait_for(lambda: counts(app, app.IDLE)[0] == 3, 10, "three messages on the idle queue")
    key = decode_hmac_secret(cmd.creds.hmac_secret)
    rec = run(brain, cmd, "purge_queue", {"queue": app.IDLE, "confirm_token": purge_token(key, app.IDLE, 3)})
    assert rec.status == "completed", rec
    assert rec.result["purged"] == 3 and rec.result["depth_before"] == 3
    assert counts(app, app.IDLE)[0] == 0
    assert len(sent) == 3


def test_submit_and_reconcile(brain, app, cmd):
    rec = run(brain, cmd, "submit_task", {"name": "add", "args": [40, 2], "kwargs": {}})
    assert rec.status == "completed", rec
    new_id = rec.result["task_id"]
    state(brain, new_id, "SUCCESS")
    rec = run(brain, cmd, "reconcile_task", {"task_id": new_id})
    assert rec.result["engine_state"] == "success" and rec.result["source"] == "results_backend"
