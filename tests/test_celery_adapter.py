"""In-process tests of the Celery adapter: eager capture, producer capture, commands against real
brokers (Redis db 9 / RabbitMQ), hook install/uninstall, the request store."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from celery import Celery
from celery_app.harness import (
    AMQP_BROKER,
    BACKEND,
    REDIS_BROKER,
    clean_queue,
    unique_queue,
)
from kombu import Connection

from z4j_bare import install_agent
from z4j_bare.engines.base import CommandFailed, CommandRequest
from z4j_bare.engines.celery import CeleryEngineAdapter, _eta_options
from z4j_bare.engines.celery_store import RequestStore
from z4j_bare.testing import LocalBrain

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def brain():
    with LocalBrain() as b:
        yield b


def make_app(broker=REDIS_BROKER, *, eager=False, name="z4j-inproc"):
    app = Celery(name, broker=broker, backend=BACKEND)
    app.conf.update(task_always_eager=eager, broker_connection_retry_on_startup=True, task_store_eager_result=False)

    @app.task(name="inproc.add")
    def add(x, y):
        return x + y

    @app.task(name="inproc.fail")
    def fail(msg):
        raise KeyError(msg)

    @app.task(name="inproc.flaky", bind=True, max_retries=2)
    def flaky(self, v):
        if self.request.retries == 0:
            raise self.retry(countdown=0, exc=RuntimeError("again"))
        return v

    app.z4j_tasks = {"add": add, "fail": fail, "flaky": flaky}
    return app


def req(action, **params):
    return CommandRequest("cmd-1", action, "celery", params, {})


def test_adapter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="celery_app"):
        CeleryEngineAdapter(celery_app=None)
    app = make_app()
    with pytest.raises(ValueError, match="batch_interval"):
        CeleryEngineAdapter(celery_app=app, batch_interval=-1)
    with pytest.raises(ValueError, match="capture_sent"):
        CeleryEngineAdapter(celery_app=app, capture_sent="yes")


def test_capabilities_follow_config():
    app = make_app()
    adapter = CeleryEngineAdapter(celery_app=app)
    caps = adapter.capabilities()
    assert "restart_worker" not in caps
    assert {"retry_task", "cancel_task", "bulk_retry", "purge_queue", "submit_task", "rate_limit", "pool_grow"} <= caps
    assert "retry_by_reference_v1" in adapter.advertised_capabilities()
    app.conf.worker_pool_restarts = True
    assert "restart_worker" in adapter.capabilities()


def test_hooks_install_and_restore(tmp_path):
    from celery.worker import request as request_module
    from celery.worker import strategy

    from celery import signals

    watched = (signals.task_received, signals.task_prerun, signals.task_postrun, signals.before_task_publish)
    receivers_before = {sig: len(sig.receivers) for sig in watched}
    originals = {n: request_module.Request.__dict__[n] for n in ("on_accepted", "on_success", "on_failure", "on_retry")}
    create = strategy.create_request_cls
    app = make_app()
    rt = install_agent(engines=[CeleryEngineAdapter(celery_app=app, outside_worker=True)], brain_url="http://127.0.0.1:9",
                       token="t" * 40, hmac_secret="A" * 43, project_id="p")
    try:
        for name, fn in originals.items():
            assert request_module.Request.__dict__[name] is not fn
            assert request_module.Request.__dict__[name].__z4j_original__ is fn
        # A request class Celery builds after attach (consumer restart) is wrapped too.
        from celery.concurrency.solo import TaskPool

        sub = strategy.create_request_cls(request_module.Request, app.z4j_tasks["add"], TaskPool(), "h", None, app=app)
        assert sub.__dict__["on_success"].__z4j_original__ is not None
    finally:
        rt.stop(timeout=1)
    for name, fn in originals.items():
        assert request_module.Request.__dict__[name] is fn
    assert strategy.create_request_cls is create
    assert not hasattr(sub.__dict__["on_success"], "__z4j_original__")
    # Every signal receiver is gone again: a stopped agent must not keep capturing.
    assert {sig: len(sig.receivers) for sig in watched} == receivers_before


def test_eager_capture(brain):
    creds = brain.mint_agent(name="eager")
    app = make_app(eager=True)
    rt = install_agent(engines=[CeleryEngineAdapter(celery_app=app, outside_worker=True)], **creds.kwargs())
    try:
        t = app.z4j_tasks
        ok = t["add"].delay(2, 40)
        assert ok.get() == 42
        bad = t["fail"].apply(args=("nope",))
        assert bad.failed()
        flaky = t["flaky"].apply(args=(5,))
        row = brain.wait_for_task_state("celery", ok.id, "SUCCESS", timeout=10)
        assert row["result"] == "42" and row["task_name"] == "inproc.add"
        started = brain.wait_for_events(1, timeout=5, engine="celery", kind="task.started", task_id=ok.id)[0]
        assert started["data"]["args"] == [2, 40]
        failed = brain.wait_for_events(1, timeout=5, engine="celery", kind="task.failed", task_id=bad.id)[0]["data"]
        assert failed["exception"] == "KeyError" and "nope" in failed["exception_message"]
        assert "raise KeyError(msg)" in failed["traceback"]
        retried = brain.wait_for_events(1, timeout=5, engine="celery", kind="task.retried", task_id=flaky.id)[0]
        assert retried["data"]["retry_count"] == 1 and "again" in retried["data"]["reason"]
        # Eager calls produce no task.sent (nothing is published) and no task.received.
        assert brain.event_count(engine="celery", kind="task.received", task_id=ok.id) == 0
    finally:
        rt.stop(timeout=3)


def test_producer_sent_then_retry_by_reference(brain):
    """task.sent in a producer; retry_task re-publishes the original from the agent's own store."""
    creds = brain.mint_agent(name="producer")
    q = unique_queue()
    app = make_app()
    adapter = CeleryEngineAdapter(celery_app=app, outside_worker=True)  # a producer opts in
    rt = install_agent(engines=[adapter], **creds.kwargs())
    try:
        res = app.send_task("inproc.add", args=(1, 2), kwargs={"api_key": "sk_live_" + "x" * 30}, queue=q,
                            priority=3, headers={"x-tenant": "t1"})
        sent = brain.wait_for_events(1, timeout=10, engine="celery", kind="task.sent", task_id=res.id)[0]["data"]
        assert sent["task_name"] == "inproc.add" and sent["queue"] == q and sent["args"] == [1, 2]
        assert sent["kwargs"]["api_key"] == "[REDACTED]"
        assert adapter.queue_depth(q) == 1
        out = adapter.retry_task(req("retry_task", task_id=res.id, task_name="inproc.add", args=None, kwargs=None))
        assert out["task_name"] == "inproc.add" and out["source"] == "agent_store" and out["new_task_id"] != res.id
        assert adapter.queue_depth(q) == 2
        with Connection(REDIS_BROKER) as conn:
            client = conn.default_channel.client
            raw = [m for key in client.keys(q + "*") for m in client.lrange(key, 0, -1)]
        import json

        bodies = [json.loads(m) for m in raw]
        newest = next(b for b in bodies if b["headers"]["id"] == out["new_task_id"])
        assert newest["headers"]["x-tenant"] == "t1"
        import base64

        args, kwargs, _ = json.loads(base64.b64decode(newest["body"]))
        assert args == [1, 2] and kwargs == {"api_key": "sk_live_" + "x" * 30}  # the original, not redacted
        assert newest["properties"]["priority"] == 3
        # Overrides replace the stored arguments; eta_seconds becomes an eta header.
        out2 = adapter.retry_task(req("retry_task", task_id=res.id, override_args=[7, 8], eta_seconds=60))
        assert out2["new_task_id"]
        with pytest.raises(CommandFailed, match="not known to this agent"):
            adapter.retry_task(req("retry_task", task_id="00000000-0000-4000-8000-000000000000"))
        with pytest.raises(CommandFailed, match="refusing to guess"):
            adapter.retry_task(req("retry_task", task_id=res.id, task_name="other.task"))
        bulk = adapter.bulk_retry(req("bulk_retry", filter={"engine": "celery", "task_ids": [res.id, "missing"]}, max=10))
        assert bulk["requested"] == 2 and bulk["succeeded"] == 1 and bulk["failed"] == 1
    finally:
        rt.stop(timeout=3)
        clean_queue(REDIS_BROKER, q)


@pytest.mark.parametrize("broker", [REDIS_BROKER, AMQP_BROKER], ids=["redis", "rabbitmq"])
def test_queue_depth_and_purge_one_queue(broker):
    q, other = unique_queue(), unique_queue()
    app = make_app(broker)
    adapter = CeleryEngineAdapter(celery_app=app)
    try:
        for _ in range(3):
            app.send_task("inproc.add", args=(1, 1), queue=q)
        app.send_task("inproc.add", args=(1, 1), queue=other)
        assert adapter.queue_depth(q) == 3
        out = adapter.purge_queue(req("purge_queue", queue=q, confirm_token="checked-by-runtime"))
        assert out == {"queue": q, "purged": 3}
        assert adapter.queue_depth(q) == 0  # the queue still exists (never deleted) and is empty
        assert adapter.queue_depth(other) == 1  # only the named queue was purged
        if broker == AMQP_BROKER:
            assert adapter.queue_depth("z4j-no-such-queue-" + q) is None
            with pytest.raises(CommandFailed, match="does not exist"):
                adapter.purge_queue(req("purge_queue", queue="z4j-no-such-queue-" + q))
        health = adapter.health()
        assert health["broker_type"] == ("redis" if broker == REDIS_BROKER else "amqp")
        assert health["broker_connected"] is True
    finally:
        adapter.detach()
        clean_queue(broker, q)
        clean_queue(broker, other)


def test_broker_down_is_reported_not_raised():
    app = make_app("redis://127.0.0.1:1/0")
    adapter = CeleryEngineAdapter(celery_app=app)
    started = time.monotonic()
    health = adapter.health()
    assert health["broker_connected"] is False and health["broker_error"]
    assert adapter.queue_depth("x") is None
    assert time.monotonic() - started < 15


def test_command_parameter_validation():
    adapter = CeleryEngineAdapter(celery_app=make_app())
    with pytest.raises(CommandFailed, match="rate"):
        adapter.rate_limit(req("rate_limit", task_name="a", rate="fast"))
    with pytest.raises(CommandFailed, match="delta"):
        adapter.pool_grow(req("pool_grow", worker_name="w", delta=0))
    with pytest.raises(CommandFailed, match="signal"):
        adapter.cancel_task(req("cancel_task", task_id="x", signal="KILL; rm"))
    with pytest.raises(CommandFailed, match="eta"):
        _eta_options("tomorrow", None, "retry_task")
    assert _eta_options(None, 0, "x")["eta"].timestamp() == pytest.approx(time.time(), abs=2)
    with pytest.raises(CommandFailed, match="worker_pool_restarts"):
        adapter.restart_worker(req("restart_worker", worker_name="w"))


def test_request_store_roundtrip_and_bounds(tmp_path):
    import datetime
    import uuid as uuidlib

    store = RequestStore(str(tmp_path / "r.sqlite"), max_rows=5)
    when = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC)
    store.put("a", {"name": "t", "args": [when, uuidlib.UUID(int=1)], "kwargs": {"x": b"\x00\x01"}})
    got = store.get("a")
    assert got["args"][0] == when and got["args"][1] == uuidlib.UUID(int=1)
    store.put("p", {"name": "t", "args": [object.__new__(PicklableThing)], "kwargs": {}})
    assert isinstance(store.get("p")["args"][0], PicklableThing)
    store.put_many([(f"k{i}", {"name": "t", "args": [i], "kwargs": {}}) for i in range(20)])
    store.prune()
    assert store.count() == 5
    assert store.get("k19")["args"] == [19] and store.get("a") is None
    assert (tmp_path / "r.sqlite").stat().st_mode & 0o777 == 0o600
    store.close()


class PicklableThing:
    pass


def test_request_store_commits_queued_records_in_the_background(tmp_path):
    store = RequestStore(str(tmp_path / "r.sqlite"), linger=0.01)
    store.put("queued", {"name": "t", "args": [1], "kwargs": {}})
    assert store.get("queued")["args"] == [1]  # visible while still queued
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with sqlite3.connect(tmp_path / "r.sqlite") as raw:
            try:
                if raw.execute("SELECT count(*) FROM celery_requests").fetchone()[0] == 1:
                    break
            except sqlite3.OperationalError:  # the writer has not created the table yet
                pass
        time.sleep(0.01)
    else:
        pytest.fail("the writer thread never committed the queued record")
    args = ["mutated later"]
    store.put("snap", {"name": "t", "args": args, "kwargs": {}})
    args.append("by the task")  # the record is a snapshot taken at receipt
    store.close()  # close commits what is still queued
    with sqlite3.connect(tmp_path / "r.sqlite") as raw:
        assert raw.execute("SELECT count(*) FROM celery_requests").fetchone()[0] == 2
    reopened = RequestStore(str(tmp_path / "r.sqlite"))
    assert reopened.get("snap")["args"] == ["mutated later"]
    reopened.close()


def test_request_store_in_a_forked_child_writes_its_own_records(tmp_path):
    store = RequestStore(str(tmp_path / "r.sqlite"), linger=0.01)
    store.put("parent", {"name": "t", "args": [], "kwargs": {}})
    store.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            store.put("child", {"name": "t", "args": [2], "kwargs": {}})
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child")["args"] == [2] and store.get("parent") is not None
    store.close()


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_received_request_is_kept_raw_and_retried_whole(brain, serializer):
    """task_received keeps the message body as delivered (codec "raw"): retry_task publishes the
    same arguments, user headers and link callbacks again, in the message's own serializer."""
    from celery.worker import request as request_module
    from celery.worker import strategy
    from celery.concurrency.solo import TaskPool

    from celery import signals

    creds = brain.mint_agent(name=f"raw-{serializer}")
    q = unique_queue()
    app = make_app()
    app.conf.update(task_serializer=serializer, accept_content=["json", "pickle"])
    adapter = CeleryEngineAdapter(celery_app=app, outside_worker=True, capture_sent=False)
    rt = install_agent(engines=[adapter], **creds.kwargs())
    try:
        t = app.z4j_tasks
        res = app.send_task("inproc.add", args=(1, 2), kwargs={"token": "sk_live_" + "y" * 30}, queue=q,
                            headers={"x-tenant": "t9"}, link=t["add"].s(10))
        with Connection(REDIS_BROKER) as conn:
            message = conn.default_channel.basic_get(q, no_ack=True)
        assert message is not None
        assert message.content_type == {"json": "application/json", "pickle": "application/x-python-serialize"}[serializer]
        message.accept = {"application/json", "application/x-python-serialize"}  # as the worker's consumer sets it
        req_cls = strategy.create_request_cls(request_module.Request, t["add"], TaskPool(), "w@h", None, app=app)
        request = req_cls(message, app=app, hostname="w@h", task=t["add"], body=message.body, headers=message.headers,
                          decoded=False, utc=True)
        signals.task_received.send(sender=None, request=request)
        adapter.store.flush()
        with sqlite3.connect(adapter.store.path) as raw:
            assert raw.execute("SELECT codec FROM celery_requests WHERE task_id = ?", (res.id,)).fetchone() == ("raw",)
        record = adapter.store.get(res.id)
        assert record["args"] == [1, 2] and record["kwargs"] == {"token": "sk_live_" + "y" * 30}
        assert record["headers"] == {"x-tenant": "t9"} and record["routing_key"] == q
        assert [cb["task"] for cb in record["callbacks"]] == ["inproc.add"]
        out = adapter.retry_task(req("retry_task", task_id=res.id, task_name="inproc.add"))
        with Connection(REDIS_BROKER) as conn:
            again = conn.default_channel.basic_get(q, no_ack=True)
        assert again.headers["id"] == out["new_task_id"] and again.headers["x-tenant"] == "t9"
        from kombu.serialization import loads

        args, kwargs, embed = loads(again.body, again.content_type, again.content_encoding, accept={again.content_type})
        assert args == [1, 2] and kwargs == {"token": "sk_live_" + "y" * 30}
        assert [cb["task"] for cb in embed["callbacks"]] == ["inproc.add"]
    finally:
        rt.stop(timeout=3)
        clean_queue(REDIS_BROKER, q)
