"""The Celery app the interop workers run (``celery -A interop.celery_tasks worker``).

Imported only by worker subprocesses (tests/ on PYTHONPATH); the test process publishes by
task name, so it never installs an agent by importing this. The agent is installed from
``worker_init`` (the main process, before the pool forks), without ``-E``.

Z4J_IT_BROKER   broker URL          Z4J_IT_BACKEND  result backend (also holds the markers)
Z4J_IT_QUEUE    the one queue       Z4J_IT_BOOT     worker_init (default) | import | none
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery_boot import install_agent_at

# Z4J_TEST_REDIS points the tests at another Redis (parallel runs on one machine).
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
BROKER = os.environ.get("Z4J_IT_BROKER", _REDIS + "/12")
BACKEND = os.environ.get("Z4J_IT_BACKEND", _REDIS + "/13")
QUEUE = os.environ.get("Z4J_IT_QUEUE", "z4j-interop")
BOOT = os.environ.get("Z4J_IT_BOOT", "worker_init")

app = Celery("z4j-interop", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=900,
)

_redis = None


def _markers():
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(BACKEND)
    return _redis


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="interop.retry_then_ok", bind=True)
def retry_then_ok(self, value):
    if self.request.retries == 0:
        raise self.retry(
            countdown=0, max_retries=1, exc=RuntimeError("first attempt fails")
        )
    return value * 2


@app.task(name="interop.retry_exhausted", bind=True)
def retry_exhausted(self, value):
    # Retries once, then the second self.retry() exceeds max_retries=1 and re-raises exc.
    raise self.retry(
        countdown=0, max_retries=1, exc=RuntimeError(f"always fails {value}")
    )


@app.task(name="interop.fail_until_marker")
def fail_until_marker(key):
    """Counts every run under ``runs:<key>``; fails until the marker ``key`` exists."""
    client = _markers()
    client.incr(f"runs:{key}")
    if not client.exists(key):
        raise RuntimeError(f"marker {key} missing")
    return f"ran with {key}"


@app.task(name="interop.count", ignore_result=True)
def count(key):
    # The bench's completion signal without a result backend round trip per task.
    _markers().incr(key)


@app.task(name="interop.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


install_agent_at(BOOT, app)
