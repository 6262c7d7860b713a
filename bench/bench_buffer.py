"""BufferStore vs raw sqlite3 (the physical anchor): append latency and drain throughput.

Run: .venv/bin/python bench/bench_buffer.py [--n 20000]
Goals (issue 5): append p50 <= 15 us, p99 <= 100 us, drain >= 200k events/s. Also printed: what
a health probe's buffer reads cost (issue 17: pure reads, no ingest).
Our appends go to the spool (z4j_bare/storage/spool.py); the owner moves them into SQLite as they arrive
(printed separately as "ingest"), so a backlog drain is read + ack, like the raw anchor's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from z4j_bare.buffer import BufferStore

BODY = ('{"id":"207bec54-268a-47d8-8262-ad5a22fb1843","kind":"task.started","engine":"celery",'
        '"task_id":"abc","occurred_at":"2026-11-28T21:04:50.643607+00:00","data":{"task_name":'
        '"demo.add","queue":"default","worker":null,"args":[1],"kwargs":{}}}')
RAW_SQL = "INSERT INTO e(kind, engine, created_at, body) VALUES (?, ?, ?, ?)"


def raw_open(path: Path, create: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")
    if create:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE e(id INTEGER PRIMARY KEY, kind TEXT, engine TEXT, created_at REAL, body TEXT)")
    return conn


def pct(lat: list[int]) -> tuple[float, float]:
    lat = sorted(lat)
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000


def timed(fn, n: int) -> list[int]:
    pc = time.perf_counter_ns
    out = []
    for _ in range(n):
        t = pc()
        fn()
        out.append(pc() - t)
    return out


def run_threads(fn, n: int, threads: int) -> list[int]:
    results: list[list[int]] = [[] for _ in range(threads)]

    def work(k: int) -> None:
        results[k] = timed(fn, n // threads)

    ths = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return [x for r in results for x in r]


def run_procs(make_fn, n: int, procs: int) -> list[int]:
    """Fork ``procs`` children; each builds its appender *after* the fork and times n/procs calls."""
    pipes = []
    for _ in range(procs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            lat = timed(make_fn(), n // procs)
            with os.fdopen(w, "w") as fh:
                fh.write(",".join(map(str, lat)))
            os._exit(0)
        os.close(w)
        pipes.append((pid, r))
    out: list[int] = []
    for pid, r in pipes:
        with os.fdopen(r) as fh:
            out += [int(x) for x in fh.read().split(",")]
        os.waitpid(pid, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    n = args.n
    work = Path(tempfile.mkdtemp(prefix="z4j-bench-"))
    rows: list[tuple[str, tuple[float, float], tuple[float, float]]] = []
    try:
        # ---- append, 1 / 4 threads, 2 processes
        for label, mode, k in (("append 1 thread", "t", 1), ("append 4 threads", "t", 4),
                               ("append 2 processes", "p", 2)):
            store = BufferStore(work / f"z-{label[-9:].strip()}.sqlite")
            raw_path = work / f"raw-{label[-9:].strip()}.sqlite"
            raw = raw_open(raw_path, create=True)
            lock = threading.Lock()

            def raw_append() -> None:
                with lock:
                    raw.execute(RAW_SQL, ("event", "celery", time.time(), BODY))

            def z_append() -> None:
                store.append("event", BODY, "celery")

            z_append()  # warm: open + first cap check
            stop = threading.Event()

            def checkpointer() -> None:  # what the drainer does in production
                while not stop.wait(0.5):
                    store.checkpoint()
                    raw.execute("PRAGMA wal_checkpoint(PASSIVE)")

            ck = threading.Thread(target=checkpointer, daemon=True)
            ck.start()
            if mode == "t":
                z = run_threads(z_append, n, k)
                r = run_threads(raw_append, n, k)
            else:
                def make_raw():
                    c = raw_open(raw_path)
                    return lambda: c.execute(RAW_SQL, ("event", "celery", time.time(), BODY))

                z = run_procs(lambda: z_append, n, k)
                r = run_procs(make_raw, n, k)
            stop.set()
            ck.join()
            rows.append((label, pct(z), pct(r)))
            if label == "append 1 thread":
                drain_store = store
            else:
                store.close()
            raw.close()

        # ---- drain: read 5000 + ack (delete) until empty
        t = time.perf_counter()
        total = drain_store.depth_after_ingest()  # moves the spooled rows into SQLite (what the owner
        ingest_rate = total / (time.perf_counter() - t)  # does as they arrive, also while the brain is away)
        # ---- what a health probe pays (pure reads on the query-only connection, rows present)
        depth_lat = timed(drain_store.depth, 5000)
        health_lat = timed(lambda: (drain_store.depth(), drain_store.oldest_age(), drain_store.telemetry_loss()), 5000)
        t = time.perf_counter()
        after = 0
        got = 0
        while True:
            batch = drain_store.read(after_id=after, limit=5000)
            if not batch:
                break
            after = batch[-1].id
            got += len(batch)
            drain_store.delete(r.id for r in batch)
        z_rate = got / (time.perf_counter() - t)
        left = drain_store.depth()
        assert got == total and left == 0, (got, total, left)
        drain_store.close()
        raw = raw_open(work / "raw-1 thread.sqlite")
        raw_depth_lat = timed(lambda: raw.execute("SELECT max(id) FROM e").fetchone(), 5000)
        t = time.perf_counter()
        after = 0
        rgot = 0
        while True:
            batch = raw.execute("SELECT id, kind, body FROM e WHERE id > ? ORDER BY id LIMIT 5000",
                                (after,)).fetchall()
            if not batch:
                break
            after = batch[-1][0]
            rgot += len(batch)
            raw.execute("DELETE FROM e WHERE id BETWEEN ? AND ?", (batch[0][0], after))
        r_rate = rgot / (time.perf_counter() - t)
        raw.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# bench_buffer  n={n}  nproc={os.cpu_count()}  cpu={cpu}  sqlite={sqlite3.sqlite_version}")
    print(f"{'case':<22}{'z4j p50':>10}{'raw p50':>10}{'ratio':>7}{'z4j p99':>10}{'raw p99':>10}{'ratio':>7}")
    for label, (zp50, zp99), (rp50, rp99) in rows:
        print(f"{label:<22}{zp50:>8.1f}us{rp50:>8.1f}us{zp50 / rp50:>7.2f}{zp99:>8.1f}us{rp99:>8.1f}us{zp99 / rp99:>7.2f}")
    print(f"{'ingest (spool->SQLite)':<22}{ingest_rate:>9,.0f}/s{'-':>11}{'-':>7}   ({total} events; raw has no spool)")
    (zp50, zp99), (rp50, rp99) = pct(depth_lat), pct(raw_depth_lat)
    print(f"{'depth() (probe read)':<22}{zp50:>8.1f}us{rp50:>8.1f}us{zp50 / rp50:>7.2f}{zp99:>8.1f}us{rp99:>8.1f}us"
          f"{zp99 / rp99:>7.2f}   (raw: SELECT max(id))")
    hp50, hp99 = pct(health_lat)
    print(f"{'health() buffer reads':<22}{hp50:>8.1f}us{'-':>10}{'-':>7}{hp99:>8.1f}us{'-':>10}{'-':>7}"
          "   (depth + oldest_age + telemetry_loss)")
    print(f"{'drain (read+ack)':<22}{z_rate:>9,.0f}/s{r_rate:>9,.0f}/s{z_rate / r_rate:>7.2f}   ({got} events)")
    print("goals: append p50 <= 15 us, p99 <= 100 us, drain >= 200,000 events/s")


if __name__ == "__main__":
    main()
