"""Real ``celery worker`` subprocesses with the agent, against the LocalBrain.

Matrix (each boot costs seconds, so it is kept small): prefork -c2 / solo / threads, Redis and
RabbitMQ, install_agent at import / worker_init / worker_ready, without -E (one run with -E).
"""

from __future__ import annotations

import time

import pytest
from celery import Celery
from celery_app.harness import AMQP_BROKER, BACKEND, REDIS_BROKER, Worker, unique_queue

from z4j_bare.testing import LocalBrain

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def brain():
    with LocalBrain() as b:
        yield b


def producer(broker: str) -> Celery:
    app = Celery("z4jtest-producer", broker=broker, backend=BACKEND)
    app.conf.broker_connection_retry_on_startup = True
    return app


@pytest.fixture
def start_worker(brain, tmp_path):
    started: list[Worker] = []

    def start(*, broker: str, pool: str = "prefork", boot: str = "worker_ready", events: bool = False,
              concurrency: int = 2, extra_env: dict | None = None, wait_online: bool = True):
        creds = brain.mint_agent(name=f"w{len(started)}-{pool}-{boot}"[:60])
        home = tmp_path / f"home{len(started)}"
        home.mkdir()
        worker = Worker(queue=unique_queue(), broker=broker, pool=pool, boot=boot, events=events,
                        concurrency=concurrency, env={**creds.env(), **(extra_env or {})}, home=str(home))
        worker.creds = creds
        started.append(worker)
        if wait_online:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                online = [e for e in brain.events(engine="celery", kind="worker.online")
                          if e["data"].get("worker") == worker.nodename]
                if online:
                    worker.online_event = online[0]
                    break
                assert worker.proc.poll() is None, f"worker exited early:\n{worker.log()}"
                time.sleep(0.1)
            else:
                pytest.fail(f"no worker.online from {worker.nodename}:\n{worker.log()}")
        return worker

    yield start
    for worker in started:
        worker.stop()


def kinds_for(brain, task_id):
    return [e["kind"] for e in brain.events(engine="celery", task_id=task_id)]


def one(brain, task_id, kind, timeout=20.0):
    events = brain.wait_for_events(1, timeout=timeout, engine="celery", task_id=task_id, kind=kind)
    return events[0]


def run_lifecycle(brain, worker: Worker) -> None:
    app = producer(worker.broker)
    q, node = worker.queue, worker.nodename
    ok = app.send_task("z4jtest.add", args=(2, 3), kwargs={}, queue=q)
    bad = app.send_task("z4jtest.fail", args=("boom happened",), queue=q)
    flaky = app.send_task("z4jtest.flaky", args=(21,), queue=q)
    secret = app.send_task("z4jtest.add", args=(1, 1), kwargs={}, queue=q, headers={"x-trace": "abc"})

    assert brain.wait_for_task_state("celery", ok.id, "SUCCESS", timeout=30)["result"] == "5"
    received = one(brain, ok.id, "task.received")["data"]
    assert received["task_name"] == "z4jtest.add"
    assert received["queue"] == q
    assert received["worker"] == node
    assert received["args"] == [2, 3] and received["kwargs"] == {}
    assert received["root_task_id"] == ok.id
    started = one(brain, ok.id, "task.started")
    assert started["data"]["task_name"] == "z4jtest.add" and started["data"]["worker"] == node
    assert isinstance(started["data"]["pid"], int)
    succeeded = one(brain, ok.id, "task.succeeded")
    assert succeeded["data"]["result"] == "5"
    assert 0 <= succeeded["data"]["runtime_ms"] < 10_000
    assert started["occurred_at_ts"] <= succeeded["occurred_at_ts"]

    brain.wait_for_task_state("celery", bad.id, "FAILURE", timeout=30)
    failed = one(brain, bad.id, "task.failed")["data"]
    assert failed["exception"] == "ValueError"
    assert failed["exception_message"] == "boom happened"
    assert "raise ValueError(message)" in failed["traceback"]
    assert failed["task_name"] == "z4jtest.fail" and failed["queue"] == q and failed["worker"] == node
    assert failed["runtime_ms"] >= 0

    retried = one(brain, flaky.id, "task.retried")["data"]
    assert retried["retry_count"] == 1
    assert "first attempt fails" in retried["reason"]
    assert retried["task_name"] == "z4jtest.flaky"
    row = brain.wait_for_task_state("celery", flaky.id, "SUCCESS", timeout=30)
    assert row["result"] == "42"
    brain.wait_for_task_state("celery", secret.id, "SUCCESS", timeout=30)
    assert app.AsyncResult(ok.id).get(timeout=10) == 5  # the worker really ran it


MATRIX = [
    pytest.param("prefork", REDIS_BROKER, "import", id="prefork-redis-import"),
    pytest.param("prefork", REDIS_BROKER, "worker_ready", id="prefork-redis-worker_ready"),
    pytest.param("solo", AMQP_BROKER, "worker_init", id="solo-rabbitmq-worker_init"),
    pytest.param("threads", REDIS_BROKER, "worker_ready", id="threads-redis-worker_ready"),
    pytest.param("prefork", AMQP_BROKER, "worker_init", id="prefork-rabbitmq-worker_init"),
]


@pytest.mark.parametrize(("pool", "broker", "boot"), MATRIX)
def test_lifecycle_without_events_flag(brain, start_worker, pool, broker, boot):
    worker = start_worker(broker=broker, pool=pool, boot=boot)
    assert worker.online_event["data"]["pool"]
    run_lifecycle(brain, worker)
    worker.stop()
    deadline = time.monotonic() + 15
    while not any(e["data"].get("worker") == worker.nodename
                  for e in brain.events(engine="celery", kind="worker.offline")):
        assert time.monotonic() < deadline, f"no worker.offline; worker log:\n{worker.log()}"
        time.sleep(0.1)


def test_lifecycle_with_events_flag(brain, start_worker):
    # -E turns on Celery's own event stream; our capture must neither need it nor double-report.
    worker = start_worker(broker=REDIS_BROKER, pool="solo", boot="worker_ready", events=True)
    run_lifecycle(brain, worker)
    app = producer(worker.broker)
    res = app.send_task("z4jtest.add", args=(4, 4), queue=worker.queue)
    brain.wait_for_task_state("celery", res.id, "SUCCESS", timeout=20)
    time.sleep(0.5)
    assert sorted(kinds_for(brain, res.id)) == ["task.received", "task.started", "task.succeeded"]


def test_prefork_long_task_shows_received_and_started_while_it_runs(brain, start_worker):
    """The prefork main process holds received/started for the task's outcome, but never longer
    than celery_batch.HOLD_SECONDS: a long task is seen started while it still runs."""
    worker = start_worker(broker=REDIS_BROKER, pool="prefork", boot="worker_init")
    app = producer(worker.broker)
    quick = app.send_task("z4jtest.add", args=(1, 2), queue=worker.queue)
    brain.wait_for_task_state("celery", quick.id, "SUCCESS", timeout=30)
    assert sorted(kinds_for(brain, quick.id)) == ["task.received", "task.started", "task.succeeded"]
    slow = app.send_task("z4jtest.sleep", args=(6,), queue=worker.queue)  # no other task's outcome follows
    started = one(brain, slow.id, "task.started", timeout=5)
    assert one(brain, slow.id, "task.received", timeout=1)["occurred_at_ts"] <= started["occurred_at_ts"]
    assert brain.event_count(engine="celery", kind="task.succeeded", task_id=slow.id) == 0  # still running
    brain.wait_for_task_state("celery", slow.id, "SUCCESS", timeout=30)


def test_install_in_each_pool_child(brain, start_worker):
    """install_agent on worker_process_init only: each child runs its own agent (child mode)."""
    worker = start_worker(broker=REDIS_BROKER, pool="prefork", boot="process_init", wait_online=False)
    app = producer(worker.broker)
    results = [app.send_task("z4jtest.add", args=(i, i), queue=worker.queue) for i in range(4)]
    bad = app.send_task("z4jtest.fail", args=("child mode",), queue=worker.queue)
    for i, res in enumerate(results):
        row = brain.wait_for_task_state("celery", res.id, "SUCCESS", timeout=40)
        assert row["result"] == str(2 * i)
        started = one(brain, res.id, "task.started")["data"]
        assert started["task_name"] == "z4jtest.add" and started["worker"] == worker.nodename
        assert started["queue"] == worker.queue
    failed = one(brain, bad.id, "task.failed")["data"]
    assert failed["exception"] == "ValueError" and failed["exception_message"] == "child mode"
    # Documented gap of this mode: the main process has no agent, so nothing reports receipt.
    assert brain.event_count(engine="celery", kind="task.received", task_id=results[0].id) == 0


def test_commands_end_to_end(brain, start_worker):
    """retry_task by reference (no result_extended), cancel of a countdown task, worker controls, health."""
    import redis

    from z4j_bare.engines.base import CommandRequest
    from z4j_bare.engines.celery import CeleryEngineAdapter

    worker = start_worker(broker=REDIS_BROKER, pool="prefork", boot="worker_ready")
    agent = worker.creds.agent_id
    app = producer(worker.broker)
    q, node = worker.queue, worker.nodename
    marker = f"z4j-marker-{q}"
    results = redis.Redis.from_url(BACKEND)
    try:
        # 1. A failed task, its cause fixed, retried by reference: the brain sends no arguments.
        failed = app.send_task("z4jtest.fail_once_by_key", args=(marker, 7), queue=q)
        brain.wait_for_task_state("celery", failed.id, "FAILURE", timeout=20)
        results.set(marker, "1")
        cid = brain.send_command("retry_task", {"task_id": failed.id, "task_name": "z4jtest.fail_once_by_key",
                                                "args": None, "kwargs": None}, agent_id=agent, engine="celery")
        record = brain.wait_for_command(cid, timeout=20)
        assert record.status == "completed", record.error
        new_id = record.result["new_task_id"]
        assert new_id != failed.id and record.result["source"] == "agent_store"
        assert app.AsyncResult(new_id).get(timeout=15) == 7  # the worker really ran the re-published request
        row = brain.wait_for_task_state("celery", new_id, "SUCCESS", timeout=15)
        assert row["task_name"] == "z4jtest.fail_once_by_key"
        received = one(brain, new_id, "task.received")["data"]
        assert received["args"] == [marker, 7] and received["queue"] == q

        # 2. Cancel a task waiting on a countdown: revoked on the worker, never runs.
        waiting = app.send_task("z4jtest.add", args=(100, 1), queue=q, countdown=3)
        one(brain, waiting.id, "task.received")
        cid = brain.send_command("cancel_task", {"task_id": waiting.id}, agent_id=agent, engine="celery")
        record = brain.wait_for_command(cid, timeout=20)
        assert record.status == "completed", record.error
        assert record.result["terminated"] is False and node in record.result["acknowledged_by"]
        revoked = one(brain, waiting.id, "task.revoked", timeout=20)["data"]
        assert revoked["terminated"] is False and revoked["task_name"] == "z4jtest.add"
        assert app.AsyncResult(waiting.id).state == "REVOKED"
        time.sleep(0.5)
        assert "task.started" not in kinds_for(brain, waiting.id)

        # 3. Worker controls and health, through an adapter in this process (same broker).
        local = CeleryEngineAdapter(celery_app=app, worker_hostname=node)

        def cmd(action, **params):
            return getattr(local, action)(CommandRequest("c", action, "celery", params, {}))

        assert cmd("rate_limit", task_name="z4jtest.add", rate="50/s", worker_name=node)["replies"][node]["ok"]
        assert cmd("pool_grow", worker_name=node, delta=1)["delta"] == 1
        assert cmd("pool_shrink", worker_name=node, delta=1)["delta"] == 1
        assert cmd("add_consumer", worker_name=node, queue=q + "-extra")["queue"] == q + "-extra"
        assert cmd("cancel_consumer", worker_name=node, queue=q + "-extra")["replies"][node]
        started = time.monotonic()
        health = local.health()
        assert time.monotonic() - started < 4
        details = health["worker_details"][node]
        assert q in details["active_queues"]
        assert any(name.startswith("z4jtest.add") for name in details["registered"])
        assert details["stats"]["pool"]["max-concurrency"] >= 2
        assert set(details["conf"]) <= set(__import__("z4j_bare.engines.celery_broker", fromlist=["x"]).CONF_ALLOWLIST)
        assert details["conf"]["task_default_queue"] == q
        assert health["queue_depths"].get("celery", 0) >= 0 and health["broker_connected"] is True
        local.detach()
    finally:
        results.delete(marker)
