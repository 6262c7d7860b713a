"""Broker-side reads and the one destructive write (purge of a single queue) for Celery.

One kombu connection, owned by the adapter and used under a lock from the health thread and
command threads; every call is bounded by short timeouts so a broker outage costs a heartbeat
field, never a stuck thread. Depth is read without consuming: Redis ``LLEN`` over the priority
sub-lists kombu uses, AMQP passive ``queue_declare``. Purge uses the channel's ``queue_purge``
on exactly one queue; nothing here deletes a queue.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..logs import get_logger

log = get_logger(__name__)

CONF_ALLOWLIST = (
    "task_serializer", "result_serializer", "accept_content", "result_accept_content", "task_default_queue",
    "worker_concurrency", "worker_prefetch_multiplier", "worker_max_tasks_per_child",
    "worker_max_memory_per_child", "task_acks_late", "task_reject_on_worker_lost", "task_time_limit",
    "task_soft_time_limit", "broker_pool_limit", "broker_heartbeat", "timezone", "enable_utc",
)
INSPECT_TIMEOUT = 2.0
DETAILS_TTL = 60.0
MAX_QUEUES = 50


class BrokerError(Exception):
    pass


def broker_type(app: Any) -> str:
    try:
        scheme = app.connection_for_read().transport_cls
    except Exception:  # noqa: BLE001
        scheme = None
    text = str(scheme or app.conf.broker_url or "amqp").split("://", 1)[0].lower()
    if text.startswith("redis") or text.startswith("rediss") or text.startswith("sentinel"):
        return "redis"
    if text.startswith(("amqp", "pyamqp", "librabbitmq")):
        return "amqp"
    return text or "unknown"


class BrokerClient:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.type = broker_type(app)
        self._lock = threading.Lock()
        self._conn: Any = None
        self.last_error: str | None = None
        self._details: dict[str, Any] = {}
        self._details_at = 0.0
        self._details_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BrokerClient(type={self.type!r})"

    # -- connection ---------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            conn = self.app.connection_for_write()
            conn.ensure_connection(max_retries=1, timeout=2.0)
            self._conn = conn
        return self._conn

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001
                pass

    def _with_channel(self, fn: Any) -> Any:
        """Run ``fn(channel)`` with one reconnect attempt; raise BrokerError with the reason."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    channel = conn.default_channel
                    result = fn(channel)
                    self.last_error = None
                    return result
                except _NotFound:
                    raise
                except Exception as exc:  # noqa: BLE001 - broker errors come in many types
                    if _is_not_found(exc):
                        self._reset()  # AMQP closed the channel
                        raise _NotFound(str(exc)) from None
                    self._reset()
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    if attempt == 2:
                        raise BrokerError(self.last_error) from None
        raise BrokerError("unreachable")

    @property
    def connected(self) -> bool:
        try:
            self._with_channel(lambda ch: True)
            return True
        except (BrokerError, _NotFound):
            return False

    # -- depth / purge -------------------------------------------------------------------------
    def depth(self, queue: str) -> int | None:
        """Messages waiting; 0 for a Redis queue that has none, None if unknown/absent on AMQP."""
        def read(channel: Any) -> int:
            if self.type == "redis":
                return int(channel._size(queue))
            return int(channel.queue_declare(queue=queue, passive=True).message_count)

        try:
            return self._with_channel(read)
        except _NotFound:
            return None

    def purge(self, queue: str) -> int:
        def run(channel: Any) -> int:
            return int(channel.queue_purge(queue) or 0)

        try:
            return self._with_channel(run)
        except _NotFound:
            raise BrokerError(f"queue {queue!r} does not exist on the broker") from None

    # -- health --------------------------------------------------------------------------------
    def worker_details(self, hostname: str | None) -> dict[str, Any]:
        """Cached ~60 s; stats first (<= 2 s), the rest only if the worker answered (replies are immediate)."""
        now = time.monotonic()
        if now - self._details_at < DETAILS_TTL:
            return self._details
        if not self._details_lock.acquire(blocking=False):
            return self._details  # another thread is refreshing
        try:
            self._details = self._inspect(hostname)
            self._details_at = time.monotonic()
        finally:
            self._details_lock.release()
        return self._details

    def _inspect(self, hostname: str | None) -> dict[str, Any]:
        # A dedicated connection, never the app's shared pool: the worker main process may fork
        # pool children at any moment, and a pool lock held by this thread must not be inherited.
        try:
            with self.app.connection_for_write() as conn:
                return self._inspect_on(conn, hostname)
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"inspect: {type(exc).__name__}"
            return {}

    def _inspect_on(self, conn: Any, hostname: str | None) -> dict[str, Any]:
        control = self.app.control
        if hostname:
            insp = control.inspect(destination=[hostname], timeout=INSPECT_TIMEOUT, limit=1, connection=conn)
            calls = {"stats": insp.stats, "active_queues": insp.active_queues, "registered": insp.registered,
                     "conf": lambda: insp.conf(with_defaults=True)}
        else:
            insp = control.inspect(timeout=1.0, connection=conn)
            calls = {"stats": insp.stats}
        out: dict[str, dict[str, Any]] = {}
        for key, call in calls.items():
            try:
                replies = call() or {}
            except Exception as exc:  # noqa: BLE001
                self.last_error = f"inspect {key}: {type(exc).__name__}"
                replies = {}
            if key == "stats" and not replies:
                break  # nobody answered within the timeout: asking three more times would only wait 3x longer
            for host, value in replies.items():
                if key == "conf" and isinstance(value, dict):
                    value = {k: value[k] for k in CONF_ALLOWLIST if k in value}
                elif key == "active_queues" and isinstance(value, list):
                    value = [q.get("name") for q in value if isinstance(q, dict)]
                elif key == "stats" and isinstance(value, dict):
                    value = _trim_stats(value)
                out.setdefault(host, {})[key] = value
        return out

    def close(self) -> None:
        with self._lock:
            self._reset()


def _trim_stats(stats: dict[str, Any]) -> dict[str, Any]:
    keep = ("pid", "uptime", "total", "pool", "prefetch_count", "clock")
    out = {k: stats[k] for k in keep if k in stats}
    pool = out.get("pool")
    if isinstance(pool, dict):
        out["pool"] = {k: pool[k] for k in ("implementation", "max-concurrency", "processes", "max-tasks-per-child")
                       if k in pool}
    broker = stats.get("broker")
    if isinstance(broker, dict):
        out["broker"] = {k: broker[k] for k in ("transport", "hostname", "port") if k in broker}
    return out


class _NotFound(Exception):
    pass


def _is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None) or getattr(exc, "reply_code", None)
    return code == 404 or type(exc).__name__ == "NotFound"
