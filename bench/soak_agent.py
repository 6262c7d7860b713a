"""The agent side of ``bench/soak.py``: one process, a steady event rate, a status line a minute.

Run by the soak (inside its own mount namespace, with ``Z4J_HOME`` on a small tmpfs). It installs
the agent with a synthetic engine, emits ``--rate`` events a second, and writes one JSON line to
stdout every ``--every`` seconds. Commands arrive on stdin, one word a line:

    fill     fill the filesystem under Z4J_HOME (a full disk)
    unfill   remove the filler
    stop     stop emitting, wait for delivery (``runtime.flush``), print the final line, exit
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from z4j_bare import install_agent
from z4j_bare.engines.base import EngineAdapter, EventSink

KINDS = ("task.received", "task.started", "task.succeeded")


class SyntheticEngine(EngineAdapter):
    name = "celery"

    def __init__(self) -> None:
        self.sink: EventSink | None = None

    def capabilities(self) -> frozenset[str]:
        return frozenset()

    def attach(self, sink: EventSink) -> None:
        self.sink = sink

    def health(self) -> dict[str, Any]:
        return {"broker_type": "memory", "broker_connected": True}


class Producer(threading.Thread):
    """Emits at a steady rate, on a host thread, like a worker would."""

    def __init__(self, engine: SyntheticEngine, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.engine = engine
        self.interval = 1.0 / rate
        self.emitted = 0
        self.refused = 0
        self.halt = threading.Event()

    def run(self) -> None:
        sink = self.engine.sink
        assert sink is not None
        next_at = time.monotonic()
        n = 0
        while not self.halt.is_set():
            task_id = f"soak-{n // len(KINDS)}"
            kind = KINDS[n % len(KINDS)]
            ok = sink.emit(kind, task_id, {"task_name": "soak.noop", "queue": "default", "worker": "soak@host"})
            self.emitted += 1
            self.refused += not ok
            n += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.halt.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind (a stall): don't burst to catch up


def fill(home: Path) -> int:
    """Write a filler file until the filesystem refuses; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(home / "filler.bin", "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError:
                break
        for size in (65536, 4096, 512, 1):  # the last few blocks too
            while True:
                try:
                    written += fh.write(b"\0" * size)
                except OSError:
                    break
    return written


def status(runtime: Any, producer: Producer, home: Path, started: float) -> dict[str, Any]:
    health = runtime.health()
    return {
        "t": round(time.monotonic() - started, 1),
        "emitted": producer.emitted,
        "refused": producer.refused,
        "rss_kib": _rss_kib(),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "buffer_depth": health.get("buffer_depth"),
        "spool_files": sum(1 for p in home.rglob("*.log") if p.parent.name.endswith(".spool")),
        "state": health.get("state"),
        "events_acked": health.get("events_acked"),
        "loss": health.get("loss"),
        "events_lost_in_hooks": health.get("events_lost_in_hooks"),
    }


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--every", type=float, default=60.0)
    args = parser.parse_args()
    home = Path(os.environ["Z4J_HOME"])
    engine = SyntheticEngine()
    runtime = install_agent(engines=[engine])
    producer = Producer(engine, args.rate)
    started = time.monotonic()
    producer.start()
    lock = threading.Lock()

    def say(record: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    def report() -> None:
        while not producer.halt.wait(args.every):
            say({"kind": "status", **status(runtime, producer, home, started)})

    say({"kind": "started", "buffer_path": str(runtime.buffer.path)})
    threading.Thread(target=report, name="soak-report", daemon=True).start()
    for line in sys.stdin:
        word = line.strip()
        if word == "fill":
            say({"kind": "filled", "bytes": fill(home), "t": round(time.monotonic() - started, 1)})
        elif word == "unfill":
            (home / "filler.bin").unlink(missing_ok=True)
            say({"kind": "unfilled", "t": round(time.monotonic() - started, 1)})
        elif word == "stop":
            break
    producer.halt.set()
    producer.join(5)
    flushed = runtime.flush(timeout=120)
    final = status(runtime, producer, home, started)
    runtime.stop(timeout=10)
    say({"kind": "final", "flushed": flushed, **final})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
