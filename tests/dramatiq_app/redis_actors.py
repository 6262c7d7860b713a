"""``dramatiq dramatiq_app.redis_actors``: Redis broker, Results, Abortable, the z4j adapter."""

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from dramatiq_abort import Abortable
from dramatiq_abort.backends import RedisBackend as AbortBackend

from dramatiq_app.defs import NS, REDIS_URL, _client, declare
from z4j_dramatiq import DramatiqEngineAdapter

broker = RedisBroker(url=REDIS_URL, namespace=NS)
broker.add_middleware(Results(backend=RedisBackend(client=_client, namespace=f"{NS}-results")))
broker.add_middleware(Abortable(backend=AbortBackend(client=_client, namespace=f"{NS}:aborts:")))
dramatiq.set_broker(broker)
QUEUE = f"{NS}-work"
IDLE = f"{NS}-idle"          # declared, never consumed by the test workers (-Q QUEUE)
actors = declare(broker, QUEUE)
idle = declare(broker, IDLE, prefix="idle_")
z4j = DramatiqEngineAdapter(broker=broker, cancel_wait_seconds=1.5)
