"""RQ worker classes that install the z4j agent: ``rq worker --worker-class z4j_rq.Worker``.

The agent is installed in ``bootstrap()``, i.e. only in the process that runs the work loop:
never in a SpawnWorker's horse (which rebuilds the worker object from this class) nor in a
monitoring process that merely looks workers up. Configuration comes from the ``Z4J_*``
environment; the adapter uses the worker's own Redis connection and serializer. A bad setting
is logged on the worker's log and the worker runs on without the agent.

``SimpleWorker`` also makes ``stop-job`` work: RQ's SimpleWorker has no horse to kill, so a
stop request is ignored and the job runs to completion. Here the job is interrupted by raising
``JobStopped`` (a BaseException, so ``except Exception`` in job code does not swallow it) in the
main thread while the job function is running, and RQ records the job as stopped.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from rq.worker import SimpleWorker as _RqSimpleWorker
from rq.worker import SpawnWorker as _RqSpawnWorker
from rq.worker import Worker as _RqWorker


class JobStopped(BaseException):
    """Raised inside a SimpleWorker job that an operator stopped."""


class _AgentWorkerMixin:
    def bootstrap(self, *args: Any, **kwargs: Any) -> Any:
        result = super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._z4j_install()
        return result

    def _z4j_install(self) -> None:
        from ..agent import current_runtime, install_agent
        from ..logs import show_through
        from .rq import RqEngineAdapter

        worker: Any = self
        show_through(worker.log)  # the agent's warnings appear in the worker's output
        try:
            runtime = current_runtime()
            if runtime is not None and runtime.state.value != "stopped":
                adapter = runtime.engines.get("rq")
                if isinstance(adapter, RqEngineAdapter):
                    adapter.watch_queues(worker.queue_names())
                return
            adapter = RqEngineAdapter(connection=worker.connection, queues=worker.queue_names(),
                                      serializer=worker.serializer)
            runtime = install_agent(engines=[adapter])
            if runtime is not None:
                worker.log.info("Worker %s: z4j agent installed (%s)", worker.name, runtime.worker_id)
        except Exception as exc:  # noqa: BLE001 - a monitoring problem must not stop the worker
            worker.log.error("Worker %s: z4j agent not installed: %s", worker.name, exc)


class Worker(_AgentWorkerMixin, _RqWorker):
    """rq's fork ``Worker`` with the z4j agent."""


class SpawnWorker(_AgentWorkerMixin, _RqSpawnWorker):
    """rq's ``SpawnWorker`` (posix_spawn horses) with the z4j agent."""


class SimpleWorker(_AgentWorkerMixin, _RqSimpleWorker):
    """rq's in-process ``SimpleWorker`` with the z4j agent and a working ``stop-job``."""

    #: Signal used to interrupt the running job; change it if job code uses SIGUSR1.
    stop_signal = signal.SIGUSR1

    _z4j_performing: str | None = None
    _z4j_main_ident: int | None = None

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
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
            return super().execute_job(job, queue)
        finally:
            job.__dict__.pop("perform", None)

    def kill_horse(self, sig: Any = None) -> None:
        # Called by RQ's stop-job / stop-execution handlers on the pubsub thread.
        if self._z4j_main_ident is not None and self._stopping_current():
            signal.pthread_kill(self._z4j_main_ident, self.stop_signal)

    def _stopping_current(self) -> bool:
        current = self._z4j_performing
        return current is not None and self._stopped_job_id == current

    def _z4j_on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._stopping_current():
            raise JobStopped(f"job {self._z4j_performing} stopped by operator request")
