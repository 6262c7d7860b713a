"""A forking worker parent's view of the agent (tests/test_start_footprint.py).

Installs the agent with the RQ adapter, waits until it is connected, prints the modules it
loaded; then, when asked on stdin, waits until it has met a failed connect (the brain is gone)
and prints them again.
"""

from __future__ import annotations

import json
import os
import sys
import time

import redis  # noqa: F401 - the host's own imports come first, as in an rq worker
import rq  # noqa: F401

before = set(sys.modules)

from z4j_bare import install_agent
from z4j_rq import RqEngineAdapter

runtime = install_agent(engines=[RqEngineAdapter(redis_url=os.environ["Z4J_TEST_REDIS"])])


def report(reached) -> None:
    deadline = time.monotonic() + 30
    while not reached():
        if time.monotonic() > deadline:
            print(json.dumps({"error": "not reached after 30 s", "state": str(runtime.state)}), flush=True)
            return
        time.sleep(0.02)
    print(json.dumps(sorted(set(sys.modules) - before)), flush=True)


report(lambda: runtime.state.value == "running")
sys.stdin.readline()
report(lambda: runtime.lifecycle.last_failure is not None)
runtime.stop(1)
