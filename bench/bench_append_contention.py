"""Does the running agent slow down its host's hot path? Append latency with and without it.

    .venv/bin/python bench/bench_append_contention.py

A host thread appends two events per call (what one eager Celery task costs), 5000 times with a
0.3 ms pause between calls, first to a bare BufferStore (no agent), then through an installed
agent connected to a local brain running in another process (so the brain's work does not share
this process's GIL). The difference is what the agent's I/O thread costs the host.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

from z4j_bare import install_agent
from z4j_bare.buffer import BufferStore
from z4j_bare.engines.base import EngineAdapter
from z4j_bare.events import event_text

CALLS = 5000
BODY = event_text("task.started", "celery", "abc", {"task_name": "shop.tasks.ship", "queue": "default"})


class _Engine(EngineAdapter):
    name = "celery"


def _latencies(append) -> list[float]:
    out = []
    for _ in range(CALLS):
        started = time.perf_counter()
        append([("event", BODY, "celery"), ("event", BODY, "celery")])
        out.append(time.perf_counter() - started)
        time.sleep(0.0003)
    return sorted(out)


def _row(label: str, xs: list[float]) -> str:
    pick = lambda q: xs[int(len(xs) * q)] * 1e6  # noqa: E731
    return f"{label:<34}{pick(0.5):>9.1f}{pick(0.9):>9.1f}{pick(0.99):>9.1f}"


def main() -> None:
    bare = BufferStore(os.path.join(tempfile.mkdtemp(), "bare.sqlite"))
    without = _latencies(bare.append_many)
    bare.close()
    brain = subprocess.Popen([sys.executable, "-m", "z4j_bare.testing", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        env = {}
        while len(env) < 4:
            line = brain.stdout.readline()
            match = re.match(r"export (Z4J_\w+)=(\S+)", line)
            if match:
                env[match.group(1)] = match.group(2).strip("'")
        os.environ.update(env)
        runtime = install_agent(engines=[_Engine()], home=tempfile.mkdtemp())
        time.sleep(1.0)
        with_agent = _latencies(runtime.buffer.append_many)
        frames = runtime.outbox.stats.frames_sent
        runtime.stop()
    finally:
        brain.terminate()
        brain.wait(10)
    print(f"{CALLS} calls of append_many(2 events), microseconds")
    print(f"{'':<34}{'p50':>9}{'p90':>9}{'p99':>9}")
    print(_row("no agent (bare BufferStore)", without))
    print(_row(f"agent connected ({frames} frames)", with_agent))


if __name__ == "__main__":
    main()
