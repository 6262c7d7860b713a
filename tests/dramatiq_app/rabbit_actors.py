"""``dramatiq dramatiq_app.rabbit_actors``: RabbitMQ broker, Abortable on Redis, the z4j adapter."""

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from dramatiq_abort import Abortable
from dramatiq_abort.backends import RedisBackend as AbortBackend

from dramatiq_app.defs import AMQP_URL, NS, _client, declare
from z4j_dramatiq import DramatiqEngineAdapter

broker = RabbitmqBroker(url=AMQP_URL)
broker.add_middleware(Results(backend=RedisBackend(client=_client, namespace=f"{NS}-results")))
broker.add_middleware(Abortable(backend=AbortBackend(client=_client, namespace=f"{NS}:aborts:")))
dramatiq.set_broker(broker)
QUEUE = f"{NS}-rwork"
IDLE = f"{NS}-ridle"
actors = declare(broker, QUEUE)
idle = declare(broker, IDLE, prefix="idle_")
z4j = DramatiqEngineAdapter(broker=broker, cancel_wait_seconds=1.5)
