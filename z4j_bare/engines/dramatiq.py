"""DramatiqEngineAdapter: capture Dramatiq message lifecycles and run operator commands.

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from z4j_dramatiq import DramatiqEngineAdapter

    broker = RedisBroker(url="redis://localhost:6379/0")
    dramatiq.set_broker(broker)
    z4j = DramatiqEngineAdapter(broker=broker)    # adds the z4j middleware to the broker

Under the ``dramatiq`` command that is all: the worker processes capture, and the middleware asks
dramatiq to start one agent process that holds the brain session (``dramatiq_family``). In any
other process (a web app sending messages, a programmatic ``Worker``), call
``install_agent(engines=[z4j])``. Capture: ``dramatiq_capture``; commands: ``dramatiq_commands``;
broker access: ``dramatiq_broker``; retry by reference: ``dramatiq_store``. Guide: docs/dramatiq.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..logs import get_logger
from ..safety import safe_call
from . import dramatiq_family as family
from .base import CommandRequest, EngineAdapter, EventSink
from .dramatiq_broker import BrokerError, BrokerOps, broker_ops
from .dramatiq_store import DEFAULT_MAX_ROWS, DEFAULT_TTL_SECONDS, MessageStore
from .dramatiq_support import abortable

log = get_logger(__name__)

MAX_HEALTH_QUEUES = 64


class DramatiqEngineAdapter(EngineAdapter):
    """Capture Dramatiq message lifecycles and run operator commands on its broker.

    ``broker``: the Dramatiq broker your actors use (default: the global broker, which must have
    been set). ``capture_args=False`` keeps message arguments out of events. ``capture_results``:
    None (default) adds the actor's return value to ``task.succeeded`` where the Results
    middleware stores it (``store_results``); True always, False never. ``remember_messages``
    keeps the messages (unredacted, on this host) so ``retry_task`` works by reference.
    ``queues`` adds queue names to the heartbeat's depth report (declared queues are included).
    ``cancel_wait_seconds``: how long ``cancel_task`` waits to see a worker skip the message;
    ``cancel_ttl_seconds``: how long a cancel request for a message still in the broker stays
    valid (dramatiq-abort).
    """

    name: ClassVar[str] = "dramatiq"
    safe_retry_by_reference: ClassVar[bool] = True

    def __init__(
        self,
        broker: Any = None,
        *,
        capture_args: bool = True,
        capture_results: bool | None = None,
        remember_messages: bool = True,
        message_store_max_rows: int = DEFAULT_MAX_ROWS,
        message_store_ttl_seconds: float = DEFAULT_TTL_SECONDS,
        queues: list[str] | None = None,
        cancel_wait_seconds: float = 2.0,
        cancel_ttl_seconds: float = 86400.0,
    ) -> None:
        from dramatiq.broker import Broker

        if broker is None:
            from dramatiq import broker as global_state

            broker = global_state.global_broker
            if broker is None:
                raise ValueError("DramatiqEngineAdapter needs your Dramatiq broker: pass broker=<the broker your "
                                 "actors use> (or call dramatiq.set_broker(broker) first)")
        if not isinstance(broker, Broker):
            raise ValueError(f"DramatiqEngineAdapter(broker=...) needs a dramatiq Broker, got {type(broker).__name__}")
        if capture_results not in (None, True, False):
            raise ValueError(f"DramatiqEngineAdapter capture_results must be True, False or None (got {capture_results!r})")
        for label, value in (("cancel_wait_seconds", cancel_wait_seconds), ("cancel_ttl_seconds", cancel_ttl_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DramatiqEngineAdapter {label} must be a number of seconds >= 0 (got {value!r})")
        if queues is not None and not (isinstance(queues, (list, tuple)) and all(isinstance(q, str) for q in queues)):
            raise ValueError("DramatiqEngineAdapter queues must be a list of queue names")
        self.broker = broker
        self.capture_args = bool(capture_args)
        self.capture_results = capture_results
        self.remember_messages = bool(remember_messages)
        self.store_max_rows = int(message_store_max_rows)
        self.store_ttl = float(message_store_ttl_seconds)
        self.watched_queues = list(queues or [])
        self.cancel_wait_seconds = float(cancel_wait_seconds)
        self.cancel_ttl_seconds = float(cancel_ttl_seconds)
        self.sink: EventSink | None = None
        self.family_sink: EventSink | None = None
        self.store: MessageStore | None = None
        self._ops: BrokerOps | None = None
        self.middleware = self._install_middleware()
        family.register_adapter(broker, self)
        from .dramatiq_commands import DramatiqCommands

        self._commands = DramatiqCommands(self)

    def __repr__(self) -> str:
        return f"<DramatiqEngineAdapter broker={type(self.broker).__name__}>"

    def _install_middleware(self) -> Any:
        from .dramatiq_middleware import Z4jMiddleware

        for existing in self.broker.middleware:
            if isinstance(existing, Z4jMiddleware):
                existing.adapter = self  # a second adapter for the same broker takes over
                return existing
        middleware = Z4jMiddleware(self)
        self.broker.add_middleware(middleware)
        return middleware

    @property
    def ops(self) -> BrokerOps:
        if self._ops is None:
            self._ops = broker_ops(self.broker)
        return self._ops

    # -- lifecycle -----------------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        caps = {"submit_task", "retry_task", "bulk_retry"}
        ops = self.ops
        if ops.can_purge:
            caps.add("purge_queue")
        if ops.kind in ("redis", "rabbitmq"):
            caps.add("list_dead_letters")
        if ops.can_requeue_dead_letters:
            caps.add("requeue_dead_letter")
        if ops.can_remove_waiting or abortable(self.broker) is not None:
            caps.add("cancel_task")
        return frozenset(caps)

    def attach(self, sink: EventSink) -> None:
        self.sink = sink
        if self.remember_messages and self.store is None:
            self.store = self.open_store(sink)
        self.middleware.use_sink(sink, self.store)

    def detach(self) -> None:
        self.middleware.use_sink(None, None)
        if self.store is not None:
            safe_call(self.store.close, site="dramatiq.store.close")
            self.store = None
        if self._ops is not None:
            safe_call(self._ops.close, site="dramatiq.broker.close")

    def flush(self) -> None:
        capture = self.middleware.z4j_capture
        if capture is not None:
            capture.flush()

    def open_store(self, sink: EventSink) -> MessageStore | None:
        path = getattr(sink.buffer, "path", None)
        if not path:
            return None
        deployment = getattr(sink.buffer, "_deployment", "") or ""
        return MessageStore(family.message_store_path(Path(path), deployment), max_rows=self.store_max_rows,
                            ttl=self.store_ttl)

    def emit(self, kind: str, task_id: str, data: dict[str, Any], occurred_at: float | None = None) -> None:
        """Command-side events (purged, cancelled): through the runtime's sink, else the family's."""
        sink = self.sink or self.family_sink
        if sink is not None:
            sink.emit(kind, task_id, data, occurred_at)

    # -- health --------------------------------------------------------------------------------
    def queues(self) -> list[str]:
        names = dict.fromkeys(self.watched_queues)
        try:
            names.update(dict.fromkeys(sorted(self.broker.get_declared_queues())))
        except Exception:  # noqa: BLE001
            pass
        return [n for n in names if isinstance(n, str) and n][:MAX_HEALTH_QUEUES]

    def health(self) -> dict[str, Any]:
        ops = self.ops
        out: dict[str, Any] = {"broker_type": ops.kind}
        if ops.kind == "other":
            out["broker_type"] = type(self.broker).__name__
            return out
        try:
            queues = self.queues()
            depths = ops.depths(queues) if queues else {}
            out["broker_connected"] = True
            out["queue_depths"] = {q: d["waiting"] for q, d in depths.items()}
            out["delayed_depths"] = {q: d["delayed"] for q, d in depths.items() if d["delayed"]}
            out["dead_letters"] = {q: d["dead"] for q, d in depths.items() if d["dead"]}
            if ops.kind == "redis":
                out["live_worker_processes"] = ops.live_workers()
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the heartbeat
            out["broker_connected"] = False
            out["broker_error"] = type(exc).__name__
        return out

    def queue_depth(self, queue: str) -> int | None:
        try:
            return self.ops.depth(queue)
        except (BrokerError, Exception):  # noqa: BLE001 - unknown depth: the runtime then needs force
            return None

    # -- commands (dramatiq_commands) ------------------------------------------------------------
    def submit_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.submit_task(request)

    def retry_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.retry_task(request)

    def bulk_retry(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.bulk_retry(request)

    def cancel_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.cancel_task(request)

    def purge_queue(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.purge_queue(request)

    def list_dead_letters(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.list_dead_letters(request)

    def requeue_dead_letter(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.requeue_dead_letter(request)

    def reconcile_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._commands.reconcile_task(request)
