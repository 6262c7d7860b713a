"""Our agent in a bare process, for the side-by-side bench (run by the project venv).

    python agent_ours.py synthetic N     brain up: emit N events as fast as the public API allows
                                          (EventSink.emit_many, 1000 per call) and time until all acked
    python agent_ours.py backlog N M      brain down: RSS/CPU around an N-event burst, then (after the
                                          driver resumes the brain and writes GO) time the drain

Credentials and Z4J_HOME come from the environment. Prints one JSON object per stage on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import logging

import procstat
import redis
import rq  # noqa: F401
import structlog

# This script is the host application: keep stdout for the JSON results.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                    logger_factory=structlog.PrintLoggerFactory(sys.stderr))

DATA = {"task_name": "bench.noop", "queue": "bench", "worker": "bench@127.0.0.1", "args": [1, "x"], "kwargs": {}}
IO_THREADS = ("z4j-",)


def out(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def install(**extra):
    from z4j_bare import install_agent
    from z4j_rq import RqEngineAdapter

    conn = redis.Redis.from_url(os.environ.get("Z4J_BENCH_RQ_REDIS", "redis://127.0.0.1:6379/8"))
    return install_agent(engines=[RqEngineAdapter(connection=conn)], **extra)


def wait_connected(runtime, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while not runtime.health()["connected"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"agent did not connect: {runtime.health()['last_failure']}")
        time.sleep(0.005)
    return time.perf_counter()


def synthetic(n: int) -> None:
    runtime = install()
    wait_connected(runtime)
    sink = runtime.sinks["rq"]
    chunk = 1000
    cpu0, t0 = procstat.cpu(), time.perf_counter()
    for start in range(0, n, chunk):
        sink.emit_many([("task.succeeded", f"syn-{i}", DATA, None) for i in range(start, min(n, start + chunk))])
    t_captured = time.perf_counter()
    ok = runtime.flush(120)
    t1 = time.perf_counter()
    out(stage="synthetic", ok=ok, events=n, seconds=t1 - t0, capture_seconds=t_captured - t0,
        cpu_seconds=procstat.cpu() - cpu0, acked=runtime.health()["events_acked"])
    runtime.stop(5)


def backlog(n: int, per_event: int) -> None:
    rss0 = procstat.rss_mib()
    runtime = install(backoff_max_connection=1.0)
    time.sleep(0.5)  # let the I/O thread settle into its reconnect loop
    rss1 = procstat.rss_mib()
    sink = runtime.sinks["rq"]
    # Per-event hook path first (what a Celery/RQ hook does), timed for CPU per event ...
    cpu0, t0 = procstat.cpu(), time.perf_counter()
    for i in range(per_event):
        sink.emit("task.received", f"b-{i}", DATA)
    capture_cpu, capture_wall = procstat.cpu() - cpu0, time.perf_counter() - t0
    # ... then the rest of the burst in bulk, to reach N quickly.
    for start in range(per_event, n, 1000):
        sink.emit_many([("task.received", f"b-{i}", DATA, None) for i in range(start, min(n, start + 1000))])
    rss2 = procstat.rss_mib()
    depth = runtime.buffer.depth_after_ingest()  # (the I/O thread would within a second)
    out(stage="filled", rss_before=rss0, rss_installed=rss1, rss_after_burst=rss2, depth=depth,
        capture_cpu_per_1000=capture_cpu / per_event * 1000, capture_us_per_event=capture_wall / per_event * 1e6,
        evicted=runtime.buffer.telemetry_loss())
    if sys.stdin.readline().strip() != "GO":
        return
    io = procstat.threads_named(IO_THREADS)
    cpu0, io0, t_go = procstat.cpu(), procstat.thread_cpu(io), time.perf_counter()
    t_conn = wait_connected(runtime, 60)
    while runtime.buffer.depth() > 0:
        if time.perf_counter() - t_conn > 120:
            break
        time.sleep(0.005)
    t_done = time.perf_counter()
    remaining = runtime.buffer.depth_after_ingest()
    out(stage="drained", events=depth - remaining, remaining=remaining, reconnect_seconds=t_conn - t_go,
        drain_seconds=t_done - t_conn, cpu_seconds=procstat.cpu() - cpu0, io_thread_cpu=procstat.thread_cpu(io) - io0,
        rss_after_drain=procstat.rss_mib())
    runtime.stop(5)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "synthetic":
        synthetic(int(sys.argv[2]))
    else:
        backlog(int(sys.argv[2]), int(sys.argv[3]))
