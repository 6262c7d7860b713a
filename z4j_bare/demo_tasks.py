"""The demo's Celery app and task functions (imported by the demo's worker subprocesses).

Broker and outage marker come from the environment the demo sets (``Z4J_DEMO_*``). The Celery
worker installs the agent on ``worker_init`` (credentials from the ``Z4J_*`` environment); the
RQ worker gets it from ``--worker-class z4j_rq.Worker``. Nothing here runs unless a demo
worker imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.schedules import crontab
from celery.signals import beat_init, worker_init

QUEUE = os.environ.get("Z4J_DEMO_QUEUE", "z4j-demo")


def make_app() -> Celery:
    broker = os.environ.get("Z4J_DEMO_BROKER", "filesystem://")
    app = Celery("z4j_demo", broker=broker, set_as_current=False)
    conf: dict = {
        "task_default_queue": QUEUE,
        "task_acks_late": False,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
    }
    folder = os.environ.get("Z4J_DEMO_BROKER_DIR")
    if broker.startswith("filesystem") and folder:
        conf["broker_transport_options"] = {
            "data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "-control",
            "store_processed": False, "polling_interval": 0.05,
        }
    app.conf.update(conf)
    return app


app = make_app()
# The schedule `celery beat` runs in the demo (a static beat_schedule: the brain shows it read-only).
app.conf.beat_schedule = {
    "demo-nightly-totals": {"task": "demo.add", "schedule": crontab(minute=0, hour=3), "args": (20, 22)},
}


@worker_init.connect
def _install_agent(sender=None, **_kwargs):
    from z4j_bare import install_agent
    from z4j_bare.engines.celery import CeleryEngineAdapter

    try:
        install_agent(engines=[CeleryEngineAdapter(celery_app=app)])
    except Exception as exc:
        # Celery swallows exceptions raised by signal handlers: make this one visible.
        import sys

        print(f"z4j demo worker: install_agent failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise


@beat_init.connect
def _install_beat_agent(sender=None, **_kwargs):
    # A beat process hosts a scheduler and no engine: its agent shows beat_schedule in the brain.
    from z4j_bare import install_agent
    from z4j_celerybeat import CeleryBeatSchedulerAdapter

    try:
        install_agent(engines=[], schedulers=[CeleryBeatSchedulerAdapter(celery_app=app)])
    except Exception as exc:
        import sys

        print(f"z4j demo beat: install_agent failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.charge")
def charge(order_id: str, amount: float, card_number: str = "4111 1111 1111 1111") -> dict:
    # card_number is here to show redaction: it never reaches the brain in clear.
    return {"order_id": order_id, "charged": amount}


@app.task(name="demo.fail")
def fail(reason: str) -> None:
    raise ValueError(f"demo failure: {reason}")


@app.task(name="demo.flaky", bind=True, max_retries=2)
def flaky(self, n: int) -> int:
    # Fails on the first attempt and retries itself: shows task.retried, then success.
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("transient glitch"), countdown=0.2)
    return n * 2


@app.task(name="demo.ship")
def ship(order_id: str, outage_marker: str) -> str:
    # Fails while the "carrier API" is down (the marker file exists); the demo then fixes the
    # outage and retries the task from the brain.
    if Path(outage_marker).exists():
        raise ConnectionError("carrier API unavailable")
    return f"shipped {order_id}"


# RQ jobs: plain functions.
def rq_add(x: int, y: int) -> int:
    return x + y


def rq_fail(reason: str) -> None:
    raise ValueError(f"demo failure: {reason}")


def rq_ship(order_id: str, outage_marker: str) -> str:
    if Path(outage_marker).exists():
        raise ConnectionError("carrier API unavailable")
    return f"shipped {order_id}"
