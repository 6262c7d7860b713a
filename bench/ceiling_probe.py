"""Ingest ceiling of a brain: how many task events per second it can ack at best.

A minimal client (no agent runtime, no buffer) sends pre-built, optimally batched, signed
``event_batch`` frames with a window of frames in flight and times from the first send to the
last ``event_batch_ack``. Whatever an agent achieves end to end, it cannot beat this number on
the same brain, so agent benchmarks are reported against it.

    .venv/bin/python bench/ceiling_probe.py --real-brain                   # start z4j 1.13.0, sweep
    .venv/bin/python bench/ceiling_probe.py --sizes 500,2000 --events 6000  # brain from Z4J_* env
    .venv/bin/python bench/ceiling_probe.py --real-brain --sizes 500 --events 2000 \
        --engines celery,dramatiq --rounds 3     # does the brain pay more for one engine's events?
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import websocket

from z4j_bare.protocol import (
    FrameType,
    SessionBinding,
    Signer,
    Verifier,
    canonical_text,
    decode_hmac_secret,
    encode_unsigned,
    new_frame_id,
    parse_frame,
    utc_now_text,
)

_KINDS = ("received", "started", "succeeded")
HEARTBEAT_SECONDS = 10.0


def _cred(creds: Any, name: str) -> str:
    value = creds.get(name) if isinstance(creds, dict) else getattr(creds, name, None)
    if not value:
        raise ValueError(
            f"credentials lack {name!r} (pass the object returned by mint_agent)"
        )
    return str(value)


def build_events(n: int, run: str, engine: str = "celery") -> list[str]:
    """``n`` canonical event texts: received/started/succeeded for n/3 distinct tasks of ``engine``."""
    t0 = datetime.now(UTC) - timedelta(seconds=5)
    texts = []
    for i in range(n):
        task, step = divmod(i, 3)
        kind = _KINDS[step]
        data: dict[str, Any] = {
            "task_name": "bench.noop",
            "queue": "bench",
            "worker": "ceiling@127.0.0.1",
        }
        if kind == "received":
            data.update(args=[task], kwargs={})
        elif kind == "succeeded":
            data.update(result=str(task), runtime_ms=1)
        texts.append(canonical_text({
            "id": str(uuid.uuid4()), "kind": f"task.{kind}", "engine": engine, "task_id": f"{run}-{task}",
            "occurred_at": (t0 + timedelta(microseconds=i)).isoformat(), "data": data,
        }))  # fmt: skip
    return texts


def measure_ceiling(
    brain_url: str,
    creds: Any,
    events: int = 3000,
    batch: int = 500,
    inflight: int = 4,
    timeout: float = 600,
    engine: str = "celery",
) -> dict[str, Any]:
    """Send ``events`` task events in frames of ``batch`` with ``inflight`` unacked frames at most.

    ``creds`` is anything with ``token`` and ``hmac_secret`` (attributes or keys). Returns
    ``events_per_s`` plus frame counts, accepted/rejected totals and ack latencies.
    """
    if not 1 <= batch <= 5000:
        raise ValueError(f"batch={batch}: the brain accepts 1..5000 events per frame")
    if events < 1 or inflight < 1:
        raise ValueError("events and inflight must be >= 1")
    key = decode_hmac_secret(_cred(creds, "hmac_secret"))
    url = (
        brain_url.replace("https://", "wss://", 1)
        .replace("http://", "ws://", 1)
        .rstrip("/")
        + "/ws/agent"
    )
    texts = build_events(events, uuid.uuid4().hex[:12], engine)
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]

    ws = websocket.create_connection(
        url, header=[f"Authorization: Bearer {_cred(creds, 'token')}"], timeout=30
    )
    try:
        hello = {
            "protocol_version": "2", "agent_version": "1.13.0", "framework": "bare", "engines": [engine],
            "schedulers": [], "capabilities": {engine: []}, "host": {"name": "ceiling-probe"},
            "worker_id": f"bare-{os.getpid()}-{time.time_ns() // 1_000_000}", "worker_role": "task",
            "worker_pid": os.getpid(), "worker_started_at": utc_now_text(), "runtime_features": [],
        }  # fmt: skip
        ws.send_binary(
            encode_unsigned(FrameType.HELLO, new_frame_id("hello_", 16), hello)
        )
        ack = parse_frame(ws.recv())
        if ack.type is not FrameType.HELLO_ACK:
            raise RuntimeError(f"expected hello_ack, got {ack.type.value}")
        binding = SessionBinding(
            ack.payload["agent_id"],
            ack.payload["project_id"],
            ack.payload["session_id"],
        )
        signer, verifier = Signer(key, binding), Verifier(key, binding)
        max_bytes = int(ack.payload.get("max_frame_size_bytes") or 1_048_576)
        ws.send_binary(
            signer.sign(
                FrameType.HEARTBEAT,
                new_frame_id("hb_"),
                {"buffer_size": 0, "adapter_health": {}},
            )
        )

        outstanding: dict[str, float] = {}
        latencies: list[float] = []
        accepted = rejected = 0
        largest = 0
        next_chunk = 0
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while next_chunk < len(chunks) or outstanding:
            while next_chunk < len(chunks) and len(outstanding) < inflight:
                frame_id = new_frame_id("ev_", 32)
                raw = signer.sign_event_batch(frame_id, chunks[next_chunk])
                if len(raw) > max_bytes:
                    raise ValueError(
                        f"batch={batch} makes {len(raw)}-byte frames, over the brain's {max_bytes}"
                    )
                largest = max(largest, len(raw))
                outstanding[frame_id] = time.perf_counter()
                ws.send_binary(raw)
                next_chunk += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(outstanding)} frames unacked after {timeout:.0f} s"
                )
            # a big frame can take the brain minutes to ack: heartbeat meanwhile, as an agent
            # must, or the brain's 90 s idle timeout closes the socket (4408)
            ws.settimeout(min(HEARTBEAT_SECONDS, remaining))
            try:
                raw_in = ws.recv()
            except websocket.WebSocketTimeoutException:
                ws.send_binary(
                    signer.sign(
                        FrameType.HEARTBEAT,
                        new_frame_id("hb_"),
                        {"buffer_size": 0, "adapter_health": {}},
                    )
                )
                continue
            frame = verifier.verify(raw_in)
            if (
                frame.type is FrameType.EVENT_BATCH_ACK
                and frame.payload.get("acked_id") in outstanding
            ):
                latencies.append(
                    time.perf_counter() - outstanding.pop(frame.payload["acked_id"])
                )
                accepted += int(frame.payload.get("accepted", 0))
                rejected += int(frame.payload.get("rejected", 0))
        elapsed = time.perf_counter() - started
    finally:
        ws.close()

    lat_ms = sorted(x * 1000 for x in latencies)
    return {
        "events_per_s": round(events / elapsed, 1),
        "tasks_per_s": round(
            -(-events // 3) / elapsed, 1
        ),  # each task = received+started+succeeded
        "frames_per_s": round(len(chunks) / elapsed, 2),
        "events": events,
        "batch": batch,
        "inflight": inflight,
        "frames": len(chunks),
        "seconds": round(elapsed, 3),
        "accepted": accepted,
        "rejected": rejected,
        "ack_ms_p50": round(statistics.median(lat_ms), 1),
        "ack_ms_p95": round(lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.95))], 1),
        "largest_frame_bytes": largest,
    }


def _load_realbrain():
    path = Path(__file__).resolve().parents[1] / "tests" / "interop" / "realbrain.py"
    spec = importlib.util.spec_from_file_location("z4j_interop_realbrain", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--real-brain",
        action="store_true",
        help="start a fresh z4j 1.13.0 brain for the run",
    )
    parser.add_argument(
        "--sizes", default="1,50,500,2000", help="comma-separated batch sizes to sweep"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=3000,
        help="events per run (batch sizes < 50 use --small-events)",
    )
    parser.add_argument(
        "--small-events",
        type=int,
        default=300,
        help="events per run for batch sizes < 50",
    )
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--engines", default="celery",
                        help="comma-separated engines the events claim (celery, rq, dramatiq); each size runs "
                             "once per engine, in turn, --rounds times")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per run"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    brain = None
    if args.real_brain:
        rb = _load_realbrain()
        brain = rb.RealBrain(home=tempfile.mkdtemp(prefix="z4j-ceiling-")).start()
        creds: Any = brain.mint_agent("bench", "ceiling-probe")
        url = brain.url
    else:
        url = os.environ.get("Z4J_BRAIN_URL", "")
        creds = {
            "token": os.environ.get("Z4J_TOKEN"),
            "hmac_secret": os.environ.get("Z4J_HMAC_SECRET"),
        }
        if not url:
            parser.error(
                "set Z4J_BRAIN_URL, Z4J_TOKEN and Z4J_HMAC_SECRET, or pass --real-brain"
            )
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    runs = [(size, engine) for _ in range(args.rounds) for size in sizes for engine in engines]
    try:
        for size, engine in runs:
            n = args.small_events if size < 50 else args.events
            result = measure_ceiling(
                url, creds, events=n, batch=size, inflight=args.inflight, engine=engine
            )
            if args.json:
                print(json.dumps({**result, "engine": engine}), flush=True)
            else:
                print(f"{engine:>8} batch={size:>5} events={n:>6} inflight={args.inflight}: {result['events_per_s']:>9.1f} events/s "
                      f"({result['tasks_per_s']} tasks/s, {result['frames_per_s']} frames/s, ack p50 {result['ack_ms_p50']} ms, "
                      f"p95 {result['ack_ms_p95']} ms, accepted {result['accepted']})", flush=True)  # fmt: skip
    finally:
        if brain is not None:
            brain.stop()
            import shutil

            shutil.rmtree(brain.home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
