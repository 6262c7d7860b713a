"""The Dramatiq adapter against the real z4j 1.13.0 brain.

One real ``dramatiq`` command (``-p 2 -t 2``, Redis broker, the test app ``tests/dramatiq_app``)
with the Z4J_* environment of a brain-minted agent: the z4j agent process it starts holds the
only session. Every assertion goes through the brain's HTTP API, plus Redis for what a command
really did. The brain 1.13 accepts engine ``dramatiq`` in hello; for retries it treats Dramatiq as
a non-native engine (``retry-task`` needs both override halves, HTTP 409 otherwise), so a
by-reference retry goes through ``bulk-retry`` and ``requeue-dead-letter``.
"""

from __future__ import annotations

import os
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dramatiq_app import harness

from .realbrain import BrainHTTPError, RealBrain
from .workers import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

PROJECT = "agent-dramatiq"
ENGINE = "dramatiq"
FINAL = ("success", "failure", "revoked", "rejected")
DRAMATIQ_CAPS = sorted(["bulk_retry", "cancel_task", "list_dead_letters", "purge_queue", "requeue_dead_letter",
                        "retry_by_reference_v1", "retry_task", "submit_task"])


@pytest.fixture(scope="module")
def app():
    from dramatiq_app import redis_actors

    harness.flush_namespace()
    yield redis_actors
    harness.flush_namespace()


@pytest.fixture(scope="module")
def command(real_brain: RealBrain, app, tmp_path_factory: pytest.TempPathFactory):
    creds = real_brain.mint_agent(project=PROJECT, name="dramatiq-command")
    home = tmp_path_factory.mktemp("dq-interop-home")
    env = {**creds.as_env(), "Z4J_HOME": str(home), "Z4J_AGENT_NAME": "dramatiq-interop",
           "Z4J_RESEND_AFTER_SECONDS": "15", "Z4J_STOP_TIMEOUT": "10",
           # the hostlog sitecustomize: these hosts log the agent at INFO, so its records can be read
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "hostlog"), str(harness.TESTS_DIR),
                                          str(harness.REPO_DIR)])}
    cmd = harness.Command("dramatiq_app.redis_actors", [app.QUEUE], env, home / "dramatiq.log")
    cmd.creds, cmd.home = creds, home
    try:
        wait_until(lambda: (real_brain.agent(PROJECT, creds.agent_id) or {}).get("state") == "online", 60,
                   lambda: f"agent never online:\n{cmd.log()[-4000:]}", poll=0.25)
    except BaseException:
        cmd.stop()
        raise
    yield cmd
    assert cmd.stop() == 0, cmd.log()[-4000:]
    harness.assert_clean_log(cmd.log())
    assert harness.undelivered(home) == 0


def rows(brain: RealBrain, ids: set[str], timeout: float) -> dict[str, dict]:
    seen: dict[str, dict] = {}

    def done() -> bool:
        seen.clear()
        seen.update({r["task_id"]: r for r in brain.tasks(PROJECT) if r["task_id"] in ids})
        return len(seen) == len(ids) and all(r["state"] in FINAL for r in seen.values())

    wait_until(done, timeout, lambda: f"{Counter(r['state'] for r in seen.values())}, {len(ids) - len(seen)} "
                                      "without a row", poll=1.0)
    return dict(seen)


def stored_events(brain: RealBrain, task_id: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"engine": ENGINE, "task_id": task_id, "limit": 500})
    return brain.request("GET", f"/projects/{PROJECT}/events?{query}")["items"]


def issue(brain: RealBrain, cmd, kind: str, body: dict[str, Any]) -> dict:
    record = brain.command(PROJECT, kind, {"agent_id": cmd.creds.agent_id, **body})
    assert record["status"] in ("pending", "dispatched"), record
    return brain.wait_command(PROJECT, record["id"], timeout=30)


def test_every_message_reaches_the_brain_with_its_final_state(real_brain: RealBrain, app, command) -> None:
    a = app.actors
    # Four one-second messages first: each worker process holds at most 4 (prefetch = 2 x
    # threads), so the other process must take part while the first is busy.
    plan = ([(a["sleepy"].send(1.0, f"it-share-{i}"), "success") for i in range(4)]
            + [(a["add"].send(i, 1), "success") for i in range(18)]
            + [(a["boom"].send(i), "failure") for i in range(6)]
            + [(a["flaky"].send(i), "failure") for i in range(6)])
    by_id = {m.message_id: (m, final) for m, final in plan}
    found = rows(real_brain, set(by_id), 120)
    workers = set()
    for message_id, row in found.items():
        message, final = by_id[message_id]
        assert row["state"] == final, row
        assert row["engine"] == ENGINE and row["name"] == message.actor_name and row["queue"] == app.QUEUE
        assert row["worker_name"].startswith("dramatiq.")
        workers.add(row["worker_name"])
        if message.actor_name == "sleepy":
            continue
        if message.actor_name == "add":
            assert row["result"] in (str(message.args[0] + 1), message.args[0] + 1) and row["args"] == [message.args[0], 1]
        elif message.actor_name == "boom":
            assert row["exception"] == "ValueError" and "Traceback" in row["traceback"]
        else:
            assert row["retry_count"] == 1, row
            assert "task.retried" in {e["kind"] for e in stored_events(real_brain, message_id)}
    assert len(workers) == 2, workers  # both worker processes ran messages, one session reported them

    agent = real_brain.agent(PROJECT, command.creds.agent_id)
    assert agent["state"] == "online" and agent["engine_adapters"] == [ENGINE]
    assert agent["capabilities"] == {ENGINE: DRAMATIQ_CAPS}
    assert agent["framework_adapter"] == "bare" and agent["host_name"] == "dramatiq-interop"
    log = command.log()
    assert log.count("runtime.session_open") == 1 and "runtime.session_failed" not in log, log[-3000:]


def test_retry_through_the_brain(real_brain: RealBrain, app, command) -> None:
    key = harness.NS + "-it-retry"
    original = app.actors["count_and_fail"].send(key)
    assert rows(real_brain, {original.message_id}, 30)[original.message_id]["state"] == "failure"

    # The brain 1.13 refuses a Dramatiq retry-task without both override halves ...
    with pytest.raises(BrainHTTPError) as refused:
        real_brain.command(PROJECT, "retry-task", {"agent_id": command.creds.agent_id, "engine": ENGINE,
                                                   "task_id": original.message_id})
    assert refused.value.status == 409

    # ... so retry by reference goes through bulk-retry (ids only; the agent has the message).
    record = issue(real_brain, command, "bulk-retry", {"filter": {"engine": ENGINE, "task_ids": [original.message_id]},
                                                      "max": 10})
    assert record["status"] == "completed", record
    assert record["result"]["succeeded"] == 1, record
    new_id = record["result"]["results"][0]["new_task_id"]
    wait_until(lambda: harness.marker_value(key) == 2, 30, "the retried copy to run", poll=0.1)
    new_row = rows(real_brain, {new_id}, 30)[new_id]
    assert new_row["name"] == "count_and_fail" and new_row["state"] == "failure"

    # retry-task with the operator's arguments: the copy runs with them.
    other = harness.NS + "-it-retry-override"
    record = issue(real_brain, command, "retry-task", {"engine": ENGINE, "task_id": original.message_id,
                                                       "override_args": [other], "override_kwargs": {}})
    assert record["status"] == "completed", record
    assert record["result"]["original_task_id"] == original.message_id
    wait_until(lambda: harness.marker_value(other) == 1, 30, "the overridden retry to run", poll=0.1)

    # requeue-dead-letter (Redis): the dead letter itself runs again, same message id.
    record = issue(real_brain, command, "requeue-dead-letter", {"engine": ENGINE, "task_id": original.message_id})
    assert record["status"] == "completed", record
    assert record["result"]["requeued"] is True
    wait_until(lambda: harness.marker_value(key) == 3, 30, "the requeued dead letter to run", poll=0.1)


def test_cancel_through_the_brain(real_brain: RealBrain, app, command, tmp_path: Path) -> None:
    client = app.broker.client
    waiting = app.idle["count"].send(harness.NS + "-it-cancel")
    record = issue(real_brain, command, "cancel-task", {"engine": ENGINE, "task_id": waiting.message_id})
    assert record["status"] == "completed", record
    assert record["result"]["cancelled"] is True and record["result"]["how"] == "removed from the queue"
    assert client.llen(f"{harness.NS}:{app.IDLE}") == 0
    row = rows(real_brain, {waiting.message_id}, 30)[waiting.message_id]
    assert row["state"] == "revoked" and row["name"] == "idle_count"

    running = app.actors["sleepy"].send(4, "it-running")
    wait_until(lambda: harness.marker_exists("it-running:started"), 20, "the sleepy message to start", poll=0.05)
    record = issue(real_brain, command, "cancel-task", {"engine": ENGINE, "task_id": running.message_id})
    assert record["status"] == "failed" and "running" in record["error"], record
    row = rows(real_brain, {running.message_id}, 30)[running.message_id]
    assert row["state"] == "success" and harness.marker_exists("it-running:done")
