"""The z4j agent process of one ``dramatiq`` command.

The z4j middleware lists ``run`` in its ``forks``; the dramatiq supervisor starts it once, after
the worker processes booted (docs/dramatiq.md, "One agent per dramatiq command"). It re-reads
the supervisor's command line, imports the app like a worker does (commands need the broker
and the actors), installs the agent on the command's shared buffer, and runs until the
supervisor stops the command and the last worker has exited, so the workers' final events
(``worker.offline``, the messages they finished while shutting down) are delivered in the same
session. It never runs messages.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

POLL_SECONDS = 0.2


def run() -> int:
    from z4j_bare.engines import dramatiq_family as family
    from z4j_bare.logs import get_logger

    log = get_logger("dramatiq.agent_process")
    family.enter_agent_role()
    supervisor = os.getppid()
    stop = _StopSignals()
    try:
        runtime = _install(family)
    except Exception as exc:  # noqa: BLE001 - reported on dramatiq's log; the workers run on
        log.error("dramatiq.agent_not_started", error=f"{type(exc).__name__}: {exc}",
                  fix="check the Z4J_* variables of the dramatiq command; events wait in the buffer")
        return 1
    if runtime is None:
        return 0  # Z4J_DISABLED
    log.info("dramatiq.agent_process_started", supervisor_pid=supervisor, buffer=str(runtime.buffer.path))
    try:
        _wait(stop, runtime.buffer.path, supervisor, family)
    finally:
        drained = runtime.stop()
        log.info("dramatiq.agent_process_stopped", drained=drained, signals=stop.count)
    return 0


def _install(family: Any) -> Any:
    from z4j_bare.agent import install_agent

    args = family.cli_arguments(sys.argv)
    broker = family.import_app(args)
    adapter = family.adapter_for(broker)
    if adapter is None:
        raise RuntimeError(f"the broker of {args.broker!r} has no DramatiqEngineAdapter; create it in that module")
    config = family.resolve_config()
    paths = family.family_paths(config, os.getppid())
    return install_agent(engines=[adapter], buffer_path=str(paths.buffer))


class _StopSignals:
    """SIGTERM/SIGHUP from the supervisor (or systemd, or a reload) ask the process to finish."""

    def __init__(self) -> None:
        self.count = 0
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1


def _wait(stop: _StopSignals, buffer_path: Any, supervisor: int, family: Any) -> None:
    """Until asked to stop and no worker writes any more (or the supervisor and workers are gone)."""
    from pathlib import Path

    path = Path(buffer_path)
    while True:
        time.sleep(POLL_SECONDS)
        orphaned = os.getppid() != supervisor
        if not stop.count and not orphaned:
            continue
        writers = family.writers_present(path)
        if writers is None:  # no OFD locks on this platform: trust the signal
            return
        if not writers:
            return
