"""Per-task overhead of the Celery adapter, with vs without the agent, side by side in one run.

    .venv/bin/python bench/bench_celery.py [--eager-calls 3000] [--prefork-tasks 2000] [--rounds 3]

eager:   N ``task.delay()`` calls with task_always_eager, agent installed vs not (LocalBrain).
prefork: a real ``celery worker -P prefork -c 2`` on Redis; N no-op tasks published at once, timed
         from the first publish until the worker has finished all of them (a Redis counter the
         task increments), once with the agent installed from worker_ready and once without.
Rounds alternate with/without so machine noise hits both equally; the median is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from celery import Celery
from celery_app.harness import BACKEND, REDIS_BROKER, Worker, unique_queue

from z4j_bare import agent as agent_module
from z4j_bare import install_agent
from z4j_bare.engines.celery import CeleryEngineAdapter

BRAIN_SCRIPT = """
import json, sys, time
from z4j_bare.testing import LocalBrain
with LocalBrain() as brain:
    creds = [brain.mint_agent(name=f"bench{i}") for i in range(int(sys.argv[1]))]
    print("CREDS " + json.dumps([{"env": c.env(), "kwargs": c.kwargs()} for c in creds]), flush=True)
    sys.stdin.read()
"""


class RemoteBrain:
    """The LocalBrain in its own process, so its threads do not compete for the bench's GIL."""

    def __init__(self, agents: int) -> None:
        import json
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", BRAIN_SCRIPT, str(agents)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # (the brain's own log lines go to the same pipe; only the CREDS line is read, the rest drained)
        line = ""
        while not line.startswith("CREDS "):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the brain process exited before printing credentials")
        self.creds = json.loads(line[6:])
        import threading

        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def eager_round(creds: dict, calls: int, with_agent: bool) -> float:
    app = Celery("bench-eager", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    app.conf.task_store_eager_result = False

    @app.task(name="bench.add")
    def add(x, y):
        return x + y

    runtime = None
    if with_agent:
        home = tempfile.mkdtemp(prefix="z4j-bench-")
        runtime = install_agent(engines=[CeleryEngineAdapter(celery_app=app)], home=home, **creds["kwargs"])
    for i in range(200):  # warm up
        add.delay(i, i)
    started = time.perf_counter()
    for i in range(calls):
        add.delay(i, 1)
    elapsed = time.perf_counter() - started
    if runtime is not None:
        runtime.flush(30)
        runtime.stop(5)
        agent_module._reset_for_tests()
    return elapsed / calls * 1e6


def prefork_round(creds: dict, tasks: int, with_agent: bool) -> float:
    import redis

    queue = unique_queue("z4jbench")
    home = tempfile.mkdtemp(prefix="z4j-bench-")
    env = dict(creds["env"]) if with_agent else {}
    worker = Worker(queue=queue, broker=REDIS_BROKER, pool="prefork", concurrency=2,
                    boot="worker_ready" if with_agent else "none", env=env, home=home)
    counter = redis.Redis.from_url(BACKEND)
    key = f"z4jbench:{queue}"
    app = Celery("bench-producer", broker=REDIS_BROKER, backend=BACKEND)
    try:
        # Warm up: the worker is ready and both pool children have run a task.
        for _ in range(20):
            app.send_task("z4jtest.count", args=(key,), queue=queue, ignore_result=True)
        deadline = time.monotonic() + 60
        while int(counter.get(key) or 0) < 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {worker.log()}")
            time.sleep(0.01)
        time.sleep(1.0)
        counter.delete(key)
        bodies = [((key,), {}) for _ in range(tasks)]
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for args, kwargs in bodies:
                app.send_task("z4jtest.count", args=args, kwargs=kwargs, queue=queue, producer=producer,
                              ignore_result=True)
        deadline = time.monotonic() + 300
        while int(counter.get(key) or 0) < tasks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not finish: {worker.log()}")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        counter.delete(key)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eager-calls", type=int, default=3000)
    parser.add_argument("--prefork-tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-prefork", action="store_true")
    opts = parser.parse_args()
    os.environ.setdefault("Z4J_HEARTBEAT_SECONDS", "10")
    brain = RemoteBrain(2 * opts.rounds + 1)
    creds = iter(brain.creds)
    try:
        without, with_ = [], []
        for _ in range(opts.rounds):
            without.append(eager_round({}, opts.eager_calls, False))
            with_.append(eager_round(next(creds), opts.eager_calls, True))
        a, b = statistics.median(without), statistics.median(with_)
        print(f"  rounds without: {[round(x, 1) for x in without]}  with: {[round(x, 1) for x in with_]}")
        print(f"eager   {opts.eager_calls} calls   without: {a:8.1f} us/call   with agent: {b:8.1f} us/call   "
              f"overhead: {b - a:+7.1f} us/call")
        if opts.skip_prefork:
            return
        without, with_ = [], []
        for _ in range(opts.rounds):
            without.append(prefork_round({}, opts.prefork_tasks, False))
            with_.append(prefork_round(next(creds), opts.prefork_tasks, True))
        a, b = statistics.median(without), statistics.median(with_)
        print(f"prefork {opts.prefork_tasks} tasks   without: {a:8.3f} s ({a / opts.prefork_tasks * 1e3:.3f} ms/task)   "
              f"with agent: {b:8.3f} s ({b / opts.prefork_tasks * 1e3:.3f} ms/task)   overhead: {(b / a - 1) * 100:+.1f}% "
              f"({(b - a) / opts.prefork_tasks * 1e6:+.0f} us/task)")
        print(f"  rounds without: {[round(x, 3) for x in without]}  with: {[round(x, 3) for x in with_]}")
    finally:
        brain.close()


if __name__ == "__main__":
    main()
