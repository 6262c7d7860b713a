"""A bare script for tests/test_exit.py: the agent in a plain process, stopped by hand, then exit.

Reads the brain from the ``Z4J_*`` environment. Prints ``ready`` once the session runs, then
waits for one line on stdin: ``stop`` (stop at once), or ``command`` (start a slow operator
command on the agent's command workers first, as one pushed by the brain would be). Calls
``runtime.stop(timeout)`` and prints ``returned`` the moment it returns; the script then ends and
the interpreter exits (the test times that).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

from recording_engine import RecordingEngine
from z4j_bare import RuntimeState, install_agent
from z4j_bare.protocol import Frame, FrameType


class SlowEngine(RecordingEngine):
    """Its commands take 30 s (a slow broker call) and say when they have begun."""

    def __init__(self) -> None:
        super().__init__(action_delay=30.0)
        self.running = threading.Event()

    def _record(self, request):  # type: ignore[no-untyped-def]
        self.running.set()
        super()._record(request)


def main() -> None:
    stop_timeout = float(sys.argv[1])
    engine = SlowEngine()
    runtime = install_agent(engines=[engine], heartbeat_seconds=1.0)
    deadline = time.monotonic() + 30
    while runtime.state is not RuntimeState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(200):
        engine.emit_task(f"exit-{i}", "task.received", "task.succeeded")
    runtime.flush(10)
    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    if line == "command":
        runtime.commands.submit(Frame(FrameType.COMMAND, str(uuid.uuid4()), {
            "action": "retry_task", "target": {"type": "task", "id": "celery:t1", "engine": "celery"},
            "parameters": {"task_id": "t1", "engine": "celery"}, "delivery_claim_token": None}))
        engine.running.wait(10)
    for i in range(50):
        engine.emit_task(f"late-{i}", "task.received")
    runtime.stop(stop_timeout)
    print("returned", flush=True)


if __name__ == "__main__":
    main()
