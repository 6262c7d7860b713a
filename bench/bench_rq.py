"""Per-job overhead of the z4j agent on an RQ fork worker, side by side in one run.

    .venv/bin/python bench/bench_rq.py [--jobs 1000] [--rounds 2]

Each round enqueues N no-op jobs twice and drains them with ``rq worker --burst``: once with
rq's plain ``Worker``, once with ``z4j_rq.Worker`` reporting to a local brain. The time per job
is the span from the first job's start to the last job's end (as RQ recorded them in Redis)
divided by N, so worker start-up and the agent's connect/drain are not counted. Rounds
alternate plain/agent to spread machine noise; the median per variant is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests"), str(Path(__file__).resolve().parents[1])]

from rq import Queue  # noqa: E402

from rq_app import harness  # noqa: E402
from z4j_bare.engines.rq_jobinfo import to_epoch  # noqa: E402
from z4j_bare.testing import LocalBrain  # noqa: E402


def run_once(conn, worker_class: str, env: dict[str, str], jobs: int) -> float:
    q = Queue(harness.unique_queue("bench"), connection=conn)
    ids = [j.id for j in q.enqueue_many([Queue.prepare_data("rq_app.jobs.noop") for _ in range(jobs)])]
    proc = harness.run_burst(worker_class, [q.name], env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{worker_class} failed: {proc.stderr[-2000:]}")
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", [b"status", b"started_at", b"ended_at"])
        rows = pipe.execute()
    if any(r[0] != b"finished" for r in rows):
        raise SystemExit(f"{worker_class}: not every job finished")
    span = max(to_epoch(r[2]) for r in rows) - min(to_epoch(r[1]) for r in rows)
    conn.flushdb()
    return span * 1000 / jobs


def hook_cost(conn, jobs: int, home: str) -> tuple[float, float]:
    """The agent's own work per job in a fork worker's main process, timed directly.

    Replays what the patched ``execute_job`` does around each job (received+started before,
    final-status read from Redis + terminal event after) on real finished jobs, with a real
    SQLite buffer and redactor: no fork, so no fork noise. Returns (before_us, after_us).
    """
    import time

    from rq.worker import SimpleWorker

    from z4j_bare.buffer import BufferStore
    from z4j_bare.engines.base import EventSink
    from z4j_bare.engines.rq_capture import Capture
    from z4j_bare.redaction import Redactor

    q = Queue(harness.unique_queue("hook"), connection=conn)
    q.enqueue_many([Queue.prepare_data("rq_app.jobs.add", args=(1, 2)) for _ in range(jobs)])
    worker = SimpleWorker([q], connection=conn)
    worker.work(burst=True, logging_level="WARNING")
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    fetched = [Job.fetch(i, connection=conn) for i in FinishedJobRegistry(queue=q).get_job_ids()]
    buffer = BufferStore(Path(home) / "hook-bench.db")
    cap = Capture(EventSink("rq", buffer, Redactor()))
    t_before = t_after = 0.0
    for job in fetched:
        t0 = time.perf_counter()
        ctx = cap.before(worker, job, q)
        t1 = time.perf_counter()
        cap.after(worker, job, ctx, in_process=False)
        t2 = time.perf_counter()
        t_before += t1 - t0
        t_after += t2 - t1
    buffer.close()
    conn.flushdb()
    return t_before / len(fetched) * 1e6, t_after / len(fetched) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    conn = harness.connection()
    conn.flushdb()
    plain: list[float] = []
    agent: list[float] = []
    with LocalBrain() as brain, tempfile.TemporaryDirectory() as home:
        env = {**brain.mint_agent("bench-worker").env(), "Z4J_HOME": home}
        for n in range(args.rounds):
            plain.append(run_once(conn, "rq.worker.Worker", {}, args.jobs))
            agent.append(run_once(conn, "z4j_rq.Worker", env, args.jobs))
            print(f"round {n + 1}: plain {plain[-1]:.3f} ms/job, agent {agent[-1]:.3f} ms/job", flush=True)
        received = brain.event_count(engine="rq", kind="task.succeeded")
        before_us, after_us = hook_cost(conn, args.jobs, home)
    p, a = statistics.median(plain), statistics.median(agent)
    print(f"\n{args.jobs} no-op jobs, rq fork Worker, median of {args.rounds} rounds")
    print(f"  without agent: {p:.3f} ms/job")
    print(f"  with agent:    {a:.3f} ms/job")
    print(f"  overhead:      {a - p:+.3f} ms/job ({(a - p) / p * 100:+.1f} %)")
    print(f"  agent hook cost measured directly: before {before_us:.0f} us + after {after_us:.0f} us "
          f"= {(before_us + after_us) / 1000:.3f} ms/job")
    print(f"  brain received {received} task.succeeded events (expected {args.jobs * args.rounds})")


if __name__ == "__main__":
    main()
