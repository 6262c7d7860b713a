"""The Dramatiq bench app: a no-op actor on a Redis broker; the z4j adapter only for agent "ours".

Broker URL and key namespace from ``Z4J_BENCH_DQ_REDIS`` / ``Z4J_BENCH_DQ_NS``; the agent
variant from ``Z4J_BENCH_AGENT`` (ours | none), set by bench/bench_dramatiq.py.
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench"
broker = RedisBroker(url=os.environ["Z4J_BENCH_DQ_REDIS"], namespace=os.environ["Z4J_BENCH_DQ_NS"])
dramatiq.set_broker(broker)

if os.environ.get("Z4J_BENCH_AGENT") == "ours":
    from z4j_dramatiq import DramatiqEngineAdapter

    DramatiqEngineAdapter(broker=broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i):
    return None
