"""RQ worker mechanics that need no agent: a ``stop-job`` that works in a SimpleWorker.

RQ's SimpleWorker has no horse to kill, so a stop request is ignored and the job runs to
completion. ``StopJobMixin`` interrupts the job instead by raising ``JobStopped`` (a
BaseException, so ``except Exception`` in job code does not swallow it) in the main thread while
the job function is running, and RQ records the job as stopped.

The worker classes users name on the command line (``z4j_rq.Worker``...) install the agent, so
they live a layer up, in ``z4j_bare.agent_rq``; engines never import the agent.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class JobStopped(BaseException):
    """Raised inside a SimpleWorker job that an operator stopped."""


class StopJobMixin:
    """Mix into an ``rq.worker.SimpleWorker`` subclass (before it) to make stop-job work."""

    #: Signal used to interrupt the running job; change it if job code uses SIGUSR1.
    stop_signal = signal.SIGUSR1

    _z4j_performing: str | None = None
    _z4j_main_ident: int | None = None

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()  # type: ignore[misc]
        self._z4j_main_ident = threading.get_ident()
        signal.signal(self.stop_signal, self._z4j_on_stop_signal)

    def execute_job(self, job: Any, queue: Any) -> Any:
        perform = job.perform

        def interruptible_perform() -> Any:
            self._z4j_performing = job.id
            try:
                return perform()
            finally:
                self._z4j_performing = None

        job.perform = interruptible_perform
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            job.__dict__.pop("perform", None)

    def kill_horse(self, sig: Any = None) -> None:
        # Called by RQ's stop-job / stop-execution handlers on the pubsub thread.
        if self._z4j_main_ident is not None and self._stopping_current():
            signal.pthread_kill(self._z4j_main_ident, self.stop_signal)

    def _stopping_current(self) -> bool:
        current = self._z4j_performing
        return current is not None and self._stopped_job_id == current  # type: ignore[attr-defined]

    def _z4j_on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._stopping_current():
            raise JobStopped(f"job {self._z4j_performing} stopped by operator request")
