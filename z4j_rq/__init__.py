"""z4j for RQ: the adapter and agent-installing worker classes.

    from z4j_bare import install_agent
    from z4j_rq import RqEngineAdapter
    install_agent(engines=[RqEngineAdapter(redis_url="redis://localhost:6379/0")])

or, with the Z4J_* environment set: ``rq worker --worker-class z4j_rq.Worker``
(also ``z4j_rq.SimpleWorker`` and ``z4j_rq.SpawnWorker``). See docs/rq.md.
"""

from z4j_bare.engines.extras import needs_extra

with needs_extra("z4j_rq (the RQ engine)"):
    from z4j_bare.agent_rq import JobStopped, SimpleWorker, SpawnWorker, Worker
    from z4j_bare.engines.rq import RqEngineAdapter

__all__ = ["JobStopped", "RqEngineAdapter", "SimpleWorker", "SpawnWorker", "Worker"]
