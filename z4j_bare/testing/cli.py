"""``python -m z4j_bare.testing``: run a local brain, mint one agent, print a live feed."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ..logs import has_console, log_to_stderr
from .brain import LocalBrain

FEED_EVENTS_PER_FRAME = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m z4j_bare.testing",
        description="Run a local z4j brain on this machine, mint one agent and print what arrives.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7700, help="TCP port (default 7700; 0 picks a free one)")
    parser.add_argument("--db", default=":memory:", help="SQLite file for events and tasks (default :memory:)")
    parser.add_argument("--agent-name", default="agent-1", help="name of the agent to mint (default agent-1)")
    parser.add_argument("--project", default="default", help="project slug (default 'default')")
    parser.add_argument("--heartbeat-interval", type=int, default=10, help="seconds advertised in hello_ack")
    parser.add_argument("--max-frame-size", type=int, default=1_048_576, help="inbound frame cap in bytes")
    parser.add_argument("--clock-offset", type=float, default=0.0, metavar="SECONDS",
                        help="run the brain's clock this far ahead of the host's (negative: behind), like a brain "
                             "host without NTP (default 0)")
    return parser


class Feed:
    """Turns brain records into one line each; caps event lines per frame so 5000-event frames stay readable."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._events_this_frame = 0
        self._skipped = 0

    def __call__(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "event":
            self._events_this_frame += 1
            if self._events_this_frame > FEED_EVENTS_PER_FRAME:
                self._skipped += 1
                return
            fields = [record.get("kind"), record.get("engine"), record.get("task_id") or "-",
                      record.get("task_name") or "-", record.get("state") or "-"]
        elif kind == "close":
            fields = [f"code={record.get('code')}", record.get("reason") or ""]
        else:
            self._flush_skipped()
            self._events_this_frame = 0
            fields = [record.get("id") or "-"]
        self._write(record, kind, fields)

    def _flush_skipped(self) -> None:
        if self._skipped:
            self._write({"at": time.time()}, "event", [f"... {self._skipped} more events in that frame"])
            self._skipped = 0

    def _write(self, record: dict[str, Any], kind: Any, fields: list[Any]) -> None:
        at = time.strftime("%H:%M:%S", time.localtime(record.get("at", time.time())))
        agent = record.get("agent") or "-"
        line = " ".join([at, agent, str(kind or "?"), *(str(f) for f in fields)])
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, stop: threading.Event | None = None) -> int:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); returns the exit code."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    stop = stop or threading.Event()
    if not has_console():
        # An entry point, not a library: keep stdout for the exports and the feed.
        log_to_stderr("warning")
    try:
        brain = LocalBrain(db_path=args.db, host=args.host, port=args.port,
                           heartbeat_interval=args.heartbeat_interval, max_frame_size=args.max_frame_size,
                           clock_offset=args.clock_offset)
        brain.start()
    except (ValueError, OSError) as exc:
        print(f"z4j local brain: {exc}", file=sys.stderr)
        return 2
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        creds = brain.mint_agent(name=args.agent_name, project=args.project)
        out.write(f"# z4j local brain listening on {brain.url} (db {args.db}); agent {creds.name} = {creds.agent_id}\n")
        for name, value in creds.env().items():
            out.write(f"export {name}={shlex.quote(value)}\n")
        out.write("# live feed: time agent type details (Ctrl-C to stop)\n")
        out.flush()
        brain.add_listener(Feed(out))
        while not stop.wait(0.2):
            pass
        return 0
    finally:
        brain.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    raise SystemExit(main())
