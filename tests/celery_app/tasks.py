"""A Celery app whose broker, queue and agent bootstrap point come from the environment.

Z4J_TEST_BROKER   broker URL (default redis://127.0.0.1:6379/9)
Z4J_TEST_BACKEND  result backend URL (default redis://127.0.0.1:6379/10)
Z4J_TEST_QUEUE    the queue tasks are routed to and the worker consumes
Z4J_TEST_BOOT     where install_agent runs: import | worker_init | worker_ready | process_init | none
Z4J_TEST_RESTARTS "1" enables worker_pool_restarts
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery_boot import install_agent_at

# Z4J_TEST_REDIS points the tests at another Redis (parallel runs on one machine).
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
BROKER = os.environ.get("Z4J_TEST_BROKER", _REDIS + "/9")
BACKEND = os.environ.get("Z4J_TEST_BACKEND", _REDIS + "/10")
QUEUE = os.environ.get("Z4J_TEST_QUEUE", "z4j-test")
BOOT = os.environ.get("Z4J_TEST_BOOT", "none")

app = Celery("z4jtest", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
    worker_pool_restarts=os.environ.get("Z4J_TEST_RESTARTS") == "1",
    result_expires=600,
    task_queue_max_priority=None,
)


@app.task(name="z4jtest.add")
def add(x, y):
    return x + y


@app.task(name="z4jtest.noop", ignore_result=True)
def noop():
    return None


@app.task(name="z4jtest.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="z4jtest.flaky", bind=True, max_retries=3)
def flaky(self, value):
    # Fails on the first attempt, succeeds on the retry.
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=RuntimeError("first attempt fails"))
    return value * 2


@app.task(name="z4jtest.fail_once_by_key")
def fail_once_by_key(key, value):
    # Fails until the marker key exists in the result Redis: lets a test fix the cause, then retry.
    import redis

    client = redis.Redis.from_url(BACKEND)
    if not client.exists(key):
        raise RuntimeError(f"marker {key} missing")
    return value


@app.task(name="z4jtest.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


install_agent_at(BOOT, app)


_counter = None


@app.task(name="z4jtest.count", ignore_result=True)
def count(key):
    # The bench's completion signal: one INCR per task on the result Redis.
    global _counter
    if _counter is None:
        import redis

        _counter = redis.Redis.from_url(BACKEND)
    _counter.incr(key)
