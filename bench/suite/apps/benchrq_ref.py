"""Reference agent for ``rq worker``: its documented bootstrap, ``register_worker_bootstrap()``,
called from a module the worker imports (here: the module holding the worker class).

    rq worker --worker-class benchrq_ref.Worker   (reference venv; Z4J_* and Z4J_RQ_REDIS_URL set)

Only ever imported by the reference venv's interpreter.
"""

from rq import Worker as _RqWorker

from z4j_rq import register_worker_bootstrap

register_worker_bootstrap()


class Worker(_RqWorker):
    pass
