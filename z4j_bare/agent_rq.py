"""RQ worker classes that install the z4j agent: ``rq worker --worker-class z4j_rq.Worker``.

The agent is installed in ``bootstrap()``, i.e. only in the process that runs the work loop:
never in a SpawnWorker's horse (which rebuilds the worker object from this class) nor in a
monitoring process that merely looks workers up. Configuration comes from the ``Z4J_*``
environment; the adapter uses the worker's own Redis connection and serializer. A bad setting
is logged on the worker's log and the worker runs on without the agent.

These classes sit in the runtime layer because they install the agent; the adapter they hand
to it and the SimpleWorker stop-job mechanics are in ``engines/``. The agent is imported in
``bootstrap()``, not here, so a spawned horse that imports this module stays light.
"""

from __future__ import annotations

from typing import Any

from rq.worker import SimpleWorker as _RqSimpleWorker
from rq.worker import SpawnWorker as _RqSpawnWorker
from rq.worker import Worker as _RqWorker

from .engines.rq_workers import JobStopped, StopJobMixin

__all__ = ["JobStopped", "SimpleWorker", "SpawnWorker", "Worker"]


class _AgentWorkerMixin:
    def bootstrap(self, *args: Any, **kwargs: Any) -> Any:
        result = super().bootstrap(*args, **kwargs)  # type: ignore[misc]
        self._z4j_install()
        return result

    def _z4j_install(self) -> None:
        from .agent import current_runtime, install_agent
        from .engines.rq import RqEngineAdapter
        from .logs import show_through

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


class SimpleWorker(_AgentWorkerMixin, StopJobMixin, _RqSimpleWorker):
    """rq's in-process ``SimpleWorker`` with the z4j agent and a working ``stop-job``."""
