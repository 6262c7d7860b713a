"""A cron script's start: a fresh process that uses RQ, timed from before the agent's import until
``install_agent`` returns. Runs under either venv (``python -P start.py ours|ref|none``).

    ours  from z4j_bare import install_agent; from z4j_rq import RqEngineAdapter; install_agent(...)
    ref   the reference's install_agent (z4j_bare.install) with its RqEngineAdapter, dev_mode=True
    none  the same script without the agent: only the engine import

The engine (redis + rq) is imported first, as the script itself needs it; that time is reported
separately. Credentials and Z4J_HOME come from the environment. The result is the one stdout line
starting with ``START `` (nothing here configures logging: that would load what we measure).
"""

import time

T_PROCESS = time.perf_counter()

import json
import os
import sys

import redis
import rq  # noqa: F401

T_ENGINE = time.perf_counter()


class _RqApp:
    """What the reference's RQ adapter reads of an app: a connection and the queues."""

    def __init__(self, conn) -> None:
        self.connection = conn
        self.queues = []


def start(agent: str, url: str):
    if agent == "ours":
        from z4j_bare import install_agent
        from z4j_rq import RqEngineAdapter

        return install_agent(engines=[RqEngineAdapter(redis_url=url)])
    if agent == "ref":
        from z4j_bare.install import install_agent
        from z4j_rq.engine import RqEngineAdapter

        return install_agent(engines=[RqEngineAdapter(rq_app=_RqApp(redis.Redis.from_url(url)))], dev_mode=True)
    return None


def main() -> None:
    agent = sys.argv[1]
    url = os.environ.get("Z4J_BENCH_RQ_REDIS", "redis://127.0.0.1:6379/8")
    t0 = time.perf_counter()
    runtime = start(agent, url)
    t1 = time.perf_counter()
    modules = len(sys.modules)
    sys.stdout.write("START " + json.dumps({"agent": agent, "start_ms": (t1 - t0) * 1000,
                                            "engine_import_ms": (T_ENGINE - T_PROCESS) * 1000,
                                            "modules": modules}) + "\n")
    sys.stdout.flush()
    if runtime is not None:
        runtime.stop(2)


if __name__ == "__main__":
    main()
