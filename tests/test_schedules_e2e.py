"""Scheduler adapters in a real AgentRuntime against the local brain over real sockets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from celery.schedules import crontab
from celery_app.harness import BACKEND, REDIS_BROKER, Worker, unique_queue
from rq_app.harness import connection, flush_queues
from rq_scheduler import Scheduler
from schedule_harness import MemoryAdapter
from waiting import wait_for

from z4j_bare import RuntimeState, install_agent
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.schedulers.rq_inventory import PAUSED_SUFFIX
from z4j_bare.testing import LocalBrain
from z4j_celerybeat import CeleryBeatSchedulerAdapter
from z4j_rqscheduler import RqSchedulerAdapter

FAST = {"heartbeat_seconds": 1.0, "stop_timeout": 3.0, "backoff_max_connection": 1.0, "backoff_max_protocol": 1.0}


@pytest.fixture
def brain():
    with LocalBrain(heartbeat_interval=1) as b:
        yield b


def _runtime(creds, schedulers, engines=(), **options):
    return build_runtime(Config.resolve(**creds.kwargs(), **{**FAST, **options}), list(engines), schedulers=schedulers)


def test_install_agent_accepts_schedulers_without_engines_and_hello_advertises_them(brain):
    creds = brain.mint_agent()
    app = Celery("e2e-hello", set_as_current=False)
    app.conf.beat_schedule = {"tick": {"task": "z4jtest.noop", "schedule": 30.0}}
    runtime = install_agent(engines=[], schedulers=[CeleryBeatSchedulerAdapter(celery_app=app)], **creds.kwargs(), **FAST)
    wait_for(lambda: runtime.state is RuntimeState.RUNNING, what="RUNNING", timeout=15.0)
    hello = brain.wait_for_agent_online(creds.agent_id)["hello"]
    assert hello["engines"] == [] and hello["schedulers"] == ["celery-beat"]
    assert hello["capabilities"]["celery-beat"] == ["external_schedule_stable_snapshot_v1", "list", "trigger_now"]
    assert "external_schedule_protocol_v1" in hello["runtime_features"]
    [row] = brain.schedules.wait_for(1)
    assert row["name"] == "tick" and row["source"] == "celery-beat:static"
    assert brain.schedules.stream("celery-beat").phase == "ACTIVE"
    with pytest.raises(Exception, match="read-only"):
        brain.schedules.set_enabled(row["id"], False)
    runtime.stop()


def test_install_agent_refuses_no_adapters_and_non_adapters():
    with pytest.raises(ValueError, match="at least one adapter"):
        install_agent(engines=[], schedulers=[])
    with pytest.raises(ValueError, match="not a scheduler adapter"):
        install_agent(engines=[], schedulers=[object()])


def test_beat_trigger_from_the_brain_runs_the_task_on_a_real_worker(brain, tmp_path):
    creds = brain.mint_agent()
    queue = unique_queue("e2e-beat")
    app = Celery("e2e-beat", broker=REDIS_BROKER, backend=BACKEND, set_as_current=False)
    marker = f"beat-{uuid.uuid4().hex[:8]}"
    app.conf.beat_schedule = {"fail-hourly": {"task": "z4jtest.fail_once_by_key", "schedule": crontab(minute=0),
                                              "args": (marker, 7), "options": {"queue": queue}}}
    worker = Worker(queue=queue, broker=REDIS_BROKER, pool="solo", boot="none", home=str(tmp_path))
    runtime = _runtime(creds, [CeleryBeatSchedulerAdapter(celery_app=app)]).start()
    try:
        [row] = brain.schedules.wait_for(1)
        import redis

        redis.Redis.from_url(BACKEND).set(marker, "1")  # the task succeeds once this key exists
        command_id = brain.schedules.trigger(row["id"])
        assert brain.wait_for_command(command_id).status == "completed", brain.command(command_id)
        assert brain.schedules.wait_applied(command_id) == "APPLIED"
        task_id = brain.command(command_id).result["trigger_result"]["result"]["task_id"]
        assert app.AsyncResult(task_id).get(timeout=60) == 7, worker.log()
        assert brain.schedules.stream("celery-beat").accepted == 2  # activation + the confirming snapshot
    finally:
        runtime.stop()
        worker.stop()


def test_managed_rq_disable_from_the_brain_pauses_the_job_in_redis(brain):
    creds = brain.mint_agent()
    conn = connection()
    scheduler = Scheduler(queue_name="e2e-rq", connection=conn)
    scheduler.scheduled_jobs_key = f"rq:scheduler:scheduled_jobs:e2e-{uuid.uuid4().hex[:8]}"
    job = scheduler.schedule(datetime.now(UTC) + timedelta(minutes=10), func="rq_app.jobs.noop", interval=600)
    runtime = _runtime(creds, [RqSchedulerAdapter(scheduler=scheduler, managed=True)]).start()
    try:
        [row] = brain.schedules.wait_for(1, scheduler="rq-scheduler")
        command_id = brain.schedules.set_enabled(row["id"], False)
        assert brain.schedules.wait_applied(command_id) == "APPLIED", brain.command(command_id)
        brain.schedules.wait_for(1, is_enabled=False)
        assert conn.zscore(scheduler.scheduled_jobs_key, job.id) is None
        assert conn.zscore(scheduler.scheduled_jobs_key + PAUSED_SUFFIX, job.id) is not None
        command_id = brain.schedules.set_enabled(brain.schedules.get(row["name"])["id"], True)
        assert brain.schedules.wait_applied(command_id) == "APPLIED"
        assert conn.zscore(scheduler.scheduled_jobs_key, job.id) is not None
    finally:
        runtime.stop()
        conn.delete(scheduler.scheduled_jobs_key, scheduler.scheduled_jobs_key + PAUSED_SUFFIX, job.key)
        flush_queues(conn, ["e2e-rq"])


def test_a_trigger_of_a_schedule_with_large_args_is_confirmed(brain):
    """The receipt's observed configuration is the projection itself: args large enough for the
    redactor's work cap are cut once, the same way in the snapshot and in the receipt (a second
    pass over the receipt would cut them elsewhere and the brain would show UNCONFIRMED)."""
    creds = brain.mint_agent()
    adapter = MemoryAdapter()
    adapter.add("big", name="big-args", args=[f"{i:02d}" + "y" * 5000 for i in range(20)])
    runtime = _runtime(creds, [adapter]).start()
    try:
        [row] = brain.schedules.wait_for(1)
        assert 1 < len(row["args"]) < 20 and "truncated" in row["args"][-1]  # cut by the work cap, once
        command_id = brain.schedules.trigger(row["id"])
        assert brain.wait_for_command(command_id).status == "completed", brain.command(command_id)
        assert brain.schedules.wait_applied(command_id) == "APPLIED", brain.command(command_id).result
        assert adapter.triggered == ["big"]
    finally:
        runtime.stop()


def test_restart_gets_a_new_epoch_and_sequences_stay_consecutive(brain):
    creds = brain.mint_agent()
    adapter = MemoryAdapter()
    adapter.add("m1", name="nightly")
    runtime = _runtime(creds, [adapter]).start()
    brain.schedules.wait_for(1)
    brain.wait_for_command(brain.schedules.resync())
    # The snapshot goes out before the result, but the brain records a result at once and ingests
    # a batch on its own lane: the result may be seen first.
    wait_for(lambda: brain.schedules.stream("bars-memory").accepted >= 2, what="the resync's snapshot accepted", timeout=15.0)
    first = brain.schedules.stream("bars-memory")
    epoch, accepted = first.epoch_number, first.accepted
    assert accepted == 2
    runtime.stop()
    adapter.add("m2", name="hourly")
    runtime = _runtime(creds, [adapter]).start()
    try:
        brain.schedules.wait_for(2)
        stream = brain.schedules.stream("bars-memory")
        assert stream.epoch_number > epoch and stream.accepted == 1 and stream.phase == "ACTIVE"
        assert stream.faults == []
    finally:
        runtime.stop()


def _agent_proc(creds, home, **env):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    full = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    full.update(creds.env(), Z4J_HOME=str(home), PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]), **env)
    return subprocess.Popen([sys.executable, str(tests / "schedule_agent_proc.py")], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_between_reserving_and_sending_recovers_without_a_gap(brain, tmp_path):
    from z4j_bare.protocol.schedules import source_scope
    from z4j_bare.schedules.store import ScheduleStore

    creds = brain.mint_agent()
    home = tmp_path / "agent-home"
    proc = _agent_proc(creds, home, Z4J_TEST_KILL_AFTER_RESERVE="1")
    try:
        brain.schedules.wait_for(2)
        first = brain.schedules.stream("bars-memory")
        epoch = first.epoch_number
        brain.schedules.resync()
        assert proc.wait(30) == -9, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    [path] = list(home.glob("*.schedules.sqlite"))
    store = ScheduleStore(path)
    auth = store.authority("bars-memory", source_scope("bars-memory"))
    assert auth.last_sequence == 2 and auth.epoch_number == epoch  # reserved and written ...
    assert {f.sequence for f in store.pending("bars-memory", auth.epoch_uuid)} == {2}  # ... never sent
    store.close()
    assert brain.schedules.stream("bars-memory").accepted == 1
    # Like the real brain, a stream held by a session it still thinks alive is not handed to another
    # process: start the new one once the brain has seen the killed process's socket close.
    wait_for(lambda: not brain.agent(creds.agent_id)["online"], what="the brain to notice the dead session", timeout=15.0)
    proc = _agent_proc(creds, home)
    try:
        # (the resync the killed process never answered is re-driven to this one: sequence 2 may follow)
        wait_for(lambda: brain.schedules.stream("bars-memory").epoch_number > epoch
                 and brain.schedules.stream("bars-memory").accepted >= 1, timeout=60,
                 what="a new epoch accepted from sequence 1")
        stream = brain.schedules.stream("bars-memory")
        assert stream.phase == "ACTIVE" and stream.faults == [] and 1 in stream.applied
        seen = stream.accepted
        command_id = brain.schedules.resync()
        assert brain.wait_for_command(command_id).status == "completed"
        wait_for(lambda: brain.schedules.stream("bars-memory").accepted == seen + 1, what="the next sequence", timeout=15.0)
        store = ScheduleStore(path)
        assert all(f.epoch_uuid == stream.epoch_uuid for f in store.pending("bars-memory", auth.epoch_uuid)) \
            and store.pending("bars-memory", auth.epoch_uuid) == []  # the dead epoch's frame is gone
        store.close()
    finally:
        proc.kill()
        proc.wait(10)
