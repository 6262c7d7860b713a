"""Actors of the Dramatiq test app, declared on whichever broker a module builds."""

from __future__ import annotations

import os
import signal
import time

import redis

NS = os.environ.setdefault("Z4J_TEST_DQ_NS", f"z4jdq{os.getpid()}")
_REDIS = os.environ.get("Z4J_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_URL = _REDIS + "/5"
# kombu reads "//" as the vhost "/", pika (Dramatiq's RabbitMQ client) as "": spell it "%2F".
AMQP_URL = os.environ.get("Z4J_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//").replace(":5672//", ":5672/%2F")
_client = redis.Redis.from_url(REDIS_URL)


def marker(key: str) -> str:
    return f"{NS}:marker:{key}"


def declare(broker, queue: str, prefix: str = "") -> dict:
    """The test actors on ``broker``, all on ``queue``, named ``<prefix><function>``; by short name."""
    import dramatiq

    def actor(**options):
        return lambda fn: dramatiq.actor(fn, broker=broker, queue_name=queue, actor_name=prefix + fn.__name__,
                                         **options)

    @actor(store_results=True, max_retries=0)
    def add(a, b, password=None):
        return a + b

    @actor(max_retries=0)
    def boom(x):
        raise ValueError(f"boom {x}")

    @actor(max_retries=1, min_backoff=100, max_backoff=150)
    def flaky(x):
        raise RuntimeError(f"flaky {x}")

    @actor(max_retries=2, min_backoff=100, max_backoff=150)
    def fail_once(key):
        if _client.incr(marker(key)) == 1:
            raise ValueError("first attempt fails")
        return "second attempt ok"

    @actor(max_retries=0)
    def count_and_fail(key):
        _client.incr(marker(key))
        raise ValueError(f"failed run of {key}")

    @actor(max_retries=0)
    def count(key):
        _client.incr(marker(key))

    @actor(max_retries=0, time_limit=300)
    def too_slow():
        end = time.monotonic() + 5
        while time.monotonic() < end:  # Python-level work: the time limit can interrupt it
            time.sleep(0.01)

    @actor(max_retries=0, max_age=1)
    def aged():
        _client.incr(marker("aged-ran"))

    @actor(max_retries=0)
    def sleepy(seconds, key):
        _client.set(marker(key + ":started"), os.getpid())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
        _client.set(marker(key + ":done"), 1)
        return os.getpid()

    @actor(max_retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    return {fn.actor_name[len(prefix):]: fn for fn in (add, boom, flaky, fail_once, count_and_fail, count,
                                                           too_slow, aged, sleepy, die)}
