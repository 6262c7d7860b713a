"""us per eager Celery ``delay()`` call with the agent of Z4J_BENCH_AGENT (ours | ref | none).

Runs under either venv (``python -P eager.py CALLS`` with bench/suite/apps on PYTHONPATH). ours:
our install_agent + CeleryEngineAdapter; ref: the reference's install_agent + its
CeleryEngineAdapter (dev_mode=True: plain http to the loopback lab brain). Both stream to the
local brain given by Z4J_*; the agent is connected before the clock starts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
os.environ.setdefault("Z4J_BENCH_QUEUE", "z4jbench-eager")

from benchcelery import AGENT, app

app.conf.task_always_eager = True
app.conf.task_store_eager_result = False
app.conf.broker_url = "memory://"


def install():
    if AGENT == "ours":
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                            logger_factory=structlog.PrintLoggerFactory(sys.stderr))
        from z4j_bare import install_agent
        from z4j_bare.engines.celery import CeleryEngineAdapter

        runtime = install_agent(engines=[CeleryEngineAdapter(celery_app=app, outside_worker=True)])
        deadline = time.monotonic() + 30
        while not runtime.health()["connected"] and time.monotonic() < deadline:
            time.sleep(0.01)
        return runtime
    if AGENT == "ref":
        from z4j_bare.install import install_agent
        from z4j_celery.engine import CeleryEngineAdapter

        runtime = install_agent(engines=[CeleryEngineAdapter(celery_app=app)], dev_mode=True)
        deadline = time.monotonic() + 30
        while not runtime.supervisor_state().get("session_id") and time.monotonic() < deadline:
            time.sleep(0.01)
        return runtime
    return None


def main() -> None:
    calls = int(sys.argv[1])
    runtime = install()
    add = app.tasks["bench.add"]
    for i in range(200):  # warm up
        add.delay(i, i)
    started = time.perf_counter()
    for i in range(calls):
        add.delay(i, 1)
    elapsed = time.perf_counter() - started
    print(json.dumps({"us_per_call": elapsed / calls * 1e6, "agent": AGENT}), flush=True)
    if runtime is not None:
        runtime.stop(3)


if __name__ == "__main__":
    main()
