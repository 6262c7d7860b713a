"""Reading and changing Dramatiq's broker state for commands and health (layouts: docs/dramatiq.md).

``RedisOps`` works on the Redis broker's keys with small Lua scripts, so every move is atomic
with respect to the workers' own Lua ``dispatch`` (a worker can never fetch a message half
removed). ``RabbitOps`` uses its own pika connection (pika connections are not thread-safe, and
the broker's are per thread) for passive declares and purges. Other brokers get ``BrokerOps``,
which knows nothing: the adapter then advertises only what works without broker access.

Message bodies are read only when they are JSON (Dramatiq's default encoder); a body in another
encoding is reported as undecodable, never unpickled.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..logs import get_logger

log = get_logger(__name__)

MAX_SCAN = 200_000
SCAN_COUNT = 1000

_REMOVE_WAITING = """
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 1 then
  local data = redis.call('hget', KEYS[2], ARGV[1])
  redis.call('hdel', KEYS[2], ARGV[1])
  return data or ''
end
return false
"""

_PURGE_WAITING = """
local ids = redis.call('lrange', KEYS[1], 0, -1)
local out = {}
local keep = tonumber(ARGV[1])
for i, id in ipairs(ids) do
  local data = redis.call('hget', KEYS[2], id)
  redis.call('hdel', KEYS[2], id)
  if i <= keep then out[#out + 1] = data or '' end
end
redis.call('del', KEYS[1])
return {#ids, out}
"""

_REQUEUE_DEAD = """
if redis.call('zrem', KEYS[1], ARGV[1]) == 1 then
  local data = redis.call('hget', KEYS[2], ARGV[1])
  redis.call('hdel', KEYS[2], ARGV[1])
  if data then
    redis.call('hset', KEYS[4], ARGV[1], data)
    redis.call('rpush', KEYS[3], ARGV[1])
    return data
  end
  return ''
end
return false
"""


class BrokerError(Exception):
    """The broker could not be read or changed; the message says what and why."""


def parse_body(data: Any) -> dict[str, Any] | None:
    """A JSON-encoded message as a dict, or None (other encoders are never decoded here)."""
    if not data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) and "message_id" in value else None


class BrokerOps:
    """A broker the agent cannot inspect: no depth, no dead letters."""

    kind = "other"
    can_purge = False
    can_read_dead_letters = False
    can_requeue_dead_letters = False
    can_remove_waiting = False

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def depth(self, queue: str) -> int | None:
        return None

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


class RedisOps(BrokerOps):
    kind = "redis"
    can_purge = True
    can_read_dead_letters = True
    can_requeue_dead_letters = True
    can_remove_waiting = True

    def __init__(self, broker: Any) -> None:
        super().__init__(broker)
        self.client = broker.client
        self.ns = broker.namespace
        self._remove = self.client.register_script(_REMOVE_WAITING)
        self._purge = self.client.register_script(_PURGE_WAITING)
        self._requeue = self.client.register_script(_REQUEUE_DEAD)

    def key(self, queue: str, suffix: str = "") -> str:
        return f"{self.ns}:{queue}{suffix}"

    def ping(self) -> bool:
        return bool(self.client.ping())

    def depth(self, queue: str) -> int | None:
        return int(self.client.llen(self.key(queue)))

    def depths(self, queues: list[str]) -> dict[str, dict[str, int]]:
        with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(self.key(q))
                pipe.llen(self.key(q, ".DQ"))
                pipe.zcard(self.key(q, ".XQ"))
            replies = pipe.execute()
        return {q: {"waiting": int(replies[3 * i]), "delayed": int(replies[3 * i + 1]),
                    "dead": int(replies[3 * i + 2])} for i, q in enumerate(queues)}

    def live_workers(self) -> int:
        """Broker connections (one per worker process) that sent a command in the heartbeat window."""
        import time

        cutoff = int(time.time() * 1000) - int(getattr(self.broker, "heartbeat_timeout", 60000))
        return int(self.client.zcount(f"{self.ns}:__heartbeats__", cutoff, "+inf"))

    # -- finding a message by its dramatiq id ------------------------------------------------------
    def find(self, queue: str, message_id: str, redis_id: str | None = None) -> tuple[str, str, bytes] | None:
        """(where, redis id, body) of the message in ``queue`` (``waiting_or_taken``) or its delay
        queue (``delayed``); None when it is in neither."""
        for where, suffix in (("queue", ""), ("delayed", ".DQ")):
            msgs = self.key(queue, suffix + ".msgs")
            if redis_id:
                data = self.client.hget(msgs, redis_id)
                if data is not None and message_id.encode() in data:
                    return where, redis_id, data
            found = self._scan(msgs, message_id)
            if found is not None:
                return where, found[0], found[1]
        return None

    def find_dead(self, queue: str, message_id: str, redis_id: str | None = None) -> tuple[str, bytes] | None:
        msgs = self.key(queue, ".XQ.msgs")
        if redis_id:
            data = self.client.hget(msgs, redis_id)
            if data is not None and message_id.encode() in data:
                return redis_id, data
        return self._scan(msgs, message_id)

    def _scan(self, key: str, message_id: str) -> tuple[str, bytes] | None:
        needle = message_id.encode()
        for seen, (field, value) in enumerate(self.client.hscan_iter(key, count=SCAN_COUNT), 1):
            if needle in value:
                parsed = parse_body(value)
                if parsed is None or parsed.get("message_id") == message_id:
                    return field.decode(), value
            if seen >= MAX_SCAN:
                raise BrokerError(f"{key} holds more than {MAX_SCAN} messages; not scanned further")
        return None

    # -- changing ----------------------------------------------------------------------------------
    def remove_waiting(self, queue: str, redis_id: str, *, delayed: bool = False) -> bytes | None:
        """Take a message that no worker fetched yet off its list; None if a worker has it."""
        suffix = ".DQ" if delayed else ""
        data = self._remove(keys=[self.key(queue, suffix), self.key(queue, suffix + ".msgs")], args=[redis_id])
        return None if data is None else bytes(data)

    def purge(self, queue: str, keep: int) -> tuple[int, list[bytes]]:
        count, bodies = self._purge(keys=[self.key(queue), self.key(queue, ".msgs")], args=[keep])
        return int(count), [bytes(b) for b in bodies]

    def requeue_dead(self, queue: str, redis_id: str) -> bytes | None:
        data = self._requeue(keys=[self.key(queue, ".XQ"), self.key(queue, ".XQ.msgs"), self.key(queue),
                                   self.key(queue, ".msgs")], args=[redis_id])
        return None if data is None else bytes(data)

    def dead_page(self, queue: str, offset: int, count: int) -> list[tuple[str, float, bytes | None]]:
        members = self.client.zrevrange(self.key(queue, ".XQ"), offset, offset + count - 1, withscores=True)
        if not members:
            return []
        ids = [m.decode() for m, _ in members]
        bodies = self.client.hmget(self.key(queue, ".XQ.msgs"), ids)
        return [(rid, score / 1000.0, body) for rid, (_, score), body in zip(ids, members, bodies)]

    def dead_count(self, queue: str) -> int:
        return int(self.client.zcard(self.key(queue, ".XQ")))


class RabbitOps(BrokerOps):
    kind = "rabbitmq"
    can_purge = True
    can_read_dead_letters = False   # AMQP cannot read a queue without consuming it
    can_requeue_dead_letters = False

    def __init__(self, broker: Any) -> None:
        super().__init__(broker)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._chan: Any = None

    def _channel(self) -> Any:
        import pika

        if self._conn is None or not self._conn.is_open:
            self._conn = pika.BlockingConnection(self.broker.parameters)
            self._chan = None
        if self._chan is None or not self._chan.is_open:
            self._chan = self._conn.channel()
        return self._chan

    def _call(self, fn: Any) -> Any:
        import pika.exceptions as pe

        with self._lock:
            for attempt in range(2):
                try:
                    return fn(self._channel())
                except pe.ChannelClosedByBroker as exc:
                    self._chan = None
                    if exc.reply_code == 404:
                        return None  # the queue was never declared on the server
                    raise BrokerError(f"RabbitMQ refused: {exc.reply_code} {exc.reply_text}") from None
                except (pe.AMQPConnectionError, pe.AMQPChannelError, OSError) as exc:
                    self._reset()
                    if attempt:
                        raise BrokerError(f"RabbitMQ unreachable: {type(exc).__name__}") from None
        return None

    def _reset(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def ping(self) -> bool:
        self._call(lambda ch: True)
        return True

    def depth(self, queue: str) -> int | None:
        reply = self._call(lambda ch: ch.queue_declare(queue=queue, passive=True))
        return int(reply.method.message_count) if reply is not None else 0

    def depths(self, queues: list[str]) -> dict[str, dict[str, int]]:
        out = {}
        for q in queues:
            out[q] = {"waiting": self.depth(q) or 0, "delayed": self.depth(f"{q}.DQ") or 0,
                      "dead": self.depth(f"{q}.XQ") or 0}
        return out

    def dead_count(self, queue: str) -> int:
        return self.depth(f"{queue}.XQ") or 0

    def purge(self, queue: str, keep: int) -> tuple[int, list[bytes]]:
        reply = self._call(lambda ch: ch.queue_purge(queue))
        return (int(reply.method.message_count) if reply is not None else 0), []

    def close(self) -> None:
        with self._lock:
            self._reset()


def broker_ops(broker: Any) -> BrokerOps:
    name = type(broker).__name__
    try:
        from dramatiq.brokers.redis import RedisBroker

        if isinstance(broker, RedisBroker):
            return RedisOps(broker)
    except ImportError:
        pass
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        if isinstance(broker, RabbitmqBroker):
            return RabbitOps(broker)
    except ImportError:
        pass
    log.info("dramatiq.broker_not_inspected", broker=name)
    return BrokerOps(broker)
