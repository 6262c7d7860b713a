"""The local reference brain in its own process, driven over stdin/stdout (one JSON per line).

Run with the project venv: ``python bench/suite/brainserver.py``. It prints ``READY <url>``, then
answers each request line with one JSON line. Requests (``op`` plus arguments):

    {"op": "mint", "name": "a1", "project": "p"}   -> {"env": {...Z4J_*...}}
    {"op": "count", "engine": "celery", "kind": "task.succeeded"}  -> {"n": int}
    {"op": "wait_count", "n": 1000, "timeout": 60, "engine": ..., "kind": ...}
                                                     -> {"n": int, "ok": bool}  (polls every 10 ms)
    {"op": "final", "engine": "celery"}             -> {"tasks": int, "final": int, "events": int}
    {"op": "pause"} / {"op": "resume"}              -> {"ok": true}
    {"op": "quit"}

A separate process keeps the brain's ingest off the agent's GIL: on two cores the agent and the
brain each get one.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import structlog

from z4j_bare.testing import LocalBrain

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def main() -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    out = sys.stdout
    with LocalBrain() as brain:
        out.write(f"READY {brain.url}\n")
        out.flush()
        for line in sys.stdin:
            req = json.loads(line)
            op = req.pop("op")
            if op == "quit":
                break
            out.write(json.dumps(handle(brain, op, req)) + "\n")
            out.flush()
    return 0


def handle(brain: LocalBrain, op: str, req: dict) -> dict:
    filters = {k: req[k] for k in ("engine", "kind") if req.get(k)}
    if op == "mint":
        return {"env": brain.mint_agent(name=req.get("name", "bench"), project=req.get("project", "bench")).env()}
    if op == "count":
        return {"n": brain.event_count(**filters)}
    if op == "wait_count":
        deadline = time.monotonic() + float(req.get("timeout", 60))
        while True:
            n = brain.event_count(**filters)
            if n >= req["n"] or time.monotonic() > deadline:
                return {"n": n, "ok": n >= req["n"], "at": time.time()}
            time.sleep(0.01)
    if op == "final":
        rows = brain.tasks(engine=req.get("engine"))
        return {"tasks": len(rows), "final": sum(r["state"] in FINAL_STATES for r in rows),
                "events": brain.event_count(**filters)}
    if op == "pause":
        brain.pause()
        return {"ok": True}
    if op == "resume":
        brain.resume()
        return {"ok": True}
    return {"error": f"unknown op {op!r}"}


if __name__ == "__main__":
    raise SystemExit(main())
