"""Operator commands on Dramatiq, each answered with what really happened (docs/dramatiq.md).

Retry is by reference: the original message comes from the agent's message store (or, on
Redis, from the dead-letter queue), never from the brain, and is published again with a fresh
message id and ``options["z4j_retry_of"]`` naming the original. Cancel removes a message that
no worker took yet (Redis), or asks dramatiq-abort's ``Abortable`` to skip it and watches
whether a worker did; a message that is running is reported as not cancelled.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from ..logs import get_logger
from . import dramatiq_store as st
from .base import CommandFailed, CommandRequest
from .dramatiq_broker import BrokerError, parse_body
from .dramatiq_capture import canonical_queue
from .dramatiq_support import STORE_WAIT_SECONDS, original, record

if TYPE_CHECKING:
    from .dramatiq_support import DramatiqAdapterView

log = get_logger(__name__)

MAX_BULK = 10_000
MAX_BULK_DETAILS = 200
MAX_DLQ_PAGE = 200
MAX_PURGE_EVENTS = 10_000
#: Options that describe one delivery of a message, not the message: never carried to a retry.
DELIVERY_OPTIONS = frozenset({"retries", "traceback", "requeue_timestamp", "redis_message_id", "eta",
                              "z4j_retry_of"})


class DramatiqCommands:
    def __init__(self, adapter: DramatiqAdapterView) -> None:
        self.a = adapter

    # -- submit / retry -----------------------------------------------------------------------------
    def submit_task(self, request: CommandRequest) -> dict[str, Any]:
        from dramatiq.errors import ActorNotFound

        name = request.param("name") or request.param("task_name")
        if not isinstance(name, str) or not name:
            raise CommandFailed("submit_task: parameter 'name' (the actor name) is required")
        args, kwargs = request.param("args", []), request.param("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise CommandFailed("submit_task: 'args' must be a list and 'kwargs' an object")
        try:
            actor = self.a.broker.get_actor(name)
        except ActorNotFound:
            raise CommandFailed(f"submit_task: no actor named {name!r} is declared on this broker "
                                "(the agent knows the actors your broker module declares)") from None
        options: dict[str, Any] = {}
        priority = request.param("priority")
        if isinstance(priority, int) and not isinstance(priority, bool):
            options["broker_priority"] = priority
        message = actor.message_with_options(args=tuple(args), kwargs=kwargs, **options)
        queue = request.param("queue")
        if isinstance(queue, str) and queue and queue != message.queue_name:
            self.a.broker.declare_queue(queue)
            message = message.copy(queue_name=queue)
        delay = _delay_ms(request.param("eta"), request.param("eta_seconds"), "submit_task")
        sent = self._enqueue(message, delay, "submit_task")
        return {"task_id": sent.message_id, "engine": self.a.name, "task_name": name,
                "queue": canonical_queue(sent.queue_name), "delay_ms": delay}

    def _enqueue(self, message: Any, delay: int | None, action: str) -> Any:
        try:
            return self.a.broker.enqueue(message, delay=delay)
        except Exception as exc:  # noqa: BLE001 - broker errors, reported
            raise CommandFailed(f"{action}: sending {message.actor_name} failed: {type(exc).__name__}: {exc}") from None

    def retry_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._publish_again(
            request.require("task_id"), action=request.action, task_name=request.param("task_name"),
            override_args=request.parameters.get("override_args"),
            override_kwargs=request.parameters.get("override_kwargs"),
            delay=_delay_ms(request.param("eta"), request.param("eta_seconds"), request.action))

    def _publish_again(self, message_id: str, *, action: str, task_name: Any, override_args: Any,
                       override_kwargs: Any, delay: int | None, wait: float = STORE_WAIT_SECONDS) -> dict[str, Any]:
        from dramatiq import Message

        if override_args is not None and not isinstance(override_args, (list, tuple)):
            raise CommandFailed(f"{action}: override_args must be a list")
        if override_kwargs is not None and not isinstance(override_kwargs, dict):
            raise CommandFailed(f"{action}: override_kwargs must be an object")
        original_message, source, found = original(self.a, message_id, wait)
        if original_message is None:
            if found is not None and not found.get("body"):
                raise CommandFailed(f"{action}: message {message_id} was seen but not remembered "
                                    f"({found.get('error') or 'no body'}); pass override_args and override_kwargs")
            if override_args is None or override_kwargs is None or not isinstance(task_name, str) or not task_name:
                raise CommandFailed(
                    f"{action}: original message not known to this agent: {message_id} was not sent or taken by a "
                    "process running the z4j middleware (or it was pruned from the message store), and it is not "
                    "in a Redis dead-letter queue. Pass override_args and override_kwargs to send it with "
                    "explicit arguments.")
            try:
                actor = self.a.broker.get_actor(task_name)
            except Exception:  # noqa: BLE001
                raise CommandFailed(f"{action}: no actor named {task_name!r} is declared on this broker") from None
            original_message, source = actor.message_with_options(args=(), kwargs={}), "overrides"
            original_message = original_message.copy(message_id=message_id)
        if isinstance(task_name, str) and task_name and task_name != original_message.actor_name:
            raise CommandFailed(f"{action}: message {message_id} is actor {original_message.actor_name!r} here, "
                                f"not {task_name!r}; refusing to guess")
        options = {k: v for k, v in original_message.options.items() if k not in DELIVERY_OPTIONS}
        options["z4j_retry_of"] = message_id
        args = tuple(override_args) if override_args is not None else tuple(original_message.args)
        kwargs = dict(override_kwargs) if override_kwargs is not None else dict(original_message.kwargs)
        fresh = Message(queue_name=canonical_queue(original_message.queue_name), actor_name=original_message.actor_name,
                        args=args, kwargs=kwargs, options=options)
        sent = self._enqueue(fresh, delay, action)
        result = {"new_task_id": sent.message_id, "task_name": sent.actor_name, "queue": fresh.queue_name,
                  "source": source, "original_task_id": message_id}
        if delay is not None:
            result["delay_ms"] = delay
        if found is not None and found.get("state") == st.FAILED and self.a.ops.kind == "redis":
            result["note"] = "the original stays in the dead-letter queue (requeue_dead_letter would run it again)"
        return result

    def bulk_retry(self, request: CommandRequest) -> dict[str, Any]:
        filt = request.param("filter", {})
        if not isinstance(filt, dict):
            raise CommandFailed("bulk_retry: parameter 'filter' must be an object")
        ids = filt.get("task_ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise CommandFailed("bulk_retry: filter.task_ids must be a list of message ids (retry by id only)")
        limit = request.param("max", 1000)
        limit = max(0, min(int(limit) if isinstance(limit, int) and not isinstance(limit, bool) else 1000, MAX_BULK))
        names = filt.get("task_names") if isinstance(filt.get("task_names"), dict) else {}
        selected = list(dict.fromkeys(ids))[:limit]
        if self.a.store is not None and selected:
            self.a.store.get_many(selected, wait=STORE_WAIT_SECONDS)  # one wait for the whole batch
        results, succeeded, failed = [], 0, 0
        for message_id in selected:
            try:
                out = self._publish_again(message_id, action="bulk_retry", task_name=names.get(message_id),
                                          override_args=request.parameters.get("override_args"),
                                          override_kwargs=request.parameters.get("override_kwargs"), delay=None,
                                          wait=0.0)
                succeeded += 1
                item = {"task_id": message_id, "new_task_id": out["new_task_id"]}
            except CommandFailed as exc:
                failed += 1
                item = {"task_id": message_id, "error": str(exc)[:300]}
            if len(results) < MAX_BULK_DETAILS:
                results.append(item)
        result = {"filter": filt, "requested": len(selected), "succeeded": succeeded, "failed": failed,
                  "results": results}
        if selected and not succeeded:
            raise CommandFailed(f"bulk_retry: none of {len(selected)} messages could be retried", result)
        return result

    # -- cancel ---------------------------------------------------------------------------------------
    def cancel_task(self, request: CommandRequest) -> dict[str, Any]:
        from .dramatiq_cancel import cancel

        return cancel(self.a, request.require("task_id"))

    # -- queues and dead letters ----------------------------------------------------------------------
    def purge_queue(self, request: CommandRequest) -> dict[str, Any]:
        queue = request.require("queue")
        try:
            purged, bodies = self.a.ops.purge(queue, MAX_PURGE_EVENTS)
        except BrokerError as exc:
            raise CommandFailed(f"purge_queue: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            raise CommandFailed(f"purge_queue: {type(exc).__name__}: {exc}") from None
        now = time.time()
        for body in bodies:
            fields = parse_body(body)
            if fields is not None:  # messages already reported as received must not stay pending
                self.a.emit(EventKind.TASK_REVOKED.value, fields["message_id"],
                            {"task_name": fields.get("actor_name"), "queue": queue, "reason": "purged",
                             "terminated": False}, now)
        result: dict[str, Any] = {"queue": queue, "purged": purged}
        if self.a.ops.kind == "rabbitmq":
            result["note"] = "RabbitMQ purges without naming the messages: no per-message events"
        return result

    def list_dead_letters(self, request: CommandRequest) -> dict[str, Any]:
        from .dramatiq_deadletters import dead_letter_page

        return dead_letter_page(self.a, request)

    def requeue_dead_letter(self, request: CommandRequest) -> dict[str, Any]:
        message_id = request.require("task_id")
        ops = self.a.ops
        found_record = record(self.a, message_id)
        queues = [found_record["queue"]] if found_record is not None else self.a.queues()
        for queue in queues:
            try:
                found = ops.find_dead(queue, message_id, found_record.get("redis_id") if found_record else None)
            except BrokerError as exc:
                raise CommandFailed(f"requeue_dead_letter: {exc}") from None
            if found is None:
                continue
            data = ops.requeue_dead(queue, found[0])
            if data is None:
                raise CommandFailed(f"requeue_dead_letter: message {message_id} left the dead-letter queue of "
                                    f"{queue!r} before it could be requeued", {"task_id": message_id, "requeued": False})
            fields = parse_body(data) or {}
            self.a.emit(EventKind.TASK_RECEIVED.value, message_id,
                        {"task_name": fields.get("actor_name") or (found_record or {}).get("actor"), "queue": queue,
                         "requeued_by": "requeue_dead_letter"})
            return {"task_id": message_id, "queue": queue, "source": "dead_letter_queue", "requeued": True}
        raise CommandFailed(f"requeue_dead_letter: message {message_id} is not in the dead-letter queue of "
                            f"{'queue ' + repr(queues[0]) if found_record else 'any known queue'}",
                            {"task_id": message_id, "requeued": False})

    def reconcile_task(self, request: CommandRequest) -> dict[str, Any]:
        from .dramatiq_deadletters import reconcile

        return reconcile(self.a, request.require("task_id"))


def _delay_ms(eta: Any, eta_seconds: Any, action: str) -> int | None:
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise CommandFailed(f"{action}: 'eta' must be absolute POSIX seconds")
        return max(0, int((float(eta) - time.time()) * 1000)) or None
    if eta_seconds is not None:
        if isinstance(eta_seconds, bool) or not isinstance(eta_seconds, (int, float)) or eta_seconds < 0:
            raise CommandFailed(f"{action}: 'eta_seconds' must be a non-negative number")
        return int(float(eta_seconds) * 1000) or None
    return None
