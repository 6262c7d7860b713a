"""Dramatiq adapter pieces that need no worker: arguments, capabilities, the message store, the
writer probe, and capture with a programmatic ``Worker`` in this process (real Redis)."""

from __future__ import annotations

import os
import threading

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq_app.defs import REDIS_URL

from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.engines import dramatiq_family as family
from z4j_bare.engines.dramatiq_store import FAILED, TAKEN, MessageStore
from z4j_bare.storage.locks import OWNER, WRITER, SidecarLock
from z4j_bare.testing import LocalBrain
from z4j_dramatiq import DramatiqEngineAdapter


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="needs a dramatiq Broker"):
        DramatiqEngineAdapter(broker="redis://localhost")
    with pytest.raises(ValueError, match="capture_results"):
        DramatiqEngineAdapter(broker=StubBroker(), capture_results="yes")
    with pytest.raises(ValueError, match="cancel_wait_seconds"):
        DramatiqEngineAdapter(broker=StubBroker(), cancel_wait_seconds=-1)
    with pytest.raises(ValueError, match="queues"):
        DramatiqEngineAdapter(broker=StubBroker(), queues="default")


def test_capabilities_follow_the_broker():
    stub = DramatiqEngineAdapter(broker=StubBroker())
    assert stub.advertised_capabilities() == ["bulk_retry", "retry_by_reference_v1", "retry_task", "submit_task"]
    assert stub.health() == {"broker_type": "StubBroker"}
    redis_adapter = DramatiqEngineAdapter(broker=RedisBroker(url=REDIS_URL, namespace="z4jdq-unit"))
    assert set(redis_adapter.capabilities()) == {"submit_task", "retry_task", "bulk_retry", "purge_queue",
                                                 "list_dead_letters", "requeue_dead_letter", "cancel_task"}


def test_one_middleware_per_broker_and_the_adapter_is_found_by_broker():
    broker = StubBroker()
    first = DramatiqEngineAdapter(broker=broker)
    second = DramatiqEngineAdapter(broker=broker)
    assert first.middleware is second.middleware and second.middleware.adapter is second
    assert family.adapter_for(broker) is second
    assert family.adapter_for(StubBroker()) is None


def test_message_store_keeps_the_newest_observation(tmp_path):
    store = MessageStore(tmp_path / "m.sqlite", linger=0.001)
    store.put("m1", queue="q", actor="a", state=TAKEN, body=b"{}", redis_id="r1")
    store.put("m1", queue="q", actor="a", state=FAILED, error="ValueError: x", attempts=2)
    store.flush()
    row = store.get("m1")
    assert row["state"] == FAILED and row["body"] == b"{}" and row["redis_id"] == "r1" and row["attempts"] == 2
    # An observation older than the stored one (another process's late commit) changes nothing.
    store._queued.append(("m1", row["seen_at"] - 10, "q", "a", TAKEN, None, 1, None, b"old"))
    store.flush()
    assert store.get("m1")["state"] == FAILED and store.get("m1")["body"] == b"{}"
    assert os.stat(tmp_path / "m.sqlite").st_mode & 0o777 == 0o600
    store.close()


def test_message_store_wait_sees_a_record_committed_by_another_process_later(tmp_path):
    reader = MessageStore(tmp_path / "m.sqlite")
    writer = MessageStore(tmp_path / "m.sqlite", linger=0.1)
    writer.put("late", queue="q", actor="a", state=TAKEN, body=b"{}")
    assert reader.get("late") is None
    assert reader.get("late", wait=2.0)["state"] == TAKEN
    writer.close()
    reader.close()


def test_writers_probe_sees_live_writers_without_taking_their_lock(tmp_path):
    buffer = tmp_path / "buffer.sqlite"
    lock_path = tmp_path / "buffer.sqlite.lock"
    assert family.writers_present(buffer) is False  # no lock file yet
    owner = SidecarLock.acquire(lock_path, OWNER)
    assert family.writers_present(buffer) is False
    writer = SidecarLock.acquire(lock_path, WRITER)
    assert family.writers_present(buffer) is True
    SidecarLock.acquire(lock_path, WRITER).release()  # the probe never blocks a writer
    writer.release()
    assert family.writers_present(buffer) is False
    owner.release()


def test_family_paths_follow_home_or_buffer_path(tmp_path):
    config = Config.resolve(brain_url="http://127.0.0.1:1", token="t" * 20, hmac_secret="A" * 43 + "=",
                            project_id="p", home=str(tmp_path))
    paths = family.family_paths(config, 4242)
    assert paths.buffer.parent == tmp_path and paths.buffer.name.endswith("-dramatiq-4242.sqlite")
    assert family.message_store_path(paths.buffer, paths.deployment).name == f"dramatiq-messages-{paths.deployment}.sqlite"
    config = Config.resolve(brain_url="http://127.0.0.1:1", token="t" * 20, hmac_secret="A" * 43 + "=",
                            project_id="p", buffer_path=str(tmp_path / "x" / "buf.db"))
    assert family.family_paths(config, 7).buffer == tmp_path / "x" / "buf-dramatiq-7.db"


def test_programmatic_worker_in_an_agent_process_captures_and_producer_side_reports(tmp_path):
    """install_agent in a process that runs ``Worker(broker)`` itself: capture through its sink."""
    broker = RedisBroker(url=REDIS_URL, namespace=f"z4jdq-unit-{os.getpid()}")
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="unit", max_retries=0)
    def hello(name, token=None):
        done.set()
        return name

    adapter = DramatiqEngineAdapter(broker=broker, capture_results=True)
    with LocalBrain() as brain:
        creds = brain.mint_agent("unit")
        runtime = build_runtime(Config.resolve(**creds.kwargs(), home=str(tmp_path)), [adapter]).start()
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        try:
            message = hello.send("ada", token="secret-value")
            worker.start()
            assert done.wait(20)
            row = brain.wait_for_task_state("dramatiq", message.message_id, "SUCCESS", timeout=20)
            kinds = [e["kind"] for e in brain.events(engine="dramatiq", task_id=message.message_id)]
            # Sent (producer side), then taken by the worker: the brain keeps one per whole second.
            assert {"task.received", "task.started", "task.succeeded"} <= set(kinds)
            assert row["result"] in ("ada", '"ada"')
            sent = next(e for e in brain.events(engine="dramatiq", task_id=message.message_id)
                        if e["kind"] == "task.received" and "status" in e["data"])["data"]
            assert sent["status"] == "enqueued" and sent["kwargs"]["token"] == "[REDACTED]"
        finally:
            worker.stop(timeout=5000)
            runtime.stop(timeout=3)
            for key in broker.client.scan_iter(match=f"{broker.namespace}*"):
                broker.client.delete(key)
    assert adapter.middleware.z4j_capture is None  # detached with the runtime
