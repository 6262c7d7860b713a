"""``cancel_task`` for Dramatiq: take the message away before a worker runs it, or say it runs.

In order:

1. The agent's record says the message already finished: nothing to cancel (failed).
2. Redis: the message is still on its queue or delay queue (no worker fetched it): removed from
   the broker atomically. Cancelled, reported by the agent as ``task.revoked``.
3. The message is held by a worker (prefetched, running, or a delayed copy waiting in memory),
   or the broker cannot be looked into (RabbitMQ): with dramatiq-abort's ``Abortable`` (Redis
   event backend), a *cancel* event is sent. The worker that takes the message pops it and
   skips the message (it reports ``task.revoked`` itself). The agent watches the event for
   ``cancel_wait_seconds``: popped means cancelled. Not popped while the message is known to be
   taken means it is running (or about to): the event is withdrawn and the result says "not
   cancelled", never "completed" for work that goes on. Not popped while the message is not
   known to be taken (still in a RabbitMQ queue, or waiting for its eta): the event stays
   (``cancel_ttl_seconds``, or longer for a later eta) and the result says the cancel is pending.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from . import dramatiq_store as st
from .base import CommandFailed
from .dramatiq_broker import BrokerError, parse_body
from .dramatiq_support import abortable as find_abortable
from .dramatiq_support import record as find_record

if TYPE_CHECKING:
    from .dramatiq_support import DramatiqAdapterView

POLL_SECONDS = 0.05


def cancel(adapter: DramatiqAdapterView, message_id: str) -> dict[str, Any]:
    record = find_record(adapter, message_id)
    base: dict[str, Any] = {"task_id": message_id}
    if record is not None:
        base.update(queue=record["queue"], task_name=record["actor"], previous_state=record["state"])
        if record["state"] in st.FINISHED:
            raise CommandFailed(f"cancel_task: message {message_id} already ended ({record['state']}); "
                                "nothing to cancel", {**base, "cancelled": False})
    held: tuple[str, str, bytes] | None = None  # (queue, where, body) of a message a worker has
    if adapter.ops.can_remove_waiting:
        held, removed = _remove_from_redis(adapter, message_id, record, base)
        if removed is not None:
            return removed
        if held is None:  # Redis keeps a message (taken or not) until it is acked: it is gone
            raise CommandFailed(f"cancel_task: message {message_id} is not in the broker (finished, purged, "
                                "or never sent); nothing to cancel", {**base, "cancelled": False})
    abortable = find_abortable(adapter.broker)
    if abortable is None:
        raise CommandFailed(f"cancel_task: message {message_id} is held by a worker (prefetched or running); "
                            "stopping it needs dramatiq-abort's Abortable middleware on the broker; not cancelled",
                            {**base, "cancelled": False, "held_by_worker": True})
    return _cancel_with_abortable(adapter, abortable, message_id, record, held, base)


def _remove_from_redis(adapter: DramatiqAdapterView, message_id: str, record: dict[str, Any] | None,
                       base: dict[str, Any]) -> tuple[tuple[str, str, bytes] | None, dict[str, Any] | None]:
    ops = adapter.ops
    queues = [record["queue"]] if record is not None else adapter.queues()
    for queue in queues:
        try:
            found = ops.find(queue, message_id, record.get("redis_id") if record else None)
        except BrokerError as exc:
            raise CommandFailed(f"cancel_task: {exc}", {**base, "cancelled": False}) from None
        if found is None:
            continue
        where, redis_id, body = found
        data = ops.remove_waiting(queue, redis_id, delayed=where == "delayed")
        if data is None:
            return (queue, where, body), None  # fetched by a worker between our look and the removal
        fields = parse_body(body) or {}
        name = fields.get("actor_name") or base.get("task_name")
        adapter.emit(EventKind.TASK_REVOKED.value, message_id, {"task_name": name, "queue": queue,
                                                                "reason": "cancelled", "terminated": False})
        if adapter.store is not None:
            adapter.store.put(message_id, queue=queue, actor=name or "unknown", state=st.SKIPPED)
        how = "removed from the delay queue" if where == "delayed" else "removed from the queue"
        return None, {**base, "queue": queue, "task_name": name, "cancelled": True, "terminated": False, "how": how}
    return None, None


def _cancel_with_abortable(adapter: DramatiqAdapterView, abortable: Any, message_id: str, record: dict[str, Any] | None,
                           held: tuple[str, str, bytes] | None, base: dict[str, Any]) -> dict[str, Any]:
    from dramatiq_abort.middleware import AbortMode

    eta_ms = _eta_ms(held[2]) if held is not None else None
    ttl = adapter.cancel_ttl_seconds
    if eta_ms is not None:
        ttl = max(ttl, eta_ms / 1000.0 - time.time() + 3600.0)
    backend = abortable.backend
    key = (backend.namespace + abortable.id_to_key(message_id, AbortMode.CANCEL)).encode()
    try:
        abortable.abort(message_id, abort_ttl=int(ttl * 1000), mode=AbortMode.CANCEL)
    except Exception as exc:  # noqa: BLE001
        raise CommandFailed(f"cancel_task: sending the cancel event failed: {type(exc).__name__}: {exc}",
                            {**base, "cancelled": False}) from None
    deadline = time.monotonic() + adapter.cancel_wait_seconds
    while time.monotonic() < deadline:
        if not backend.client.exists(key):
            return {**base, "cancelled": True, "terminated": False, "how": "skipped by the worker that took it"}
        time.sleep(POLL_SECONDS)
    taken = (held is not None and held[1] == "queue") or (record is not None and record["state"] == st.TAKEN)
    if taken:
        if backend.client.delete(key) == 0:  # popped between our last look and the withdrawal
            return {**base, "cancelled": True, "terminated": False, "how": "skipped by the worker that took it"}
        raise CommandFailed(f"cancel_task: message {message_id} is running (or about to run) in a worker and was "
                            f"not skipped within {adapter.cancel_wait_seconds:g} s; not cancelled",
                            {**base, "cancelled": False, "running": True})
    return {**base, "cancelled": False, "cancel_pending": True, "expires_in_seconds": int(ttl),
            "note": "no worker running the agent has taken this message yet; the worker that takes it will skip it "
                    "(dramatiq-abort) if that happens before the cancel expires"}


def _eta_ms(body: bytes) -> float | None:
    try:
        options = json.loads(body).get("options") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    eta = options.get("eta")
    return float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) else None
