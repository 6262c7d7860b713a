"""The REFERENCE agent (z4j-bare/z4j-rq 1.13.0) in a bare process, for the side-by-side bench.

Run ONLY with the reference venv's interpreter and ``-P`` from outside the checkout, so that
``z4j_bare`` is the reference package, never ours:

    <ref-venv>/bin/python -P agent_ref.py synthetic N
    <ref-venv>/bin/python -P agent_ref.py backlog N

Same stages and JSON output as agent_ours.py. The reference has no bulk API: events go one by one
through ``AgentRuntime.record_event`` (what its adapters' event pump calls), each after its own
``RedactionEngine.scrub`` so both agents redact. Credentials and Z4J_HOME come from the environment.
"""

from __future__ import annotations

import json
import os
import logging
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat
import redis
import rq  # noqa: F401

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

DATA = {"task_name": "bench.noop", "queue": "bench", "worker": "bench@127.0.0.1", "args": [1, "x"], "kwargs": {}}
DRAINED_AT = 3  # rows left: the reference buffers its own heartbeat frames too


def out(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class _RqApp:
    def __init__(self, conn) -> None:
        self.connection = conn

    @property
    def queues(self) -> list:
        return []


def install():
    from z4j_bare.install import install_agent
    from z4j_rq.engine import RqEngineAdapter

    conn = redis.Redis.from_url(os.environ.get("Z4J_BENCH_RQ_REDIS", "redis://127.0.0.1:6379/8"))
    adapter = RqEngineAdapter(rq_app=_RqApp(conn))
    # dev_mode: the lab brain speaks plain http on loopback; the reference ignores Z4J_DEV_MODE from env
    return install_agent(engines=[adapter], dev_mode=True), adapter


def emitter(adapter):
    from z4j_core.models.event import Event, EventKind

    scrub = adapter.redaction.scrub
    placeholder = uuid.uuid4()

    def make(i: int, kind=EventKind.TASK_RECEIVED) -> Event:
        return Event(id=uuid.uuid4(), project_id=placeholder, agent_id=placeholder, engine="rq", task_id=f"ev-{i}",
                     kind=kind, occurred_at=datetime.now(UTC), data=scrub(dict(DATA)))

    return make


def connected(runtime) -> bool:
    return bool(runtime.supervisor_state().get("session_id"))


def wait_connected(runtime, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while not connected(runtime):
        if time.monotonic() > deadline:
            raise SystemExit(f"reference agent did not connect: {runtime.supervisor_state()}")
        time.sleep(0.005)
    return time.perf_counter()


def wait_drained(runtime, since: float, cap: float) -> float:
    while runtime.buffer_size() > DRAINED_AT and time.perf_counter() - since < cap:
        time.sleep(0.005)
    return time.perf_counter()


def synthetic(n: int, cap: float) -> None:
    from z4j_core.models.event import EventKind

    runtime, adapter = install()
    make = emitter(adapter)
    wait_connected(runtime)
    cpu0, t0 = procstat.cpu(), time.perf_counter()
    for i in range(n):
        runtime.record_event(make(i, EventKind.TASK_SUCCEEDED))
    t_captured = time.perf_counter()
    t1 = wait_drained(runtime, t0, cap)
    remaining = runtime.buffer_size()
    out(stage="synthetic", ok=remaining <= DRAINED_AT, events=n, remaining=remaining, seconds=t1 - t0,
        capture_seconds=t_captured - t0, cpu_seconds=procstat.cpu() - cpu0)
    runtime.stop(5)


def backlog(n: int, cap: float) -> None:
    rss0 = procstat.rss_mib()
    runtime, adapter = install()
    make = emitter(adapter)
    time.sleep(0.5)
    rss1 = procstat.rss_mib()
    cpu0, t0 = procstat.cpu(), time.perf_counter()
    for i in range(n):
        runtime.record_event(make(i))
    capture_cpu, capture_wall = procstat.cpu() - cpu0, time.perf_counter() - t0
    rss2 = procstat.rss_mib()
    depth = runtime.buffer_size()
    out(stage="filled", rss_before=rss0, rss_installed=rss1, rss_after_burst=rss2, depth=depth,
        capture_cpu_per_1000=capture_cpu / n * 1000, capture_us_per_event=capture_wall / n * 1e6)
    if sys.stdin.readline().strip() != "GO":
        return
    io = procstat.threads_named(("z4j",))
    cpu0, io0, t_go = procstat.cpu(), procstat.thread_cpu(io), time.perf_counter()
    t_conn = wait_connected(runtime)
    t_done = wait_drained(runtime, t_conn, cap)
    remaining = runtime.buffer_size()
    out(stage="drained", events=depth - remaining, remaining=remaining, reconnect_seconds=t_conn - t_go,
        drain_seconds=t_done - t_conn, capped=remaining > DRAINED_AT, cpu_seconds=procstat.cpu() - cpu0,
        io_thread_cpu=procstat.thread_cpu(io) - io0, rss_after_drain=procstat.rss_mib())
    runtime.stop(2)


if __name__ == "__main__":
    mode, count, cap_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    (synthetic if mode == "synthetic" else backlog)(count, cap_s)
