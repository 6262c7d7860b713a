"""Workloads for issue 22's goals that the older ones do not cover: what the agent costs the RQ
forking parent, a cron script's start, and Dramatiq bursts (ours only: the reference has no
Dramatiq agent). Same conventions as workloads.py: one agent (ours | ref | none) per call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from .common import (
    PROBES,
    RQ_REDIS,
    BrainProc,
    agent_env,
    clean_env,
    outside_cwd,
    python_for,
    rq_worker_cmd,
    unique,
)
from .workloads import LocalTarget, _flush, _stop, _tmp, alternating, median, warm_up

# ---------------------------------------------------------------------------------------------
# the RQ forking parent: RSS of the `rq worker` main process, connected and idle


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS (MiB) and thread count of a process, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
    return out


def rq_parent(agent: str, brain: BrainProc, ref_py: Path | None) -> dict[str, Any]:
    """``rq worker`` (the process that forks a work-horse per job) after one job: its RSS and threads.

    With an agent, the clock-free part of warm_up: a job's events reached the local brain (agent
    connected and capturing), the worker is idle again, and a second passed for threads to settle.
    """
    from redis import Redis
    from rq import Queue

    home, queue = _tmp(f"rqp-{agent}"), unique(f"rqp-{agent}")
    target = LocalTarget(brain)
    creds = target.mint(agent, "rq") if agent != "none" else None
    q = Queue(queue, connection=Redis.from_url(RQ_REDIS))
    log_path = os.path.join(home, "rq.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(rq_worker_cmd(agent, ref_py, queue, burst=False),
                                env=clean_env(agent_env(agent, creds, home)), cwd=outside_cwd(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        idle = lambda sent: q.count == 0 and not q.started_job_registry.count
        describe = lambda: Path(log_path).read_text()[-2000:]
        if agent == "none":
            job = q.enqueue("benchjobs.noop")
            _wait(lambda: job.get_status(refresh=True) == "finished", 60, f"rq parent ({agent})", describe)
            time.sleep(1.0)
        else:
            warm_up(target, "rq", lambda: q.enqueue("benchjobs.noop"), idle, describe)
        if proc.poll() is not None:
            raise RuntimeError(f"rq worker ({agent}) exited\n{describe()}")
        return {"agent": agent, **proc_status(proc.pid)}
    finally:
        _stop(proc)
        _flush(RQ_REDIS)
        shutil.rmtree(home, ignore_errors=True)


def _wait(cond: Any, timeout: float, what: str, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s\n{describe()}")
        time.sleep(0.05)


def rq_parents(brain: BrainProc, ref_py: Path | None, rounds: int) -> dict[str, Any]:
    """Rounds alternate none/ours/ref; medians of the parent's RSS and threads per agent."""
    runs = alternating(rounds, lambda agent: rq_parent(agent, brain, ref_py))
    return {a: {"rss_mib": median([r["rss_mib"] for r in v]), "threads": median([r["threads"] for r in v])}
            for a, v in runs.items()} | {"runs": {a: [round(r["rss_mib"], 2) for r in v] for a, v in runs.items()}}


# ---------------------------------------------------------------------------------------------
# a cron script's start: fresh process, import the agent + install_agent


def cron_start(agent: str, env: dict[str, str], ref_py: Path | None) -> dict[str, Any]:
    """One cold run of probes/start.py; ``process_ms`` is spawn -> the result line, seen from here."""
    cmd = [str(python_for(agent, ref_py)), "-P", str(PROBES / "start.py"), agent]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=outside_cwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith("START "):
                result = json.loads(line[6:]) | {"process_ms": (time.perf_counter() - t0) * 1000}
                break
        else:
            raise RuntimeError(f"start probe ({agent}) failed: {proc.stderr.read()[-2000:]}")
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return result


def cron_starts(brain: BrainProc, ref_py: Path | None, runs: int) -> dict[str, Any]:
    """Each agent keeps one home (a cron job's buffer survives between runs); one unmeasured run
    each first (creates the buffer, warms the page cache), then ``runs`` rounds none/ours/ref."""
    envs, homes = {}, []
    for agent in ("none", "ours", "ref"):
        homes.append(_tmp(f"start-{agent}"))
        creds = brain.mint(f"{agent}-start") if agent != "none" else None
        envs[agent] = clean_env(agent_env(agent, creds, homes[-1]), pythonpath=None)
    try:
        for agent, env in envs.items():
            cron_start(agent, env, ref_py)
        out = alternating(runs, lambda agent: cron_start(agent, envs[agent], ref_py))
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    keys = ("start_ms", "engine_import_ms", "process_ms", "modules")
    return {a: {k: median([r[k] for r in v]) for k in keys} for a, v in out.items()} | {
        "runs": {a: [round(r["start_ms"], 1) for r in v] for a, v in out.items()}}


# ---------------------------------------------------------------------------------------------
# Dramatiq bursts (ours only), the command and queue of bench/bench_dramatiq.py


def dramatiq_burst(agent: str, target: Any, n: int, ref_py: Path | None, timeout: float) -> dict[str, Any]:
    """``dramatiq benchdramatiq -p 2 -t 4`` with our agent; N no-op messages pushed at once, time
    until the brain counts N succeeded (same shape as workloads.celery_burst)."""
    from bench import bench_dramatiq as dq

    if agent != "ours":
        raise ValueError("there is no reference Dramatiq agent")
    namespace, home = f"z4jbench-dqb-{uuid.uuid4().hex[:6]}", _tmp("dqb")
    q = dq.Queue(namespace)
    cmd = dq.Command(agent, target.mint(agent, "dramatiq"), namespace, home)
    try:
        dq._warm_up(q, cmd, target)
        events_before = target.events("dramatiq")
        t0 = q.push(n)
        t_worker = q.wait_drained(timeout, f"dramatiq burst ({agent})", cmd) - t0
        ok = target.wait_succeeded("dramatiq", n, timeout)
        seconds = time.perf_counter() - t0
        events = target.events("dramatiq")
    finally:
        cmd.stop()
        q.forget()
        shutil.rmtree(home, ignore_errors=True)
    out = {"agent": agent, "brain": target.kind, "engine": "dramatiq", "tasks": n, "ok": ok, "seconds": seconds,
           "worker_seconds": t_worker, "tasks_per_s": n / seconds}
    if events is not None:
        out["events"] = events - events_before
    return out

