"""The demo's worker processes and its live view (``demo.py`` tells the story with them)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class WorkerGroup:
    """Worker subprocesses, each in a session of its own with its output in a log file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as fh:
            # A session of its own: at the end the whole group (prefork children included) is reaped.
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, cwd=self.tmp, start_new_session=True)

    def exited(self) -> tuple[str, int] | None:
        """(name, exit code) of a worker that is gone, if any."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.logs[name].read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])

    def stop(self, check: Callable[[str, bool, str], Any]) -> None:
        """SIGTERM each worker's main process and check that it exits 0 within 20 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                # The worker's main process only: it stops its own pool (a group-wide SIGTERM
                # would kill the pool children under it).
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 20
        for name, proc in self.procs.items():
            try:
                code = proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                check(f"{name} worker stopped on SIGTERM", False, "had to be killed")
                continue
            check(f"{name} worker stopped on SIGTERM with exit code 0", code == 0, f"exit code {code}")

    def reap(self) -> bool:
        """Kill whatever is left of each process group; True if nothing was left."""
        clean = True
        for proc in self.procs.values():
            for _ in range(50):
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                clean = False
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        return clean


class LiveView:
    """Prints each event as the brain stores it, and a status line per agent when it changes."""

    def __init__(self, brain: Any, agents: dict[str, Any], line: Callable[..., None]) -> None:
        self.brain = brain
        self.agents = agents
        self.line = line
        self._printed = 0
        self._last_status = ""
        self._next_status = 0.0

    def pump(self) -> None:
        events = self.brain.events()
        for ev in events[self._printed:]:
            self.line(self.event_text(ev), tag="event",
                      code={"task.succeeded": "32", "task.failed": "31", "task.retried": "33"}.get(ev.get("kind"), "36"))
        self._printed = len(events)
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + 1.0
            text = self.status_text()
            if text != self._last_status:
                self._last_status = text
                self.line(text, tag="status", code="35")

    @staticmethod
    def event_text(ev: dict[str, Any]) -> str:
        data = ev.get("data") or {}
        kind = ev.get("kind", "?")
        task = (ev.get("task_id") or "")[:8]
        name = str(data.get("task_name") or data.get("worker") or data.get("hostname") or "")
        if len(name) > 14:
            name = name.rsplit(".", 1)[-1][:14]
        extra = ""
        if kind == "task.failed" and data.get("exception"):
            extra = f"  {str(data.get('exception'))[:60]}"
        frame = data.get("external_snapshot_frame")
        if isinstance(frame, dict):  # one frame of a sequenced schedule snapshot
            name = f"seq {frame.get('sequence')} {frame.get('frame_kind')}"
            extra = f"{len(frame.get('schedules') or [])} of {frame.get('row_count')} row(s)"
        return f"{ev.get('engine', ''):<7} {kind:<16} {name:<14} {task}{extra}"

    def status_text(self) -> str:
        parts = []
        for engine, creds in self.agents.items():
            row = self.brain.agent(creds.agent_id)
            hb = row.get("last_heartbeat") or {}
            st = row.get("last_agent_status") or {}
            state = "RUNNING (online)" if row["online"] else "offline"
            parts.append(f"{engine} agent {state}, sessions {row['sessions']}, buffer {hb.get('buffer_size', '-')}, "
                         f"heartbeats {row['heartbeats']}, reconnects {st.get('connection_failure_streak', 0)}")
        parts.append(f"brain stored {self.brain.event_count()} events")
        return " | ".join(parts)
