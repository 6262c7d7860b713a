"""``make bench`` = ``.venv/bin/python -m bench``: both agents side by side, one table of ratios.

    .venv/bin/python -m bench            # full run (< 10 min), writes the table into docs/performance.md
    .venv/bin/python -m bench --quick    # smoke run (~3 min), prints only
    options: --real-tasks N (Celery tasks / RQ jobs / Dramatiq messages per agent on the real brain),
             --no-real, --no-docs, --changes TEXT (the docs' "what changed since the last run"; default:
             the commits since the one the previous table names)

The reference agent (z4j-bare, z4j-celery, z4j-rq 1.13.0) is installed into .bench/ref-venv on first
use and runs only as separate processes. Brains: the local reference brain (z4j_bare.testing, its
own process) and the real z4j 1.13.0 brain (tests/interop/realbrain.py, started once per run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .suite import goals as g
from .suite import workloads as w
from .suite.common import REPO, BrainProc, load_realbrain, machine, ref_python
from .suite.report import (
    Row,
    changes_since_last,
    code_commit,
    machine_line,
    markdown_table,
    notes,
    text_table,
    write_docs,
)
from .suite.rows import build_rows


@dataclass(frozen=True)
class Plan:
    synthetic_ours: int
    synthetic_ref: int
    local_burst: int
    local_burst_rq: int
    local_burst_dq: int
    eager_calls: int
    eager_rounds: int
    prefork_tasks: int
    rq_jobs: int
    overhead_rounds: int
    rq_parent_rounds: int
    start_runs: int
    backlog_ours: int
    backlog_per_event: int
    backlog_ref: int
    ref_cap_s: float
    ceiling_events: int
    real_tasks: int


FULL = Plan(100_000, 5_000, 1000, 500, 1000, 3000, 2, 2000, 1000, 2, 3, 7, 200_000, 20_000, 100_000, 30.0, 2000, 500)
QUICK = Plan(20_000, 2_000, 200, 100, 200, 1000, 1, 200, 40, 1, 1, 3, 50_000, 5_000, 10_000, 15.0, 600, 100)
# (engine, burst workload, the agents it runs): there is no reference Dramatiq agent
BURSTS = (("celery", w.celery_burst, ("ours", "ref")), ("rq", w.rq_burst, ("ours", "ref")),
          ("dramatiq", g.dramatiq_burst, ("ours",)))


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)


def run(plan: Plan, *, real: bool, clock: Clock) -> dict[str, Any]:
    res: dict[str, Any] = {"plan": plan.__dict__}
    ref = ref_python()
    clock.say(f"reference agent venv: {ref}")
    with BrainProc() as brain:
        clock.say(f"local brain (own process) at {brain.url}")
        _local_brain(res, plan, brain, ref, clock)
    if real:
        _real_brain(res, plan, ref, clock)
    return res


def _local_brain(res: dict[str, Any], plan: Plan, brain: BrainProc, ref: Any, clock: Clock) -> None:
    local = w.LocalTarget(brain)
    # (a) local brain: synthetic producer through each agent's public API
    res["syn_ours"] = w.synthetic("ours", brain, plan.synthetic_ours, ref, 120)
    clock.say(f"synthetic ours: {_short(res['syn_ours'])}")
    res["syn_ref"] = w.synthetic("ref", brain, plan.synthetic_ref, ref, plan.ref_cap_s * 2)
    clock.say(f"synthetic ref: {_short(res['syn_ref'])}")
    # (a) local brain: real Celery prefork / RQ fork / Dramatiq bursts
    sizes = {"celery": plan.local_burst, "rq": plan.local_burst_rq, "dramatiq": plan.local_burst_dq}
    for engine, fn, agents in BURSTS:
        for agent in agents:
            key = f"local_{engine}_{agent}"
            res[key] = fn(agent, local, sizes[engine], ref, 300)
            clock.say(f"{engine} burst {sizes[engine]} -> local brain, {agent}: {_short(res[key])}")
    # (b) per-task overhead, rounds alternate none/ours/ref so machine noise hits all three
    for name, fn, n, rounds in (("eager", w.eager, plan.eager_calls, plan.eager_rounds),
                                ("prefork", w.prefork, plan.prefork_tasks, plan.overhead_rounds),
                                ("rqfork", w.rq_fork, plan.rq_jobs, plan.overhead_rounds)):
        runs = w.alternating(rounds, lambda agent, fn=fn, n=n: fn(agent, brain, n, ref))
        res[f"overhead_{name}"] = {a: w.median(v) for a, v in runs.items()} | {"runs": runs, "n": n}
        clock.say(f"overhead {name} (n={n}): {runs}")
    # (c) memory: the RQ forking parent; (c)-(e) backlog; (f) a cron script's start
    res["rq_parent"] = g.rq_parents(brain, ref, plan.rq_parent_rounds)
    clock.say(f"rq worker parent (connected, idle): {res['rq_parent']}")
    res["backlog_ours"] = w.backlog("ours", brain, plan.backlog_ours, ref, per_event=plan.backlog_per_event, cap=120)
    clock.say(f"backlog ours: {_short(res['backlog_ours'])}")
    res["backlog_ref"] = w.backlog("ref", brain, plan.backlog_ref, ref, per_event=0, cap=plan.ref_cap_s)
    clock.say(f"backlog ref: {_short(res['backlog_ref'])}")
    res["start"] = g.cron_starts(brain, ref, plan.start_runs)
    clock.say(f"cron script start (ms, import -> install_agent): {res['start']['runs']}")


def _real_brain(res: dict[str, Any], plan: Plan, ref: Any, clock: Clock) -> None:
    rb = load_realbrain()
    home = tempfile.mkdtemp(prefix="z4j-bench-realbrain-")
    brain = rb.RealBrain(home=home)
    try:
        brain.start()
        clock.say(f"real brain z4j {rb.BRAIN_VERSION} at {brain.url}")
        sys.path.insert(0, str(REPO / "bench"))
        from ceiling_probe import measure_ceiling

        target = w.RealTarget(brain)
        for engine, fn, agents in BURSTS:
            # The brain slows down as its database grows: probe it right before each engine's
            # bursts, so each is compared with the ceiling of the brain it actually met.
            creds = brain.mint_agent(project=f"ceiling-probe-{engine}", name="probe")
            res[f"ceiling_{engine}"] = measure_ceiling(brain.url, creds, events=plan.ceiling_events, batch=500,
                                                       inflight=4)
            clock.say(f"ceiling probe before the {engine} bursts: {_short(res[f'ceiling_{engine}'])}")
            for agent in agents:
                key = f"real_{engine}_{agent}"
                res[key] = fn(agent, target, plan.real_tasks, ref, 400)
                clock.say(f"{engine} burst {plan.real_tasks} -> real brain, {agent}: {_short(res[key])}")
    finally:
        brain.stop()
        shutil.rmtree(home, ignore_errors=True)


def _short(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()
                     if k not in ("plan", "evicted", "runs"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads: a smoke run, docs untouched")
    parser.add_argument("--real-tasks", type=int, help="Celery tasks, RQ jobs and Dramatiq messages per agent on the real brain")
    parser.add_argument("--no-real", action="store_true", help="skip the real z4j brain (local brain only)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/performance.md")
    parser.add_argument("--changes", help="what changed since the last run, for the docs (default: the commits "
                                          "since the one the previous table names)")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="no run: write the docs table again from a raw "
                                                               "results file (.bench/results-*.json)")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    plan = QUICK if args.quick else FULL
    if args.real_tasks:
        plan = Plan(**{**plan.__dict__, "real_tasks": args.real_tasks})
    command = "make bench" if not argv and len(sys.argv) == 1 else "python -m bench " + " ".join(argv or sys.argv[1:])

    clock = Clock()
    mach = machine()
    doc = REPO / "docs" / "performance.md"
    mach["code"] = code_commit(REPO)
    mach["changes"] = args.changes or changes_since_last(REPO, doc)
    print(f"machine: {machine_line(mach)}\ncode: commit {mach['code']}; changes: {mach['changes']}", flush=True)
    res = run(plan, real=not args.no_real, clock=clock)
    res["machine"] = mach
    res["load_at_end"] = __import__("os").getloadavg()
    rows = build_rows(res, plan)
    elapsed = time.monotonic() - clock.t0
    res["command"], res["elapsed_s"] = command, elapsed

    print()
    print(text_table(rows))
    print()
    for line in notes(rows):
        print(f"  * {line}")
    load_end = ", ".join(f"{x:.2f}" for x in res["load_at_end"])
    print(f"\nmachine: {machine_line(mach)}; at end {load_end}\ncommand: {command}; wall time {elapsed:.0f} s")

    out_dir = REPO / ".bench"
    out_dir.mkdir(exist_ok=True)
    raw = out_dir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.write_text(json.dumps(res, indent=1, default=str))
    print(f"raw results: {raw}")
    if not args.quick and not args.no_docs:
        section = docs_section(rows, mach, res, command, elapsed, plan)
        write_docs(doc, section)
        print("table written to docs/performance.md (section 'Side by side')")
    return 0


def render(raw: Path) -> int:
    """The docs table from a finished run's raw results, with the rows as this checkout builds them."""
    res = json.loads(raw.read_text())
    plan = Plan(**res["plan"])
    rows = build_rows(res, plan)
    print(text_table(rows))
    section = docs_section(rows, res["machine"], res, res.get("command", "make bench"), res.get("elapsed_s", 0.0), plan)
    write_docs(REPO / "docs" / "performance.md", section)
    print(f"table written to docs/performance.md (section 'Side by side') from {raw}")
    return 0


def docs_section(rows: list[Row], mach: dict[str, Any], res: dict[str, Any], command: str, elapsed: float,
                 plan: Plan) -> str:
    load_end = ", ".join(f"{x:.2f}" for x in res["load_at_end"])
    lines = [
        "## Side by side: our agent vs the reference agent (z4j-bare/celery/rq 1.13.0)",
        "",
        (f"Command: `{command}` (= `.venv/bin/python -m bench`; `--quick` for a smoke run). Run of "
         f"{mach['date']}, {elapsed:.0f} s wall."),
        f"Machine: {machine_line(mach)}; at the end {load_end}.",
        f"Code: commit {mach['code']}. What changed since the last run: {mach['changes'].rstrip('.')}.",
        "",
        markdown_table(rows),
        "",
        "Notes per row:",
        "",
        *[f"- {line}" for line in notes(rows)],
        "",
        METHOD,
    ]
    return "\n".join(lines)


METHOD = """How it is measured (bench/suite/, one process per agent run, both agents on the same workload):

- Reference agent: `z4j-bare`, `z4j-celery`, `z4j-rq` 1.13.0 in `.bench/ref-venv` (built by
  bench/refagent.py), always a separate process started with that venv's interpreter (`-P`, cwd
  outside the checkout). Celery: the reference's own `worker_ready` auto-bootstrap (`import
  z4j_celery` in the app module) with `-E`, because without `-E` its prefork capture reports only
  `task.received` (real-brain.md); baselines run without `-E`. RQ: its documented
  `register_worker_bootstrap()` in the module holding the worker class. Ours: `install_agent` with
  `CeleryEngineAdapter` from `worker_ready`; `rq worker --worker-class z4j_rq.Worker`.
- Brains: the local reference brain (`z4j_bare.testing.LocalBrain`, in-memory SQLite) runs in its
  own process so agent and brain each get a core; the real `z4j==1.13.0` brain is started once
  per run with a fresh home, one fresh project and agent per agent run. The ceiling probe
  (bench/ceiling_probe.py) runs on that brain right before each engine's bursts (the brain
  slows down as its database grows; each burst is compared with the probe just before it).
- (a) Bursts: worker started, one warm-up task must reach the brain (agent connected), then N
  tasks are published at once; time from the first publish until the brain counts N+1 succeeded
  tasks (local: its event store, polled every 10 ms; real: `GET /tasks?state=success`, every
  0.25 s). Events/s on the real brain = tasks x the events per task each agent sent for the same
  workload on the local brain. Synthetic: a bare process, brain up and connected, pushes N events
  through the agent's public capture API as fast as it can; time until the agent holds no
  unacknowledged event.
- (b) Overhead = agent run minus a no-agent run of the same workload (medians), agent streaming to
  the local brain. Eager: `delay()` with `task_always_eager`, us/call. Prefork: `celery worker -P
  prefork -c 2` on Redis, N no-op tasks published at once, time until a Redis counter the task
  increments reaches N. RQ: `rq worker --burst` (fork), span from the first job's `started_at` to
  the last `ended_at` (RQ's own stamps) / N.
- Dramatiq (ours only: the reference has no Dramatiq agent): `dramatiq benchdramatiq -p 2 -t 4`
  (bench/bench_dramatiq.py's command, our adapter in the app module) on Redis db 6, N no-op
  messages pushed in one pipeline; its real-brain row is met at >= 90% of the ceiling, or of what
  the same worker offered the local brain when that is lower (worker-bound).
- Prefork throughput kept = no-agent time / agent time of the (b) prefork runs.
- (c) RQ forking parent: `rq worker` (not burst) with each agent's setup, after one job reached
  the brain (none: after one job finished) and a second of quiet; VmRSS and threads of the main
  process (the one that forks a work-horse per job) from /proc/<pid>/status.
- (c)-(e) A bare process with the RQ adapter: RSS (VmRSS) after importing python+redis+rq, after
  `install_agent`, after the burst with the brain paused (connections refused); then the brain
  resumes and the drain is timed from the agent's reconnect until its buffer is empty. Capture CPU
  is `time.process_time()` over events recorded one per call; delivery CPU is the process's CPU
  during the drain (I/O thread alone from /proc/self/task).
- (f) Cron script start: a fresh `python -P` process imports redis + rq (the script's engine),
  then the clock runs from before the agent's import until `install_agent` returns (ours: `from
  z4j_bare import install_agent` + `z4j_rq.RqEngineAdapter`; ref: its `z4j_bare.install` +
  `z4j_rq.engine.RqEngineAdapter`, `dev_mode=True`), credentials of the local brain in the
  environment, one Z4J_HOME per agent kept across runs (as a cron job's is), one unmeasured run
  first; medians (bench/suite/probes/start.py).
- Every process the bench starts keeps its bytecode in `.bench/pycache` (PYTHONPYCACHEPREFIX;
  PYTHONDONTWRITEBYTECODE is dropped): an installed package has its .pyc, and without them our
  editable checkout would be compiled from source at every start (about 50 ms of the start row).
- Raw numbers of every run: `.bench/results-<time>.json`. Figures swing with CPU contention on
  this shared 2-core VM: compare the two columns of one run, not runs with each other."""


if __name__ == "__main__":
    raise SystemExit(main())
