"""Celery app for the side-by-side bench; runs unchanged under the project venv and the reference venv.

Z4J_BENCH_AGENT   ours | ref | none: which agent the worker (or eager caller) runs
Z4J_BENCH_BROKER  broker URL;  Z4J_BENCH_QUEUE  the queue;  Z4J_BENCH_COUNTER  Redis URL of the done counter

ours: our install_agent(CeleryEngineAdapter) from ``worker_ready`` (docs/celery.md).
ref:  ``import z4j_celery`` registers the reference's own ``worker_ready`` auto-bootstrap, which
      reads the Z4J_* environment (protocol.md section 10.1).
"""

from __future__ import annotations

import os

from celery import Celery, signals

AGENT = os.environ.get("Z4J_BENCH_AGENT", "none")
BROKER = os.environ.get("Z4J_BENCH_BROKER", "redis://127.0.0.1:6379/7")
QUEUE = os.environ.get("Z4J_BENCH_QUEUE", "z4jbench")
COUNTER = os.environ.get("Z4J_BENCH_COUNTER", "redis://127.0.0.1:6379/7")

app = Celery("z4jbench", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
    task_ignore_result=True,
)

_counter = None


@app.task(name="bench.count", ignore_result=True)
def count(key):
    """The bench's completion signal: one INCR per task."""
    global _counter
    if _counter is None:
        import redis

        _counter = redis.Redis.from_url(COUNTER)
    _counter.incr(key)


@app.task(name="bench.add")
def add(x, y):
    return x + y


def _install_ours(**_):
    from z4j_bare import install_agent
    from z4j_bare.engines.celery import CeleryEngineAdapter

    install_agent(engines=[CeleryEngineAdapter(celery_app=app)])


if AGENT == "ours":
    signals.worker_ready.connect(_install_ours, weak=False)
elif AGENT == "ref":
    import z4j_celery  # noqa: F401  (the reference's auto-bootstrap on worker_ready)
