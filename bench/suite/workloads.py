"""The measurements: each function runs one agent (ours | ref | none) on one workload, returns a dict."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    CELERY_BROKER,
    OUR_PY,
    PROBES,
    RQ_REDIS,
    BrainProc,
    CeleryWorker,
    agent_env,
    celery_producer,
    clean_env,
    outside_cwd,
    publish_count_tasks,
    python_for,
    rq_worker_cmd,
    unique,
    wait_counter,
)

FINAL = ("success", "failure", "revoked", "rejected")


def _tmp(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"z4j-bench-{prefix}-")


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


# ---------------------------------------------------------------------------------------------
# brains: the local one (separate process) and the real one, behind one small interface


class LocalTarget:
    """The shared local brain; counts are taken relative to the moment the run's agent was minted."""

    kind = "local"

    def __init__(self, brain: BrainProc) -> None:
        self.brain = brain
        self.base_succeeded = 0

    def mint(self, agent: str, engine: str) -> dict[str, str]:
        self.rebase(engine)
        return self.brain.mint(f"{agent}-{engine}")

    def _count(self, engine: str) -> int:
        return self.brain.call("count", engine=engine, kind="task.succeeded")["n"]

    def succeeded(self, engine: str) -> int:
        return self._count(engine) - self.base_succeeded

    def rebase(self, engine: str) -> None:
        self.base_succeeded = self._count(engine)

    def wait_succeeded(self, engine: str, n: int, timeout: float) -> bool:
        return self.brain.call("wait_count", engine=engine, kind="task.succeeded", n=self.base_succeeded + n,
                               timeout=timeout)["ok"]

    def events(self, engine: str) -> int:
        return self.brain.call("count", engine=engine)["n"]


class RealTarget:
    """The real z4j 1.13.0 brain; a fresh project per agent run so counts never mix."""

    kind = "real"

    def __init__(self, brain: Any) -> None:
        self.brain = brain
        self.project = ""
        self.base = 0

    def mint(self, agent: str, engine: str) -> dict[str, str]:
        self.project = f"{agent}-{engine}-{os.urandom(3).hex()}"
        self.base = 0
        return self.brain.mint_agent(project=self.project, name=f"{agent}-{engine}").as_env()

    def succeeded(self, engine: str) -> int:
        return self.brain.task_count(self.project, state="success") - self.base

    def rebase(self, engine: str) -> None:
        self.base += self.succeeded(engine)

    def wait_succeeded(self, engine: str, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.succeeded(engine) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        return True

    def events(self, engine: str) -> int | None:
        return None  # the real brain's API has no event count; see events_per_task


# ---------------------------------------------------------------------------------------------
# (a) bursts: first enqueue -> the brain shows every task final


def warm_up(target: Any, engine: str, send_one: Any, settled: Any, describe: Any, timeout: float = 120) -> None:
    """Send a task every 3 s until one reaches the brain (worker up, agent connected and capturing).

    The reference's prefork capture listens to broker events from ``worker_ready`` on: a task
    that ran before that is never reported, so one warm-up task is not always enough. Once one
    arrived, wait until the worker ran every warm-up task plus a second, then count from zero.
    """
    deadline = time.monotonic() + timeout
    sent, last = 0, 0.0
    while target.succeeded(engine) < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no warm-up {engine} task reached the {target.kind} brain in {timeout:.0f} s\n{describe()}")
        if time.monotonic() - last > 3:
            send_one()
            sent, last = sent + 1, time.monotonic()
        time.sleep(0.05)
    while not settled(sent) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)
    target.rebase(engine)


@dataclass
class CountingWorker:
    """A prefork worker on its own queue running ``bench.count`` tasks, and their Redis counter."""

    worker: CeleryWorker
    app: Any
    key: str
    counter: Any

    def publish(self, n: int) -> None:
        publish_count_tasks(self.app, self.worker.queue, self.key, n)

    def done(self) -> int:
        return int(self.counter.get(self.key) or 0)

    def wait(self, n: int, timeout: float, what: str) -> float:
        return wait_counter(self.key, n, timeout, what, self.worker)


@contextmanager
def counting_worker(agent: str, creds: dict[str, str] | None, ref_py: Path | None, tag: str) -> Iterator[CountingWorker]:
    import redis

    home = _tmp(f"{tag}-{agent}")
    queue = unique(f"{tag}-{agent}")
    # the reference only captures prefork tasks with -E (real-brain.md); ours never needs it
    worker = CeleryWorker(agent, agent_env(agent, creds, home), ref_py, queue=queue, events=agent == "ref",
                          log_dir=home)
    try:
        yield CountingWorker(worker, celery_producer(), f"bench:{queue}", redis.Redis.from_url(CELERY_BROKER))
    finally:
        worker.stop()
        shutil.rmtree(home, ignore_errors=True)


def celery_burst(agent: str, target: Any, n: int, ref_py: Path | None, timeout: float) -> dict[str, Any]:
    with counting_worker(agent, target.mint(agent, "celery"), ref_py, "burst") as cw:
        warm_up(target, "celery", lambda: cw.publish(1), lambda sent: cw.done() >= sent, cw.worker.log)
        cw.counter.delete(cw.key)
        events_before = target.events("celery")
        t0 = time.perf_counter()
        cw.publish(n)
        t_worker = cw.wait(n, timeout, f"celery burst ({agent})") - t0
        ok = target.wait_succeeded("celery", n, timeout)
        seconds = time.perf_counter() - t0
        events = target.events("celery")
    out = {"agent": agent, "brain": target.kind, "engine": "celery", "tasks": n, "ok": ok, "seconds": seconds,
           "worker_seconds": t_worker, "tasks_per_s": n / seconds}
    if events is not None:
        out["events"] = events - events_before
    return out


def rq_burst(agent: str, target: Any, n: int, ref_py: Path | None, timeout: float) -> dict[str, Any]:
    from redis import Redis
    from rq import Queue

    home = _tmp(f"rb-{agent}")
    queue = unique(f"burst-{agent}")
    creds = target.mint(agent, "rq")
    conn = Redis.from_url(RQ_REDIS)
    q = Queue(queue, connection=conn)
    log_path = os.path.join(home, "rq.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(rq_worker_cmd(agent, ref_py, queue, burst=False), env=clean_env(agent_env(agent, creds, home)),
                                cwd=outside_cwd(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        warm_up(target, "rq", lambda: q.enqueue("benchjobs.noop"), lambda sent: q.count == 0 and not q.started_job_registry.count,
                lambda: Path(log_path).read_text()[-2000:])
        events_before = target.events("rq")
        t0 = time.perf_counter()
        q.enqueue_many([Queue.prepare_data("benchjobs.noop") for _ in range(n)])
        ok = target.wait_succeeded("rq", n, timeout)
        seconds = time.perf_counter() - t0
        events = target.events("rq")
    finally:
        _stop(proc)
        _flush(RQ_REDIS)
        shutil.rmtree(home, ignore_errors=True)
    out = {"agent": agent, "brain": target.kind, "engine": "rq", "tasks": n, "ok": ok, "seconds": seconds,
           "tasks_per_s": n / seconds}
    if events is not None:
        out["events"] = events - events_before
    return out


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ---------------------------------------------------------------------------------------------
# probes in bare processes: synthetic end to end, backlog (memory, drain, CPU)


def _probe_cmd(agent: str, ref_py: Path | None, *args: Any) -> list[str]:
    if agent == "ref":
        return [str(ref_py), "-P", str(PROBES / "agent_ref.py"), *map(str, args)]
    return [str(OUR_PY), str(PROBES / "agent_ours.py"), *map(str, args)]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def synthetic(agent: str, brain: BrainProc, n: int, ref_py: Path | None, cap: float) -> dict[str, Any]:
    home = _tmp(f"syn-{agent}")
    env = clean_env({**brain.mint(f"{agent}-syn"), "Z4J_HOME": home}, pythonpath=None)
    before = brain.call("count")["n"]
    args = ("synthetic", n) if agent == "ours" else ("synthetic", n, cap)
    proc = subprocess.run(_probe_cmd(agent, ref_py, *args), check=False, env=env, cwd=outside_cwd(), capture_output=True,
                          text=True, timeout=cap + 120)
    shutil.rmtree(home, ignore_errors=True)
    lines = _json_lines(proc.stdout)
    if not lines:
        raise RuntimeError(f"{agent} synthetic probe failed: {proc.stderr[-2000:]}")
    res = lines[-1]
    res["brain_events"] = brain.call("count")["n"] - before
    res["events_per_s"] = res["events"] / res["seconds"]
    return res


def backlog(agent: str, brain: BrainProc, n: int, ref_py: Path | None, *, per_event: int, cap: float) -> dict[str, Any]:
    home = _tmp(f"bl-{agent}")
    env = clean_env({**brain.mint(f"{agent}-backlog"), "Z4J_HOME": home}, pythonpath=None)
    brain.call("pause")
    args = ("backlog", n, per_event) if agent == "ours" else ("backlog", n, cap)
    proc = subprocess.Popen(_probe_cmd(agent, ref_py, *args), env=env, cwd=outside_cwd(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        filled = _read_stage(proc, "filled")
        before = brain.call("count")["n"]
        brain.call("resume")
        brain_cpu0 = brain.cpu_seconds()
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        drained = _read_stage(proc, "drained")
        drained["brain_cpu_seconds"] = brain.cpu_seconds() - brain_cpu0
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        brain.call("resume")
        shutil.rmtree(home, ignore_errors=True)
    drained["brain_events"] = brain.call("count")["n"] - before
    return {**filled, **drained}


def _read_stage(proc: subprocess.Popen, stage: str) -> dict[str, Any]:
    for line in proc.stdout:
        if line.startswith("{"):
            data = json.loads(line)
            if data.get("stage") == stage:
                return data
    raise RuntimeError(f"probe exited before stage {stage!r} (exit {proc.poll()})")


# ---------------------------------------------------------------------------------------------
# (b) per-task overhead


def eager(agent: str, brain: BrainProc | None, calls: int, ref_py: Path | None) -> float:
    """us per eager ``delay()`` call, in a fresh process (agent streaming to the local brain)."""
    home = _tmp(f"eager-{agent}")
    env = agent_env(agent, brain.mint(f"{agent}-eager") if brain and agent != "none" else None, home)
    py = python_for(agent, ref_py)
    cmd = [str(py), "-P", str(PROBES / "eager.py"), str(calls)]
    proc = subprocess.run(cmd, check=False, env=clean_env(env), cwd=outside_cwd(), capture_output=True, text=True, timeout=300)
    shutil.rmtree(home, ignore_errors=True)
    lines = _json_lines(proc.stdout)
    if not lines:
        raise RuntimeError(f"eager probe ({agent}) failed: {proc.stderr[-2000:]}")
    return lines[-1]["us_per_call"]


def prefork(agent: str, brain: BrainProc, n: int, ref_py: Path | None) -> float:
    """Seconds from first publish until a prefork -c2 worker has run n no-op tasks."""
    creds = brain.mint(f"{agent}-prefork") if agent != "none" else None
    with counting_worker(agent, creds, ref_py, "pf") as cw:
        cw.publish(20)  # both pool children have run tasks
        cw.wait(20, 90, f"prefork warm-up ({agent})")
        if agent != "none":  # the agent is connected and capturing before the clock starts
            target = LocalTarget(brain)
            target.rebase("celery")
            warm_up(target, "celery", lambda: cw.publish(1), lambda sent: cw.done() >= 20 + sent, cw.worker.log)
        time.sleep(0.5)
        cw.counter.delete(cw.key)
        t0 = time.perf_counter()
        cw.publish(n)
        return cw.wait(n, 300, f"prefork ({agent})") - t0


def rq_fork(agent: str, brain: BrainProc, n: int, ref_py: Path | None) -> float:
    """ms per job of ``rq worker --burst`` (fork): span from first start to last end, RQ's own stamps."""
    from redis import Redis
    from rq import Queue

    home = _tmp(f"rqf-{agent}")
    queue = unique(f"rqf-{agent}")
    creds = brain.mint(f"{agent}-rqfork") if agent != "none" else None
    conn = Redis.from_url(RQ_REDIS)
    q = Queue(queue, connection=conn)
    ids = [j.id for j in q.enqueue_many([Queue.prepare_data("benchjobs.noop") for _ in range(n)])]
    try:
        proc = subprocess.run(rq_worker_cmd(agent, ref_py, queue, burst=True), check=False, env=clean_env(agent_env(agent, creds, home)),
                              cwd=outside_cwd(), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"rq worker ({agent}) failed: {proc.stderr[-2000:]}")
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(f"rq:job:{job_id}", [b"status", b"started_at", b"ended_at"])
            rows = pipe.execute()
        if any(r[0] != b"finished" for r in rows):
            raise RuntimeError(f"rq ({agent}): not every job finished")
        span = max(_epoch(r[2]) for r in rows) - min(_epoch(r[1]) for r in rows)
        return span * 1000 / n
    finally:
        _flush(RQ_REDIS)
        shutil.rmtree(home, ignore_errors=True)


def _epoch(raw: bytes) -> float:
    from datetime import UTC, datetime

    text = raw.decode()
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def alternating(rounds: int, measure: Callable[[str], Any],
                after_round: Callable[[dict[str, list[Any]]], None] | None = None) -> dict[str, list[Any]]:
    """``measure(agent)`` for no agent, ours and the reference in turn, ``rounds`` times, so machine
    noise hits all three alike; ``after_round`` sees the results so far."""
    runs: dict[str, list[Any]] = {"none": [], "ours": [], "ref": []}
    for _ in range(rounds):
        for agent, values in runs.items():
            values.append(measure(agent))
        if after_round is not None:
            after_round(runs)
    return runs
