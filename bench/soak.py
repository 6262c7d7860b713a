"""Soak run (not CI): a steady event rate for a long time, through brain restarts and a full disk.

    .venv/bin/python -m bench.soak                       # 30 min, 200 ev/s, restart every 5 min
    .venv/bin/python -m bench.soak --minutes 3 --every 20 --restart-every 60 --full-disk-at 80 --full-disk-for 20

The local reference brain runs in this process on a fixed port and is stopped and started again
every ``--restart-every`` seconds (its sessions close with 1001; its store keeps what it got). The
agent runs in ``bench/soak_agent.py`` in its own mount namespace (``unshare --mount``, root only)
with ``Z4J_HOME`` on a small tmpfs, which the soak fills for ``--full-disk-for`` seconds in the
middle. Every ``--every`` seconds the agent prints RSS, open file descriptors, threads, buffer
depth and spool files; at the end the soak prints the table, the slope of each column (least
squares, per hour, first interval left out as warm-up) and the reckoning: every emitted event
must be in the brain or counted as lost by the agent (full disk), nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from z4j_bare.logs import log_to_stderr
from z4j_bare.testing import LocalBrain

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("rss_kib", "fds", "threads", "buffer_depth", "spool_files")


def start_agent(env: dict[str, str], home: Path, tmpfs_mib: int, rate: float, every: float) -> subprocess.Popen:
    inner = " && ".join([
        # mode 0700: the buffer refuses a world-writable home (it would relocate off the tmpfs)
        f"mount -t tmpfs -o size={tmpfs_mib}m,mode=0700 z4j-soak {shlex.quote(str(home))}",
        f"exec {shlex.quote(sys.executable)} -m bench.soak_agent --rate {rate} --every {every}",
    ])
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                            env=env, cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 3600


def lost_by_agent(record: dict[str, Any]) -> int:
    loss = record.get("loss") or {}
    return int(loss.get("event_records", 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--every", type=float, default=60, help="seconds between status lines")
    p.add_argument("--restart-every", type=float, default=300)
    p.add_argument("--full-disk-at", type=float, default=None, help="seconds in (default: the middle)")
    p.add_argument("--full-disk-for", type=float, default=60)
    p.add_argument("--tmpfs-mib", type=int, default=64)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the soak needs root (unshare --mount for its tmpfs)", file=sys.stderr)
        return 2
    log_to_stderr("warning")
    duration = args.minutes * 60
    full_at = duration / 2 if args.full_disk_at is None else args.full_disk_at
    home = Path(f"/tmp/z4j-soak-{os.getpid()}")
    home.mkdir()
    brain = LocalBrain(port=0).start()
    port = brain.port
    creds = brain.mint_agent(name="soak", project="soak")
    env = {k: v for k, v in os.environ.items() if not k.startswith("Z4J_")}
    env.update(creds.env(), Z4J_HOME=str(home), PYTHONPATH=str(REPO))
    agent = start_agent(env, home, args.tmpfs_mib, args.rate, args.every)
    records: list[dict[str, Any]] = []
    done = threading.Event()

    def read() -> None:
        for line in agent.stdout:
            rec = json.loads(line)
            records.append(rec)
            if rec["kind"] == "started" and not rec["buffer_path"].startswith(str(home) + "/"):
                print(f"the buffer is not on the soak's tmpfs: {rec['buffer_path']}", flush=True)
                agent.kill()
            if rec["kind"] == "status":
                print(" ".join(f"{k}={rec.get(k)}" for k in ("t", "emitted", "state", *COLUMNS)), flush=True)
            else:
                print(json.dumps(rec), flush=True)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    t0 = time.monotonic()
    next_restart = t0 + args.restart_every
    filled = unfilled = False
    restarts = 0
    try:
        while time.monotonic() - t0 < duration and agent.poll() is None:
            now = time.monotonic()
            if now >= next_restart:
                brain.stop()
                time.sleep(2)
                brain = _restart(brain, port)
                restarts += 1
                next_restart += args.restart_every
                print(f"[{now - t0:7.1f} s] brain restarted ({restarts})", flush=True)
            if not filled and now - t0 >= full_at:
                agent.stdin.write("fill\n")
                agent.stdin.flush()
                filled = True
            if filled and not unfilled and now - t0 >= full_at + args.full_disk_for:
                agent.stdin.write("unfill\n")
                agent.stdin.flush()
                unfilled = True
            time.sleep(0.2)
        if filled and not unfilled:
            agent.stdin.write("unfill\n")
        agent.stdin.write("stop\n")
        agent.stdin.flush()
        agent.stdin.close()
        done.wait(300)
        agent.wait(60)
        delivered = brain.event_count(engine="celery")
    finally:
        if agent.poll() is None:
            agent.kill()
        brain.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)
    return report(records, delivered, restarts)


def _restart(old: LocalBrain, port: int) -> LocalBrain:
    # The same object keeps its store (events so far) and credentials; start() listens again.
    for _ in range(50):
        try:
            return old.start()
        except OSError:
            time.sleep(0.2)  # the old listener's port may linger for a moment
    raise RuntimeError(f"the brain could not listen on port {port} again")


def report(records: list[dict[str, Any]], delivered: int, restarts: int) -> int:
    status = [r for r in records if r["kind"] in ("status", "final")]
    final = next((r for r in records if r["kind"] == "final"), None)
    if final is None:
        print("no final record from the agent: it died or hung", flush=True)
        return 1
    print()
    print("| t (s) | emitted | RSS (KiB) | fds | threads | buffer depth | spool files |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in status:
        print(f"| {r['t']} | {r['emitted']} | {r['rss_kib']} | {r['fds']} | {r['threads']} | "
              f"{r['buffer_depth']} | {r['spool_files']} |")
    steady = [r for r in status if r["kind"] == "status"][1:]
    print()
    for col in COLUMNS:
        pts = [(r["t"], float(r[col] or 0)) for r in steady]
        print(f"slope {col}: {slope_per_hour(pts):+.1f} per hour")
    lost = lost_by_agent(final)
    emitted = final["emitted"]
    unaccounted = emitted - delivered - lost
    print(f"\nemitted {emitted}, delivered {delivered}, counted lost {lost} (full disk), "
          f"refused at emit {final['refused']}, unaccounted {unaccounted}, brain restarts {restarts}, "
          f"flushed {final['flushed']}")
    return 0 if unaccounted == 0 and final["flushed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
