"""An agent process hosting one in-memory scheduler, for the crash tests (run with tests/ on the path).

Z4J_* variables configure it. With Z4J_TEST_KILL_AFTER_RESERVE=1 the process SIGKILLs itself right
after its second observation's sequence and frames are committed, before they can be sent.
"""

from __future__ import annotations

import os
import signal
import time

from schedule_harness import MemoryAdapter

from z4j_bare import install_agent
from z4j_bare.schedules.store import ScheduleStore


def main() -> None:
    if os.environ.get("Z4J_TEST_KILL_AFTER_RESERVE") == "1":
        original = ScheduleStore.commit_observation
        calls = []

        def commit_then_die(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            calls.append(result[0])
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        ScheduleStore.commit_observation = commit_then_die
    adapter = MemoryAdapter()
    adapter.add("m1", name="nightly")
    adapter.add("m2", name="hourly", kind="interval", expression="3600")
    install_agent(engines=[], schedulers=[adapter], heartbeat_seconds=1.0)
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
