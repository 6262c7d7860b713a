"""Scheduler adapters against the real z4j 1.13.0 brain: listed, triggered and disabled through its HTTP API.

One agent in this process hosts a static celery beat schedule and a managed rq-scheduler (no
engine at all, like a beat process). The brain activates both streams from the hello; the test
then drives the brain's Schedules API and checks what really happened: the Celery task ran on
a real worker, the rq-scheduler job moved to the paused set in Redis.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery
from celery.schedules import crontab
from celery_app.harness import BACKEND, REDIS_BROKER, Worker, unique_queue
from rq_scheduler import Scheduler
from waiting import wait_for

from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.schedulers.rq_inventory import PAUSED_SUFFIX
from z4j_celerybeat import CeleryBeatSchedulerAdapter
from z4j_rqscheduler import RqSchedulerAdapter

from .realbrain import BrainHTTPError, RealBrain
from .workers import RQ_REDIS_URL

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

PROJECT = "agent-schedules"


def _schedules(brain: RealBrain) -> list[dict]:
    return brain.request("GET", f"/projects/{PROJECT}/schedules?limit=500")["items"]


def _mutate_command(brain: RealBrain, before: set[str]) -> dict:
    def newest():
        items = brain.request("GET", f"/projects/{PROJECT}/commands?limit=50")
        items = items["items"] if isinstance(items, dict) else items
        fresh = [c for c in items if c["action"] == "schedule.external.mutate" and c["id"] not in before]
        return fresh[0] if fresh else None

    return wait_for(newest, 30, "the brain's schedule.external.mutate command", interval=0.25)


def _mutate_ids(brain: RealBrain) -> set[str]:
    items = brain.request("GET", f"/projects/{PROJECT}/commands?limit=50")
    items = items["items"] if isinstance(items, dict) else items
    return {c["id"] for c in items if c["action"] == "schedule.external.mutate"}


def _native_status(brain: RealBrain, command_id: str) -> str:
    def applied():
        status = brain.request("GET", f"/projects/{PROJECT}/schedules/native-operations/{command_id}")["status"]
        return status if status != "PENDING" else None

    return wait_for(applied, 60, "the native operation to leave PENDING", interval=0.25)


def test_schedules_listed_triggered_and_disabled_through_the_brain(real_brain: RealBrain, tmp_path):
    creds = real_brain.mint_agent(project=PROJECT, name="beat-and-rq")
    queue = unique_queue("it-beat")
    marker = f"it-{uuid.uuid4().hex[:8]}"
    app = Celery("it-beat", broker=REDIS_BROKER, backend=BACKEND, set_as_current=False)
    app.conf.beat_schedule = {
        "it-add-hourly": {"task": "z4jtest.fail_once_by_key", "schedule": crontab(minute=7, hour="*/6"),
                          "args": (marker, 5), "options": {"queue": queue}},
        "it-ping-45s": {"task": "z4jtest.noop", "schedule": timedelta(seconds=45)},
    }
    conn = redis.Redis.from_url(RQ_REDIS_URL)
    scheduler = Scheduler(queue_name="it-sched", connection=conn)
    scheduler.scheduled_jobs_key = f"rq:scheduler:scheduled_jobs:it-{uuid.uuid4().hex[:8]}"
    job = scheduler.schedule(datetime.now(UTC) + timedelta(minutes=10), func="rq_app.jobs.noop", interval=600)
    worker = Worker(queue=queue, broker=REDIS_BROKER, pool="solo", boot="none", home=str(tmp_path))
    config = Config.resolve(brain_url=creds.brain_url, token=creds.token, hmac_secret=creds.hmac_secret,
                            project_id=creds.project_id, heartbeat_seconds=2.0, stop_timeout=5.0)
    runtime = build_runtime(config, [], schedulers=[
        CeleryBeatSchedulerAdapter(celery_app=app), RqSchedulerAdapter(scheduler=scheduler, managed=True)]).start()
    try:
        rows = wait_for(lambda: _schedules(real_brain) if len(_schedules(real_brain)) == 3 else None, 60,
                        "3 schedules listed", interval=0.25)
        by_name = {r["name"]: r for r in rows}
        beat = by_name["it-add-hourly"]
        assert beat["source"] == "celery-beat:static" and beat["kind"] == "cron" and beat["expression"] == "7 */6 * * *"
        assert by_name["it-ping-45s"]["expression"] == "45"
        rq_row = next(r for r in rows if r["scheduler"] == "rq-scheduler")
        assert rq_row["external_id"] == job.id and rq_row["is_enabled"] is True
        caps = real_brain.request("GET", f"/projects/{PROJECT}/schedules/native-capabilities")
        assert "trigger_now" in caps["celery-beat"] and "disable" in caps["rq-scheduler"]

        # trigger the beat row: command completed, operation APPLIED, the task really ran
        redis.Redis.from_url(BACKEND).set(marker, "1")
        before = _mutate_ids(real_brain)
        real_brain.request("POST", f"/projects/{PROJECT}/schedules/{beat['id']}/trigger", {})
        command = _mutate_command(real_brain, before)
        assert _native_status(real_brain, command["id"]) == "APPLIED"
        done = real_brain.wait_command(PROJECT, command["id"])
        assert done["status"] == "completed", done
        task_id = done["result"]["trigger_result"]["result"]["task_id"]
        assert app.AsyncResult(task_id).get(timeout=60) == 5, worker.log()

        # a static row cannot be disabled: the brain says so itself
        with pytest.raises(BrainHTTPError) as refused:
            real_brain.request("POST", f"/projects/{PROJECT}/schedules/{beat['id']}/disable", {})
        assert refused.value.status == 409 and "read-only" in str(refused.value)

        # disable the managed rq-scheduler row: the brain shows it disabled, Redis has it paused
        before = _mutate_ids(real_brain)
        real_brain.request("POST", f"/projects/{PROJECT}/schedules/{rq_row['id']}/disable", {})
        command = _mutate_command(real_brain, before)
        assert _native_status(real_brain, command["id"]) == "APPLIED"
        wait_for(lambda: real_brain.request("GET", f"/projects/{PROJECT}/schedules/{rq_row['id']}")["is_enabled"] is False,
                 30, "the rq row disabled in the brain", interval=0.25)
        assert conn.zscore(scheduler.scheduled_jobs_key, job.id) is None
        assert conn.zscore(scheduler.scheduled_jobs_key + PAUSED_SUFFIX, job.id) is not None
        assert job.id not in [j.id for j in scheduler.get_jobs()]
    finally:
        runtime.stop()
        worker.stop()
        conn.delete(scheduler.scheduled_jobs_key, scheduler.scheduled_jobs_key + PAUSED_SUFFIX, job.key)
        conn.close()


def test_control_of_a_scheduler_without_native_writes(real_brain: RealBrain):
    """The brain's control path (set-to-state, no compare-and-set): disable, then enable again."""
    from schedule_harness import MemoryAdapter

    creds = real_brain.mint_agent(project=PROJECT, name="memory-control")
    adapter = MemoryAdapter(name="it-memory")
    adapter.add("mem-1", name="it-memory-nightly", args=["memory"], source="it-memory:test")
    config = Config.resolve(brain_url=creds.brain_url, token=creds.token, hmac_secret=creds.hmac_secret,
                            project_id=creds.project_id, heartbeat_seconds=2.0, stop_timeout=5.0)
    runtime = build_runtime(config, [], schedulers=[adapter]).start()
    try:
        row = wait_for(lambda: next((r for r in _schedules(real_brain) if r["scheduler"] == "it-memory"), None), 60,
                       "the memory schedule listed", interval=0.25)
        for enabled in (False, True):
            action = "enable" if enabled else "disable"
            real_brain.request("POST", f"/projects/{PROJECT}/schedules/{row['id']}/{action}", {})
            wait_for(lambda e=enabled: real_brain.request("GET", f"/projects/{PROJECT}/schedules/{row['id']}")["is_enabled"]
                     is e, 30, f"the row {action}d in the brain", interval=0.25)
            assert adapter.rows["mem-1"].is_enabled is enabled
        items = real_brain.request("GET", f"/projects/{PROJECT}/commands?limit=50")
        items = items["items"] if isinstance(items, dict) else items
        controls = [c for c in items if c["action"] == "schedule.external.control"]
        assert len(controls) == 2 and all(c["status"] == "completed" for c in controls), controls
    finally:
        runtime.stop()


def test_sigkill_after_reserving_a_sequence_then_restart_is_accepted(real_brain: RealBrain, tmp_path):
    """The agent dies right after committing a snapshot's sequence and frames, before sending them;
    the restarted agent gets a new epoch, and the brain accepts its stream (trigger APPLIED)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    creds = real_brain.mint_agent(project=PROJECT, name="sigkill-restart")
    tests = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_") or k.startswith("Z4J_TEST_")}
    env.update(Z4J_BRAIN_URL=creds.brain_url, Z4J_TOKEN=creds.token, Z4J_HMAC_SECRET=creds.hmac_secret,
               Z4J_PROJECT_ID=creds.project_id, Z4J_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]))

    def start(**extra):
        return subprocess.Popen([sys.executable, str(tests / "schedule_agent_proc.py")], env={**env, **extra},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def mine():
        return [r for r in _schedules(real_brain) if r["scheduler"] == "bars-memory"]

    proc = start(Z4J_TEST_KILL_AFTER_RESERVE="1")
    try:
        wait_for(lambda: len(mine()) == 2, 60, "the first process's 2 schedules", interval=0.25)
        try:  # documented to answer 500 on SQLite after it issued the command (schedules.md 9 item 10)
            real_brain.request("POST", f"/projects/{PROJECT}/schedules:resync", {})
        except BrainHTTPError as exc:
            assert exc.status == 500, exc
        assert proc.wait(60) == -9, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    proc = start()
    try:
        row = wait_for(lambda: next((r for r in mine() if r["name"] == "nightly"), None), 60, "the row after restart", interval=0.25)
        def triggered():
            before = _mutate_ids(real_brain)
            try:
                real_brain.request("POST", f"/projects/{PROJECT}/schedules/{row['id']}/trigger", {})
            except BrainHTTPError as exc:  # 409 until the new epoch's stream is active
                return None if exc.status == 409 else exc
            return _mutate_command(real_brain, before)

        command = wait_for(triggered, 60, "a trigger accepted by the restarted agent's stream", interval=0.25)
        assert _native_status(real_brain, command["id"]) == "APPLIED"
    finally:
        proc.kill()
        proc.wait(10)
