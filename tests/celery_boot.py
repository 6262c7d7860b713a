"""Where a test Celery app installs the agent (worker subprocesses import this from tests/)."""

from __future__ import annotations

from celery import Celery, signals

# The points docs/celery.md documents; anything else (e.g. "none") installs nothing.
_SIGNALS = {
    "worker_init": signals.worker_init,
    "worker_ready": signals.worker_ready,
    "process_init": signals.worker_process_init,
}


def install_agent_at(boot: str, app: Celery) -> None:
    def install(**_: object) -> None:
        from z4j_bare import install_agent
        from z4j_celery import CeleryEngineAdapter

        install_agent(engines=[CeleryEngineAdapter(celery_app=app)])

    if boot == "import":
        install()
    elif boot in _SIGNALS:
        _SIGNALS[boot].connect(install, weak=False)
