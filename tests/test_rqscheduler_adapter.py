"""rq-scheduler adapter on a real Redis: the row vectors, trigger run by a real worker, managed pause/resume
that real producers honour, compare-and-set refusals, and plain mode never deleting on disable."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job
from rq_app.harness import REDIS_URL, REPO_DIR, connection, flush_queues, run_burst, unique_queue, worker_env
from rq_scheduler import Scheduler

from z4j_bare.protocol.schedules import CAP_MUTATION, normalize_external_schedule
from z4j_bare.schedulers.rq_inventory import PAUSED_SUFFIX, source_config
from z4j_bare.schedules.model import ConflictError
from z4j_rqscheduler import RqSchedulerAdapter

V = json.loads((Path(__file__).parent / "schedule_vectors.json").read_text("utf-8"))
DEFAULT_KEY = Scheduler.scheduled_jobs_key


@pytest.fixture
def conn():
    c = connection()
    yield c
    c.close()


def _scheduler(conn, queue, key=None):
    s = Scheduler(queue_name=queue, connection=conn)
    s.scheduled_jobs_key = key or f"rq:scheduler:scheduled_jobs:test-{uuid.uuid4().hex[:8]}"
    return s


def _cleanup(conn, scheduler, ids, queues):
    conn.delete(scheduler.scheduled_jobs_key, scheduler.scheduled_jobs_key + PAUSED_SUFFIX)
    for i in ids:
        conn.delete(Job.key_for(i))
    flush_queues(conn, queues)


def test_row_vectors(conn):
    s = _scheduler(conn, "reports")
    s.cron("*/5 * * * *", func="jobs.tasks.sweep", args=[1], kwargs={"k": "v"}, id="job-cron", queue_name="reports")
    s.schedule(datetime(2030, 1, 1, 12, tzinfo=UTC), func="jobs.tasks.ping", interval=60, repeat=None, id="job-interval")
    s.schedule(datetime(2030, 6, 1, 8, 30, tzinfo=UTC), func="jobs.tasks.once", args=[5], id="job-once")
    try:
        for managed in (False, True):
            adapter = RqSchedulerAdapter(scheduler=_scheduler(conn, "reports", s.scheduled_jobs_key), managed=managed)
            rows = {r.external_id: r for r in adapter.list_schedules()}
            for vector in [v for v in V["rqscheduler_rows"]["rows"] if v["managed"] is managed]:
                caps = adapter.advertised_capabilities()
                if managed:
                    assert caps == vector["capabilities"]
                else:  # one deliberate difference, see docs/schedulers.md: the brain refuses disable instead
                    assert sorted(set(caps) - {CAP_MUTATION}) == vector["capabilities"]
                job = Job.fetch(vector["job"], connection=conn)
                assert job.meta == vector["job_meta"]
                assert source_config(job) == vector["source_hash_input"]
                raw = rows[vector["job"]].to_raw()
                for key, want in vector["schedule_fields"].items():
                    got = raw[key] if key != "next_run_at" else raw[key].isoformat().replace("+00:00", "Z")
                    if not (key == "next_run_at" and vector["job"] == "job-cron"):
                        assert got == want, (vector["job"], key)
                normalized = normalize_external_schedule(raw, "rq-scheduler")
                if vector["job"] == "job-cron":
                    normalized["next_run_at"] = vector["normalized"]["next_run_at"]  # depends on the clock
                assert normalized == vector["normalized"]
    finally:
        _cleanup(conn, s, ["job-cron", "job-interval", "job-once"], ["reports"])


def test_managed_needs_an_exact_scheduler_and_only_one_manager(conn):
    class Wrapped(Scheduler):
        pass

    with pytest.raises(ValueError, match="managed native control requires rq_scheduler.Scheduler"):
        RqSchedulerAdapter(scheduler=Wrapped(connection=conn), managed=True)
    assert RqSchedulerAdapter(scheduler=Wrapped(connection=conn)).advertised_capabilities() == [
        "delete", "list", "trigger_now"]  # no stable snapshot: the brain would never activate it
    s = _scheduler(conn, "q")
    RqSchedulerAdapter(scheduler=s, managed=True)
    with pytest.raises(ValueError, match="already has managed native control"):
        RqSchedulerAdapter(scheduler=s, managed=True)


def test_trigger_now_enqueues_a_copy_that_a_real_worker_runs(conn):
    queue = unique_queue("sched")
    s = _scheduler(conn, queue)
    job = s.schedule(datetime.now(UTC) + timedelta(hours=1), func="rq_app.jobs.add", args=[20, 22], interval=3600)
    adapter = RqSchedulerAdapter(scheduler=s)
    try:
        score = conn.zscore(s.scheduled_jobs_key, job.id)
        result = adapter.trigger_now(job.id)
        assert result.status == "success", result.error
        done = run_burst("rq.worker.SimpleWorker", [queue], {})
        assert done.returncode == 0, done.stdout + done.stderr
        assert Job.fetch(result.result["task_id"], connection=conn).return_value() == 42
        assert conn.zscore(s.scheduled_jobs_key, job.id) == score  # the cadence is untouched
        assert adapter.trigger_now("nope").status == "failed"
    finally:
        _cleanup(conn, s, [job.id], [queue])


def test_plain_mode_never_deletes_on_disable_and_deletes_only_when_asked(conn):
    s = _scheduler(conn, "q-plain")
    job = s.schedule(datetime.now(UTC) + timedelta(hours=1), func="rq_app.jobs.noop", interval=600)
    adapter = RqSchedulerAdapter(scheduler=s)
    try:
        result = adapter.disable_schedule(job.id)
        assert result.status == "failed" and "managed=True" in result.error
        assert conn.zscore(s.scheduled_jobs_key, job.id) is not None
        with pytest.raises(NotImplementedError):
            adapter.apply_external_mutation(operation="update", schedule_id=job.id, expected=None,
                                            definition={"is_enabled": False})
        row = adapter.project(adapter.get_schedule(job.id))
        assert adapter.apply_external_mutation(operation="delete", schedule_id=job.id, expected=row,
                                               definition={}) is None
        assert adapter.list_schedules() == []
    finally:
        _cleanup(conn, s, [job.id], ["q-plain"])


def _rqscheduler_burst() -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(__import__("sys").executable).with_name("rqscheduler")), "--url", REDIS_URL,
                           "--burst", "--quiet"], env=worker_env({}), cwd=REPO_DIR, capture_output=True, text=True,
                          timeout=60, check=False)


def test_managed_disable_and_enable_change_what_rq_scheduler_runs(conn):
    queue = unique_queue("managed")
    s = _scheduler(conn, queue, key=DEFAULT_KEY)  # the key a stock `rqscheduler` process reads
    job = s.schedule(datetime.now(UTC) - timedelta(seconds=5), func="rq_app.jobs.add", args=[1, 2], interval=3600)
    adapter = RqSchedulerAdapter(scheduler=s, managed=True)
    q = Queue(queue, connection=conn)
    try:
        row = adapter.project(adapter.get_schedule(job.id))
        disabled = adapter.apply_external_mutation(operation="update", schedule_id=job.id, expected=row,
                                                   definition={"is_enabled": False})
        assert disabled.is_enabled is False and disabled.next_run_at is None
        assert conn.zscore(DEFAULT_KEY, job.id) is None
        assert conn.zscore(DEFAULT_KEY + PAUSED_SUFFIX, job.id) is not None
        assert job.id not in [j.id for j in s.get_jobs()]
        burst = _rqscheduler_burst()  # a stock producer process: the paused job is not due for it
        assert burst.returncode == 0, burst.stderr
        s.enqueue_jobs()  # the managed producer in this process
        assert q.count == 0
        with pytest.raises(ConflictError):  # the brain's view is stale now
            adapter.apply_external_mutation(operation="update", schedule_id=job.id, expected=row,
                                            definition={"is_enabled": True})
        enabled = adapter.apply_external_mutation(operation="update", schedule_id=job.id,
                                                  expected=adapter.project(disabled), definition={"is_enabled": True})
        # its slot passed while paused: it comes back one interval from now, like rq-scheduler would re-arm it
        assert enabled.is_enabled is True and job.id in [j.id for j in s.get_jobs()]
        assert conn.zscore(DEFAULT_KEY, job.id) > datetime.now(UTC).timestamp() + 3000
        conn.zadd(DEFAULT_KEY, {job.id: datetime.now(UTC).timestamp() - 1})  # let that hour pass
        s.enqueue_jobs()
        assert q.count == 1
        done = run_burst("rq.worker.SimpleWorker", [queue], {})
        assert done.returncode == 0, done.stdout + done.stderr
        assert Job.fetch(job.id, connection=conn).return_value() == 3
        nxt = conn.zscore(DEFAULT_KEY, job.id)
        assert nxt is not None and nxt > datetime.now(UTC).timestamp() + 3000  # re-armed one interval ahead
    finally:
        _cleanup(conn, s, [job.id], [queue])


def test_managed_create_update_and_delete(conn):
    s = _scheduler(conn, "q-edit")
    adapter = RqSchedulerAdapter(scheduler=s, managed=True, tasks={"demo.add": "rq_app.jobs.add"})
    created = adapter.apply_external_mutation(operation="create", schedule_id=None, expected=None, definition={
        "name": "add every 10 min", "task_name": "demo.add", "kind": "interval", "expression": "600",
        "queue": "q-edit", "args": [1, 1], "kwargs": {}, "is_enabled": True})
    try:
        assert created.name == "add every 10 min" and created.kind == "interval" and created.expression == "600"
        updated = adapter.apply_external_mutation(operation="update", schedule_id=created.external_id,
                                                  expected=adapter.project(created),
                                                  definition={"kind": "cron", "expression": "*/5 * * * *"})
        assert (updated.kind, updated.expression, updated.name) == ("cron", "*/5 * * * *", "add every 10 min")
        with pytest.raises(Exception, match="positive whole number"):
            adapter.apply_external_mutation(operation="update", schedule_id=created.external_id,
                                            expected=adapter.project(updated),
                                            definition={"kind": "interval", "expression": "1.5"})
        with pytest.raises(Exception, match="already named"):
            adapter.apply_external_mutation(operation="create", schedule_id=None, expected=None, definition={
                "name": "add every 10 min", "task_name": "demo.add", "kind": "interval", "expression": "60"})
        assert adapter.apply_external_mutation(operation="delete", schedule_id=created.external_id,
                                               expected=adapter.project(updated), definition={}) is None
        assert adapter.list_schedules() == []
    finally:
        _cleanup(conn, s, [created.external_id], ["q-edit"])
