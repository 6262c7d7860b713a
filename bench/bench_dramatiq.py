"""Dramatiq: what the agent costs per message, and how fast its events reach the real brain.

    .venv/bin/python bench/bench_dramatiq.py [--messages 4000] [--rounds 2] [--real-messages 500]
                                             [--no-real] [--json]

1. Overhead, side by side in one run: the same ``dramatiq benchdramatiq -p 2 -t 4`` command on a
   Redis broker with a no-op actor, without the agent and with it (streaming to the local brain
   in its own process), alternating ``rounds`` times. Each run boots, warms up (and, with the
   agent, waits until a message reached the brain), then N messages are pushed onto the queue in
   one pipeline (the broker's own layout: the message hash and the id list); the clock runs until
   every message is acked (Redis holds no message of the queue any more), polled every 2 ms.
   Per message = that time / N; overhead = median with agent - median without. Because wall time
   on this shared machine swings with other people's load, the CPU time of the two worker
   processes over the burst (``/proc/<pid>/stat``) is reported too, per message, and with the
   agent the CPU of the agent process until the brain stored every event (delivery).
2. Delivered events/s to the real z4j 1.13.0 brain: the ceiling probe (bench/ceiling_probe.py)
   right before, then the same command with the agent on a fresh project; N messages pushed at
   once, clock until ``GET /tasks?state=success`` counts N. Events per message are counted on
   the local brain in step 1, not assumed.

Redis: ``Z4J_BENCH_REDIS`` (else ``Z4J_TEST_REDIS``, else 127.0.0.1:6379), db 6, a fresh key namespace per run.
Results: docs/performance.md, section "Dramatiq".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.suite.common import (
    APPS,
    OUR_PY,
    REDIS_SERVER,
    BrainProc,
    clean_env,
    load_realbrain,
    machine,
)
from bench.suite.workloads import LocalTarget, RealTarget

REDIS = f"{REDIS_SERVER}/6"  # the suite uses 7 and 8 of the same server
QUEUE = "bench"


class Command:
    """``dramatiq benchdramatiq -p 2 -t 4`` with agent ``ours`` or ``none``; its log in a temp file."""

    def __init__(self, agent: str, creds: dict[str, str] | None, namespace: str, home: str) -> None:
        self.home = home
        self.log_path = Path(home) / "dramatiq.log"
        env = {"Z4J_BENCH_AGENT": agent, "Z4J_BENCH_DQ_REDIS": REDIS, "Z4J_BENCH_DQ_NS": namespace, "Z4J_HOME": home}
        if agent == "ours" and creds:
            env.update(creds)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(OUR_PY), "-m", "dramatiq", "benchdramatiq", "-p", "2", "-t", "4",
                                          "--path", str(APPS)], env=clean_env(env), cwd=home, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


def _stat(pid: int) -> tuple[int, float, int]:
    """(ppid, user+system CPU seconds, start time in ticks) of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, int(fields[19])


def children(pid: int) -> list[int]:
    """The supervisor's children, oldest first: the worker processes, then fork processes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, _, start = _stat(int(entry))
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append((start, int(entry)))
    return [p for _, p in sorted(found)]


def cpu_of(pids: list[int]) -> float:
    return sum(_stat(p)[1] for p in pids)


class Queue:
    """The bench queue in Redis, written in the broker's own layout (no agent in this process)."""

    def __init__(self, namespace: str) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS)
        self.ns = namespace

    def push(self, n: int) -> float:
        from dramatiq import Message

        pipe = self.client.pipeline(transaction=False)
        for i in range(n):
            rid = str(uuid.uuid4())
            body = Message(queue_name=QUEUE, actor_name="noop", args=(i,), kwargs={},
                           options={"redis_message_id": rid}).encode()
            pipe.hset(f"{self.ns}:{QUEUE}.msgs", rid, body)
            pipe.rpush(f"{self.ns}:{QUEUE}", rid)
        t0 = time.perf_counter()
        pipe.execute()
        return t0

    def drained(self) -> bool:
        return self.client.llen(f"{self.ns}:{QUEUE}") == 0 and self.client.hlen(f"{self.ns}:{QUEUE}.msgs") == 0

    def wait_drained(self, timeout: float, what: str, cmd: Command) -> float:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline or cmd.proc.poll() is not None:
                raise RuntimeError(f"{what}: messages left after {timeout:.0f} s\n{cmd.log()}")
            time.sleep(0.002)
        return time.perf_counter()

    def forget(self) -> None:
        for key in self.client.scan_iter(match=f"{self.ns}*"):
            self.client.delete(key)


def _workers_polling(q: Queue) -> bool:
    return q.client.zcard(f"{q.ns}:__heartbeats__") >= 2  # both worker processes fetched once


def _warm_up(q: Queue, cmd: Command, target: Any | None) -> None:
    deadline = time.monotonic() + 90
    while not _workers_polling(q):
        if time.monotonic() > deadline or cmd.proc.poll() is not None:
            raise RuntimeError(f"the dramatiq command did not start\n{cmd.log()}")
        time.sleep(0.05)
    if target is not None:  # the agent process is connected and capturing before the clock starts
        target.rebase("dramatiq")
        last = 0.0
        while target.succeeded("dramatiq") < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no warm-up message reached the {target.kind} brain\n{cmd.log()}")
            if time.monotonic() - last > 3:
                q.push(1)
                last = time.monotonic()
            time.sleep(0.05)
    q.push(200)
    q.wait_drained(60, "warm-up", cmd)
    time.sleep(1.0)
    if target is not None:
        target.rebase("dramatiq")


def overhead_run(agent: str, brain: BrainProc, n: int) -> dict[str, Any]:
    namespace = f"z4jbench-dq-{agent}-{uuid.uuid4().hex[:6]}"
    home = tempfile.mkdtemp(prefix=f"z4j-bench-dq-{agent}-")
    target = LocalTarget(brain) if agent == "ours" else None
    creds = brain.mint(f"dramatiq-{agent}") if target is not None else None
    q = Queue(namespace)
    cmd = Command(agent, creds, namespace, home)
    try:
        _warm_up(q, cmd, target)
        procs = children(cmd.proc.pid)
        workers, forks = procs[:2], procs[2:]
        events_before = target.events("dramatiq") if target is not None else 0
        cpu_workers, cpu_forks = cpu_of(workers), cpu_of(forks)
        t0 = q.push(n)
        t1 = q.wait_drained(300, f"burst ({agent})", cmd)
        worker_cpu = cpu_of(workers) - cpu_workers
        out: dict[str, Any] = {"agent": agent, "messages": n, "seconds": round(t1 - t0, 3),
                               "ms_per_message": round((t1 - t0) * 1000 / n, 4),
                               "worker_cpu_us_per_message": round(worker_cpu * 1e6 / n, 1)}
        if target is not None:
            if not target.wait_succeeded("dramatiq", n, 120):
                raise RuntimeError(f"the local brain did not get every message\n{cmd.log()}")
            out["agent_cpu_us_per_message"] = round((cpu_of(forks) - cpu_forks) * 1e6 / n, 1)
            time.sleep(0.5)
            out["events_per_message"] = round((target.events("dramatiq") - events_before) / n, 3)
        return out
    finally:
        cmd.stop()
        q.forget()
        shutil.rmtree(home, ignore_errors=True)


def real_run(n: int, tmp: Path) -> dict[str, Any]:
    realbrain = load_realbrain()
    sys.path.insert(0, str(ROOT / "bench"))
    from ceiling_probe import measure_ceiling

    out: dict[str, Any] = {}
    with realbrain.RealBrain(home=tmp / "brain") as brain:
        probe = measure_ceiling(brain.url, brain.mint_agent(project="dq-ceiling", name="probe"), events=2000,
                                batch=500, inflight=4)
        out["ceiling_events_per_s"] = probe["events_per_s"]
        target = RealTarget(brain)
        creds = target.mint("ours", "dramatiq")
        namespace = f"z4jbench-dq-real-{uuid.uuid4().hex[:6]}"
        home = str(tmp / "real-home")
        os.makedirs(home)
        q = Queue(namespace)
        cmd = Command("ours", creds, namespace, home)
        try:
            _warm_up(q, cmd, target)
            t0 = q.push(n)
            if not target.wait_succeeded("dramatiq", n, 600):
                raise RuntimeError(f"the real brain did not count {n} messages\n{cmd.log()}")
            out["seconds"] = round(time.perf_counter() - t0, 2)
        finally:
            cmd.stop()
            q.forget()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--real-messages", type=int, default=500)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"machine": machine(), "runs": []}
    t_start = time.monotonic()
    with BrainProc() as brain:
        for _ in range(args.rounds):
            for agent in ("none", "ours"):
                run = overhead_run(agent, brain, args.messages)
                result["runs"].append(run)
                print(f"{agent}: {run}", file=sys.stderr, flush=True)
    per = {a: [r["ms_per_message"] for r in result["runs"] if r["agent"] == a] for a in ("none", "ours")}
    med = {a: statistics.median(v) for a, v in per.items()}
    result["median_ms_per_message"] = med
    cpu = {a: statistics.median(r["worker_cpu_us_per_message"] for r in result["runs"] if r["agent"] == a)
           for a in ("none", "ours")}
    result["median_worker_cpu_us_per_message"] = cpu
    result["added_worker_cpu_us_per_message"] = round(cpu["ours"] - cpu["none"], 1)
    result["agent_process_cpu_us_per_message"] = statistics.median(
        r["agent_cpu_us_per_message"] for r in result["runs"] if r["agent"] == "ours")
    result["added_us_per_message"] = round((med["ours"] - med["none"]) * 1000, 1)
    result["added_percent"] = round((med["ours"] / med["none"] - 1) * 100, 1)
    per_message = statistics.median(r["events_per_message"] for r in result["runs"] if r["agent"] == "ours")
    result["events_per_message"] = per_message
    if not args.no_real:
        tmp = Path(tempfile.mkdtemp(prefix="z4j-bench-dq-real-"))
        try:
            real = real_run(args.real_messages, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        real["messages"] = args.real_messages
        real["events"] = round(per_message * args.real_messages)
        real["events_per_s"] = round(real["events"] / real["seconds"], 1)
        real["share_of_ceiling"] = round(real["events_per_s"] / real["ceiling_events_per_s"], 3)
        result["real_brain"] = real
        print(f"real brain: {real}", file=sys.stderr, flush=True)
    result["load_at_end"] = os.getloadavg()
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"per message without / with the agent (medians of {args.rounds}): {med['none']:.4f} / "
              f"{med['ours']:.4f} ms; added {result['added_us_per_message']} us ({result['added_percent']} %); "
              f"runs {per}; {per_message} events per message")
        print(f"worker-process CPU per message without / with the agent: {cpu['none']} / {cpu['ours']} us "
              f"(added {result['added_worker_cpu_us_per_message']} us); agent process (delivery) "
              f"{result['agent_process_cpu_us_per_message']} us per message")
        if "real_brain" in result:
            r = result["real_brain"]
            print(f"real brain: {r['events_per_s']} events/s ({r['messages']} messages in {r['seconds']} s), "
                  f"ceiling probe {r['ceiling_events_per_s']} events/s, share {r['share_of_ceiling']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
