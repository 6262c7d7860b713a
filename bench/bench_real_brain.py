"""End-to-end ingest rate of the real z4j 1.13.0 brain fed by our agent in a Celery prefork worker.

    .venv/bin/python bench/bench_real_brain.py [--tasks 1000] [--no-ceiling] [--no-local] [--json]
        [--transports ws,longpoll] [--brain-max-payload BYTES]

1. Starts a fresh real brain (tests/interop/realbrain.py; its own virtualenv, cached).
2. Ceiling, side by side: bench/ceiling_probe.py's optimal signed batches (3000 events, frames
   of 500, 4 in flight) on the same brain, so the agent figure can be read against what the
   brain can do at best on this machine right now (figures swing ~2x with CPU contention).
3. Agent: ``celery worker -P prefork -c 2`` (no -E, Redis broker, agent installed from
   worker_init, default agent settings). N ``interop.add`` tasks are published at once; the
   clock runs from the first publish until the brain's HTTP API counts N tasks in ``success``.
   events/s = events the agent delivered / that time.
4. The same workload against the LocalBrain (in-process), which counts the events the agent
   sent per task (so the real-brain figure uses a measured events-per-task, not an assumption)
   and shows how fast the agent goes when the brain is not the bottleneck.
5. ``--transports ws,longpoll`` runs step 3 once per transport on the same brain, one after the
   other (``Z4J_TRANSPORT``), for a side-by-side figure. ``--brain-max-payload`` starts the brain
   with that ``Z4J_MAX_PAYLOAD_SIZE_BYTES`` (its REST body limit, 8 KiB by default, which bounds
   each long-poll upload).

Not part of CI (about 2 minutes). Results: docs/performance.md, section "Interop".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from interop.realbrain import RealBrain
from interop.workers import (
    CeleryWorker,
    celery_producer,
    unique,
    wait_until,
)

WITHHELD_ACK = "withholding ack so the agent re-sends"


def _ceiling_probe():
    spec = importlib.util.spec_from_file_location("z4j_ceiling_probe", ROOT / "bench" / "ceiling_probe.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def publish_adds(app: Any, queue: str, n: int, prefix: str) -> float:
    """Publish ``n`` interop.add tasks; returns the monotonic time of the first publish."""
    first = 0.0
    with app.producer_or_acquire() as producer:
        for i in range(n):
            if i == 0:
                first = time.monotonic()
            app.send_task("interop.add", args=(i, 1), task_id=f"{prefix}-{i:06d}", queue=queue, producer=producer)
    return first


def run_real(brain: RealBrain, n: int, home: Path, transport: str = "ws") -> dict[str, Any]:
    project = "bench-agent"
    creds = brain.mint_agent(project, f"bench-celery-{transport}")
    worker = CeleryWorker(queue=unique("bench-real"), agent_env={**creds.as_env(), "Z4J_TRANSPORT": transport},
                          home=home)
    try:
        wait_until(lambda: (brain.agent(project, creds.agent_id) or {}).get("state") == "online", 60,
                   lambda: f"agent never online:\n{worker.log()}", poll=0.25)
        app = celery_producer()
        before = brain.task_count(project, state="success")
        first = publish_adds(app, worker.queue, n, unique("r"))
        published = time.monotonic() - first
        progress: list[tuple[float, int]] = []

        def all_final() -> bool:
            done = brain.task_count(project, state="success") - before
            progress.append((time.monotonic() - first, done))
            return done >= n

        wait_until(all_final, 600, lambda: f"only {progress[-1][1]} of {n} tasks final:\n{worker.log()}", poll=1.0)
        elapsed = time.monotonic() - first
        log = worker.log(10**8)
        return {
            "transport": transport, "tasks": n, "seconds": round(elapsed, 2), "publish_s": round(published, 2),
            "tasks_per_s": round(n / elapsed, 1),
            "sessions": log.count("runtime.session_open"), "resends": log.count("outbox.resent"),
            "brain_withheld_acks": brain.log_tail(10**7).count(WITHHELD_ACK),
            "halfway_s": next((round(t, 1) for t, d in progress if d >= n // 2), None),
        }  # fmt: skip
    finally:
        worker.stop()


def run_local(n: int, home: Path) -> dict[str, Any]:
    from z4j_bare.testing import LocalBrain

    with LocalBrain() as local:
        creds = local.mint_agent("bench-local")
        worker = CeleryWorker(queue=unique("bench-local"), agent_env=creds.env(), home=home)
        try:
            local.wait_for_agent_online(timeout=60)
            app = celery_producer()
            first = publish_adds(app, worker.queue, n, unique("l"))

            def done() -> bool:
                return len(local.tasks(state="SUCCESS", engine="celery")) >= n

            wait_until(done, 300, lambda: f"local brain: {len(local.tasks(state='SUCCESS'))} of {n}\n{worker.log()}",
                       poll=0.2)
            elapsed = time.monotonic() - first
            events = local.event_count(engine="celery")
            task_events = events - local.event_count(engine="celery", kind="worker.online")
        finally:
            worker.stop()
    return {"tasks": n, "seconds": round(elapsed, 2), "events": events,
            "events_per_task": round(task_events / n, 3), "events_per_s": round(events / elapsed, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--no-ceiling", action="store_true", help="skip the side-by-side ceiling probe")
    parser.add_argument("--no-local", action="store_true", help="skip the LocalBrain run (assume 3 events/task)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--transports", default="ws", help="comma list of ws, longpoll: one agent run each")
    parser.add_argument("--brain-max-payload", type=int, default=None,
                        help="the brain's Z4J_MAX_PAYLOAD_SIZE_BYTES (its default: 8192)")
    args = parser.parse_args(argv)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="z4j-bench-real-"))
    out: dict[str, Any] = {"tasks": args.tasks}
    try:
        local = None if args.no_local else run_local(args.tasks, _mk(tmp / "local"))
        if local:
            out["local_brain"] = local
            print(f"local brain: {local}", file=sys.stderr, flush=True)
        brain_env = {"Z4J_MAX_PAYLOAD_SIZE_BYTES": str(args.brain_max_payload)} if args.brain_max_payload else {}
        out["brain_env"] = brain_env
        with RealBrain(home=tmp / "brain", env=brain_env) as brain:
            if not args.no_ceiling:
                probe = _ceiling_probe()
                ceiling = probe.measure_ceiling(brain.url, brain.mint_agent("bench-ceiling", "probe"),
                                                events=3000, batch=500, inflight=4)
                out["ceiling"] = {k: ceiling[k] for k in ("events_per_s", "tasks_per_s", "ack_ms_p50") if k in ceiling}
                print(f"ceiling: {out['ceiling']}", file=sys.stderr, flush=True)
            runs = [run_real(brain, args.tasks, _mk(tmp / f"real-{t}"), t) for t in transports]
        per_task = local["events_per_task"] if local else 3.0
        for real in runs:
            real["events"] = round(per_task * args.tasks)
            real["events_per_s"] = round(real["events"] / real["seconds"], 1)
        out["real_brain"] = runs[0]
        out["real_brain_by_transport"] = {r["transport"]: r for r in runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for r in out["real_brain_by_transport"].values():
            print(f"real brain, our agent over {r['transport']}, {args.tasks} Celery prefork tasks: {r['events_per_s']} "
                  f"events/s ({r['tasks_per_s']} tasks/s, {r['seconds']} s first publish -> all success in the API; "
                  f"sessions {r['sessions']}, resends {r['resends']}, brain-withheld acks {r['brain_withheld_acks']})")
        if brain_env:
            print(f"brain settings: {brain_env}")
        if "ceiling" in out:
            print(f"ceiling probe on the same brain just before: {out['ceiling']['events_per_s']} events/s")
        if "local_brain" in out:
            lb = out["local_brain"]
            print(f"local brain: {lb['events_per_s']} events/s, {lb['events_per_task']} events/task, {lb['seconds']} s")
    return 0


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
