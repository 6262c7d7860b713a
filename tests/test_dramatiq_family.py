"""The processes of one ``dramatiq`` command sharing one agent, when one of them dies.

Two commands in sequence on Redis, against the local brain, with one agent token and one Z4J_HOME
(the same deployment): the first loses its agent process (SIGKILL) while its workers go on; the
second adopts what the first left on disk, and then loses a worker process mid-stream.
"""

from __future__ import annotations

import os
import signal

import pytest
from dramatiq_app import harness

from z4j_bare.testing import LocalBrain

pytestmark = pytest.mark.timeout(240)
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
def setup(brain, tmp_path_factory):
    creds = brain.mint_agent("dramatiq-family")
    home = tmp_path_factory.mktemp("dq-family-home")
    return creds, home


def start(brain, app, setup, name, *extra_args):
    creds, home = setup
    command = harness.Command("dramatiq_app.redis_actors", [app.QUEUE],
                              {**creds.env(), "Z4J_HOME": str(home), "Z4J_STOP_TIMEOUT": "5"}, home / f"{name}.log",
                              extra_args=extra_args)
    before = online_pids(brain)
    try:
        harness.wait_for(lambda: brain.agent(creds.agent_id)["online"], 60, "the agent process to connect")
        def new_pids():
            new = online_pids(brain) - before
            return new if len(new) >= 2 else None

        command.pids = harness.wait_for(new_pids, 30, "worker.online from both new worker processes")
    except BaseException:
        command.stop()
        raise AssertionError(f"dramatiq command did not come up:\n{command.log()[-4000:]}") from None
    return command


def online_pids(brain):
    return {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.online")}


def succeeded(brain, message):
    return brain.wait_for_task_state(ENGINE, message.message_id, "SUCCESS", timeout=30)


def test_agent_process_killed_events_wait_on_disk_then_the_next_command_delivers_them(brain, app, setup):
    creds, home = setup
    first = start(brain, app, setup, "first")
    try:
        agent_pid = brain.agent(creds.agent_id)["hello"]["worker_pid"]
        os.kill(agent_pid, signal.SIGKILL)
        harness.wait_for(lambda: not brain.agent(creds.agent_id)["online"], 30, "the brain to see the agent gone")
        stranded = [app.actors["add"].send(i, i) for i in range(5)]
        client = app.broker.client
        harness.wait_for(lambda: client.llen(f"{harness.NS}:{app.QUEUE}") == 0
                         and client.hlen(f"{harness.NS}:{app.QUEUE}.msgs") == 0, 20, "the workers to run the messages")
    finally:
        assert first.stop() in (0, 1), first.log()[-3000:]
    # The workers ran the messages and wrote their events; nobody delivered them.
    assert all(brain.task(ENGINE, m.message_id) is None for m in stranded)
    assert harness.undelivered(home) > 0

    second = start(brain, app, setup, "second")
    try:
        for message in stranded:  # adopted from the first command's buffer and delivered
            assert succeeded(brain, message)["result"] == 2 * message.args[0]
    finally:
        second.stop()


def test_worker_processes_started_by_spawn_share_the_agent_too(brain, app, setup):
    """``dramatiq --use-spawn``: the children re-import everything and still find each other."""
    creds, home = setup
    command = start(brain, app, setup, "spawned", "--use-spawn")
    try:
        sent = [app.actors["add"].send(i, 2) for i in range(6)]
        for message in sent:
            succeeded(brain, message)
        assert brain.agent(creds.agent_id)["open_sessions"] == 1
    finally:
        assert command.stop() == 0, command.log()[-3000:]
    harness.assert_clean_log(command.log())
    offline = {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.offline")}
    assert command.pids <= offline
    assert harness.undelivered(home) == 0


def test_a_worker_process_dies_and_every_event_is_delivered(brain, app, setup):
    creds, home = setup
    command = start(brain, app, setup, "third")
    try:
        before = [app.actors["add"].send(i, 1) for i in range(10)]
        for message in before:
            succeeded(brain, message)
        victim = app.actors["die"].send()
        harness.wait_for(lambda: command.proc.poll() is not None, 60, "dramatiq to stop after its worker died")
    finally:
        code = command.stop()
    log = command.log()
    assert "exited unexpectedly" in log and code != 0, log[-3000:]
    harness.assert_clean_log(log)
    # The dead worker's events up to its death, and the survivor's shutdown, reached the brain in
    # the same session before the agent process exited.
    ev = {e["kind"]: e["data"] for e in brain.events(engine=ENGINE, task_id=victim.message_id)}
    assert {"task.received", "task.started"} <= set(ev)
    dead_pid = ev["task.started"]["pid"]
    offline = {e["data"]["pid"] for e in brain.events(engine=ENGINE, kind="worker.offline")}
    assert dead_pid in command.pids and command.pids - offline == {dead_pid}
    assert harness.undelivered(home) == 0
    assert not brain.agent(creds.agent_id)["online"]
