"""RQ end to end: real Redis, real ``rq worker`` processes, the local brain, real commands.

A producer agent runs in this process (its own runtime, outside the install_agent singleton so
it lives for the module); each worker subprocess installs its own agent through the
``z4j_rq`` worker classes from Z4J_* environment variables.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rq import Queue, Retry
from rq.job import Job

from rq_app import harness
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.protocol import decode_hmac_secret, purge_token
from z4j_bare.testing import LocalBrain
from z4j_rq import RqEngineAdapter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def brain():
    with LocalBrain() as b:
        yield b


@pytest.fixture(scope="module")
def redis_conn():
    conn = harness.connection()
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture(scope="module")
def producer(brain, redis_conn, tmp_path_factory):
    """An agent in this process: enqueues report task.received; commands run here."""
    creds = brain.mint_agent("producer")
    adapter = RqEngineAdapter(connection=redis_conn, stop_wait_seconds=4.0)
    config = Config.resolve(**creds.kwargs(), home=str(tmp_path_factory.mktemp("producer-home")))
    runtime = build_runtime(config, [adapter]).start()
    brain.wait_for_agent_online(creds.agent_id, timeout=10)
    yield {"creds": creds, "adapter": adapter, "runtime": runtime}
    runtime.stop(timeout=3)


@pytest.fixture(scope="module")
def worker_env(brain, tmp_path_factory):
    def make(name: str) -> dict[str, str]:
        creds = brain.mint_agent(name)
        return {**creds.env(), "Z4J_HOME": str(tmp_path_factory.mktemp(name)), "Z4J_STOP_TIMEOUT": "5"}
    return make


def command(brain, producer, action, params, timeout=20):
    cid = brain.send_command(action, params, agent_id=producer["creds"].agent_id, engine="rq")
    return brain.wait_for_command(cid, timeout=timeout)


def events_of(brain, job_id):
    return {e["kind"]: e for e in brain.events(engine="rq", task_id=job_id)}


def test_fork_worker_reports_every_outcome(brain, redis_conn, producer, worker_env, tmp_path):
    q = Queue(harness.unique_queue("fork"), connection=redis_conn)
    ok = q.enqueue("rq_app.jobs.add", 2, 3, password="hunter2", note="plain")
    bad = q.enqueue("rq_app.jobs.boom", 7)
    retried = q.enqueue("rq_app.jobs.boom", 8, retry=Retry(max=1))
    killed = q.enqueue("rq_app.jobs.die")
    producer["runtime"].flush(5)

    # Producer side: received with redacted arguments, before any worker exists.
    rec = brain.wait_for_events(1, kind="task.received", task_id=ok.id)[0]
    assert rec["data"]["task_name"] == "rq_app.jobs.add"
    assert rec["data"]["queue"] == q.name
    assert rec["data"]["args"] == [2, 3]
    assert rec["data"]["kwargs"]["password"] == "[REDACTED]" and rec["data"]["kwargs"]["note"] == "plain"
    assert "hunter2" not in rec["data"]["description"]

    proc = harness.run_burst("z4j_rq.Worker", [q.name], worker_env("fork-worker"))
    assert proc.returncode == 0, proc.stderr[-2000:]

    row = brain.wait_for_task_state("rq", ok.id, "SUCCESS", timeout=15)
    ev = events_of(brain, ok.id)
    assert {"task.received", "task.started", "task.succeeded"} <= set(ev)
    worker_name = ev["task.started"]["data"]["worker"]
    assert worker_name and ev["task.succeeded"]["data"]["worker"] == worker_name
    assert isinstance(ev["task.succeeded"]["data"]["runtime_ms"], int)
    assert ev["task.succeeded"]["data"]["task_name"] == "rq_app.jobs.add"
    assert row["task_name"] == "rq_app.jobs.add"

    brain.wait_for_task_state("rq", bad.id, "FAILURE", timeout=10)
    failed = events_of(brain, bad.id)["task.failed"]["data"]
    assert failed["exception"] == "ValueError: boom 7"
    assert "Traceback" in failed["traceback"] and failed["queue"] == q.name

    # Retry(max=1): one task.retried, then the final failure.
    brain.wait_for_task_state("rq", retried.id, "FAILURE", timeout=10)
    kinds = [e["kind"] for e in brain.events(engine="rq", task_id=retried.id)]
    # (The brain folds the second attempt's task.started into the first when both fall in the same
    # second: it dedupes on kind + whole-second occurred_at.)
    assert kinds.count("task.retried") == 1 and kinds.index("task.retried") < kinds.index("task.failed")
    retry_ev = events_of(brain, retried.id)["task.retried"]["data"]
    assert retry_ev["retries_left"] == 0 and retry_ev["retry_count"] == 1

    # A horse killed with SIGKILL never reports anything itself: the parent does.
    brain.wait_for_task_state("rq", killed.id, "FAILURE", timeout=10)
    died = events_of(brain, killed.id)["task.failed"]["data"]
    assert "terminated unexpectedly" in died["exception"].lower() or "terminated unexpectedly" in died["traceback"].lower()
    assert Job.fetch(killed.id, connection=redis_conn).get_status() == "failed"


def test_simple_worker_reports_events(brain, redis_conn, producer, worker_env):
    q = Queue(harness.unique_queue("simple"), connection=redis_conn)
    ok = q.enqueue("rq_app.jobs.add", 1, 1)
    bad = q.enqueue("rq_app.jobs.boom", 1)
    proc = harness.run_burst("z4j_rq.SimpleWorker", [q.name], worker_env("simple-worker"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    brain.wait_for_task_state("rq", ok.id, "SUCCESS", timeout=15)
    assert events_of(brain, ok.id)["task.succeeded"]["data"]["result"] == 2
    brain.wait_for_task_state("rq", bad.id, "FAILURE", timeout=10)
    assert events_of(brain, bad.id)["task.failed"]["data"]["exception"] == "ValueError: boom 1"


def test_spawn_worker_reports_events(brain, redis_conn, producer, worker_env):
    q = Queue(harness.unique_queue("spawn"), connection=redis_conn)
    ok = q.enqueue("rq_app.jobs.add", 4, 4)
    proc = harness.run_burst("z4j_rq.SpawnWorker", [q.name], worker_env("spawn-worker"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    brain.wait_for_task_state("rq", ok.id, "SUCCESS", timeout=15)
    ev = events_of(brain, ok.id)
    assert ev["task.succeeded"]["data"]["task_name"] == "rq_app.jobs.add"
    # Only the worker's main process reports: one started, however the horse was made.
    assert [e["kind"] for e in brain.events(engine="rq", task_id=ok.id)].count("task.started") == 1


def test_cancel_queued_job(brain, redis_conn, producer):
    q = Queue(harness.unique_queue("cancelq"), connection=redis_conn)
    job = q.enqueue("rq_app.jobs.add", 1, 2)
    rec = command(brain, producer, "cancel_task", {"task_id": job.id})
    assert rec.status == "completed", rec
    assert rec.result["new_status"] == "canceled" and rec.result["previous_status"] == "queued"
    assert redis_conn.hget(job.key, "status") == b"canceled"
    assert redis_conn.llen(q.key) == 0
    brain.wait_for_task_state("rq", job.id, "REVOKED", timeout=10)


def _wait_started(conn, job, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.hget(job.key, "status") == b"started":
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job.id} never started: {conn.hgetall(job.key).get(b'status')}")


@pytest.mark.parametrize("worker_class", ["z4j_rq.Worker", "z4j_rq.SimpleWorker"])
def test_cancel_running_job_stops_it(brain, redis_conn, producer, worker_env, tmp_path, worker_class):
    q = Queue(harness.unique_queue("cancelr"), connection=redis_conn)
    marker = tmp_path / "completed"
    job = q.enqueue("rq_app.jobs.sleepy", 6, str(marker))
    proc = harness.start_worker(worker_class, [q.name], worker_env(f"cancel-{worker_class[7:].lower()}"))
    try:
        _wait_started(redis_conn, job)
        rec = command(brain, producer, "cancel_task", {"task_id": job.id})
        assert rec.status == "completed", rec
        assert rec.result["new_status"] == "stopped" and rec.result["terminated"] is True
        assert redis_conn.hget(job.key, "status") == b"stopped"
        brain.wait_for_task_state("rq", job.id, "REVOKED", timeout=10)
        time.sleep(0.5)
        assert Path(str(marker) + ".started").exists() and not marker.exists()
    finally:
        out = harness.stop_worker(proc)
    assert not marker.exists(), out[-2000:]


def test_cancel_reports_truth_when_job_cannot_be_stopped(brain, redis_conn, producer, worker_env, tmp_path):
    """rq's own SimpleWorker ignores stop requests: the job finishes and the result says so."""
    q = Queue(harness.unique_queue("cancelt"), connection=redis_conn)
    marker = tmp_path / "completed"
    job = q.enqueue("rq_app.jobs.sleepy", 1.5, str(marker))
    proc = harness.start_worker("rq.worker.SimpleWorker", [q.name], worker_env("plain-simple"))
    try:
        _wait_started(redis_conn, job)
        rec = command(brain, producer, "cancel_task", {"task_id": job.id})
    finally:
        harness.stop_worker(proc)
    assert rec.status == "failed"
    assert "finished before it could be stopped" in rec.error
    assert rec.result["new_status"] == "finished" and rec.result["canceled"] is False
    assert marker.exists()


def test_retry_task_requeues_failed_job_which_runs_again(brain, redis_conn, producer, worker_env, tmp_path):
    q = Queue(harness.unique_queue("retry"), connection=redis_conn)
    job = q.enqueue("rq_app.jobs.fail_once", str(tmp_path / "attempt"))
    env = worker_env("retry-worker")
    assert harness.run_burst("z4j_rq.Worker", [q.name], env).returncode == 0
    brain.wait_for_task_state("rq", job.id, "FAILURE", timeout=15)

    not_failed = q.enqueue("rq_app.jobs.add", 1, 1)
    rec = command(brain, producer, "retry_task", {"task_id": not_failed.id})
    assert rec.status == "failed" and "not in the failed registry" in rec.error

    rec = command(brain, producer, "retry_task", {"task_id": job.id, "args": None, "kwargs": None})
    assert rec.status == "completed", rec
    assert rec.result == {"task_id": job.id, "queue": q.name, "source": "failed_registry",
                          "new_status": "queued", "retried": True}
    assert harness.run_burst("z4j_rq.Worker", [q.name], env).returncode == 0
    assert Job.fetch(job.id, connection=redis_conn).get_status() == "finished"
    brain.wait_for_task_state("rq", job.id, "SUCCESS", timeout=15)


def test_dead_letters_and_bulk_retry(brain, redis_conn, producer, worker_env):
    q = Queue(harness.unique_queue("dlq"), connection=redis_conn)
    jobs = [q.enqueue("rq_app.jobs.boom", i) for i in range(3)]
    assert harness.run_burst("z4j_rq.SimpleWorker", [q.name], worker_env("dlq-worker")).returncode == 0
    rec = command(brain, producer, "dlq.list", {"queue": q.name, "limit": 2})
    assert rec.status == "completed", rec
    page = rec.result
    assert page["total"] == 3 and page["engine"] == "rq" and len(page["entries"]) == 2 and page["next_cursor"]
    entry = page["entries"][0]
    assert entry["task_name"] == "rq_app.jobs.boom" and entry["queue"] == q.name
    assert entry["error_excerpt"].startswith("ValueError: boom") and entry["attempts"] == 1 and entry["failed_at"]
    rec2 = command(brain, producer, "dlq.list", {"queue": q.name, "limit": 2, "cursor": page["next_cursor"]})
    ids = {e["task_id"] for e in page["entries"]} | {e["task_id"] for e in rec2.result["entries"]}
    assert ids == {j.id for j in jobs} and rec2.result["next_cursor"] is None

    rec = command(brain, producer, "bulk_retry", {"filter": {"engine": "rq", "task_ids": [j.id for j in jobs]}, "max": 10})
    assert rec.status == "completed", rec
    assert rec.result["succeeded"] == 3 and rec.result["failed"] == 0
    assert redis_conn.llen(q.key) == 3


def test_purge_queue_with_valid_token(brain, redis_conn, producer):
    q = Queue(harness.unique_queue("purge"), connection=redis_conn)
    jobs = [q.enqueue("rq_app.jobs.noop") for _ in range(3)]
    key = decode_hmac_secret(producer["creds"].hmac_secret)
    rec = command(brain, producer, "purge_queue", {"queue": q.name, "confirm_token": purge_token(key, q.name, 2)})
    assert rec.status == "failed" and redis_conn.llen(q.key) == 3  # stale depth: refused
    rec = command(brain, producer, "purge_queue", {"queue": q.name, "confirm_token": purge_token(key, q.name, 3)})
    assert rec.status == "completed", rec
    assert rec.result["purged"] == 3 and rec.result["depth_before"] == 3
    assert redis_conn.llen(q.key) == 0 and not redis_conn.exists(jobs[0].key)
    brain.wait_for_task_state("rq", jobs[0].id, "REVOKED", timeout=10)


def test_heartbeat_health_reports_queue_depths(redis_conn, producer):
    q = Queue(harness.unique_queue("health"), connection=redis_conn)
    q.enqueue("rq_app.jobs.noop")
    health = producer["adapter"].health()
    assert health["broker_connected"] is True
    assert health["queue_depths"][q.name] == 1
    assert producer["adapter"].queue_depth(q.name) == 1


def test_reconcile_and_submit(brain, redis_conn, producer, worker_env):
    qname = harness.unique_queue("submit")
    rec = command(brain, producer, "submit_task", {"name": "rq_app.jobs.add", "args": [20, 22], "kwargs": {}, "queue": qname})
    assert rec.status == "completed", rec
    job_id = rec.result["task_id"]
    assert rec.result["queue"] == qname and rec.result["status"] == "queued"
    assert command(brain, producer, "reconcile_task", {"task_id": job_id}).result["engine_state"] == "pending"
    assert harness.run_burst("z4j_rq.SimpleWorker", [qname], worker_env("submit-worker")).returncode == 0
    rec = command(brain, producer, "reconcile_task", {"task_id": job_id})
    assert rec.result["engine_state"] == "success" and rec.result["finished_at"]
    assert brain.wait_for_task_state("rq", job_id, "SUCCESS", timeout=10)
