"""A fork waits for agent-thread broker I/O instead of copying its locks half-held."""

from __future__ import annotations

import os
import threading
import time

from z4j_bare.forkguard import no_fork_during


def test_fork_waits_for_guarded_io_and_child_is_not_locked():
    inside, release = threading.Event(), threading.Event()

    def agent_thread_io():
        with no_fork_during():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=agent_thread_io)
    worker.start()
    inside.wait(5)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        # The child can take the guard at once: it did not inherit a held lock.
        acquired = False
        with no_fork_during():
            acquired = True
        os._exit(0 if acquired else 1)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    worker.join()
    assert waited >= 0.25, "fork did not wait for the guarded I/O"
    assert os.waitstatus_to_exitcode(status) == 0
