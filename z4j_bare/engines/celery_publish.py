"""``task.sent`` for tasks this process publishes, and what ``retry_task`` needs to publish them again.

``before_task_publish`` sees the message (headers, body, routing) and keeps what the event and the
request store need in a thread-local; ``after_task_publish`` (the broker took the message) emits
the event and queues the record. A publish that fails in between leaves no event. A worker's own
publishes (retries, chains) are left to the worker's capture unless ``capture_sent`` says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from ..safety import safe_call

if TYPE_CHECKING:
    from .celery_batch import Batcher
    from .celery_store import RequestStore


# Protocol-2 headers Celery sets itself; every other header is the user's and is kept on retry.
CELERY_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
    "stamped_headers", "stamps", "properties", "reply_to", "correlation_id", "hostname", "delivery_info",
    "args", "kwargs", "is_eager", "callbacks", "errbacks", "chain", "chord", "loglevel", "logfile",
    "task_name", "headers", "subtask_id",
})


def routing_record(name: str, headers: dict, *, exchange: Any, routing_key: Any, priority: Any) -> dict[str, Any]:
    """Where and how the request was published, minus its arguments (retry_task's other half)."""
    return {
        "name": name,
        "exchange": exchange if isinstance(exchange, str) else None,
        "routing_key": routing_key if isinstance(routing_key, str) else None,
        "priority": priority if isinstance(priority, int) else None,
        "root_id": headers.get("root_id"),
        "parent_id": headers.get("parent_id"),
        "shadow": headers.get("shadow"),
        "timelimit": headers.get("timelimit"),
        "ignore_result": headers.get("ignore_result"),
        "headers": {k: v for k, v in headers.items() if k not in CELERY_HEADERS and isinstance(k, str)},
    }


def publish_record(name: str, args: Any, kwargs: Any, headers: dict, *, exchange: Any, routing_key: Any,
                   priority: Any, embed: Any = None) -> dict[str, Any]:
    """What retry_task needs to publish this request again (unredacted; stays on this host)."""
    record = routing_record(name, headers, exchange=exchange, routing_key=routing_key, priority=priority)
    record["args"] = list(args or ())
    record["kwargs"] = dict(kwargs or {})
    if isinstance(embed, dict):
        for key in ("callbacks", "errbacks", "chain", "chord"):
            if embed.get(key):
                record[key] = embed[key]
    return record


class PublishCapture:
    """The two publish signals' receivers for one ``CeleryCapture``."""

    def __init__(self, batcher: Batcher, store: RequestStore | None, enabled: Callable[[], bool]) -> None:
        self.batcher = batcher
        self.store = store
        self._enabled = enabled
        self._publishing = threading.local()

    def on_before_publish(self, sender: Any = None, body: Any = None, exchange: Any = None, routing_key: Any = None,
                           headers: Any = None, properties: Any = None, **_: Any) -> None:
        if not self._enabled():
            return
        safe_call(self._before_publish, sender, body, exchange, routing_key, headers, properties,
                  site="celery.before_task_publish")

    def _before_publish(self, name: Any, body: Any, exchange: Any, routing_key: Any, headers: Any, properties: Any) -> None:
        headers = headers if isinstance(headers, dict) else {}
        task_id = headers.get("id")
        if isinstance(body, (tuple, list)) and len(body) == 3:
            args, kwargs, embed = body
        elif isinstance(body, dict):  # protocol 1
            task_id = task_id or body.get("id")
            args, kwargs, embed = body.get("args"), body.get("kwargs"), None
        else:
            return
        if not task_id:
            return
        name = headers.get("task") or name
        exchange = getattr(exchange, "name", exchange)
        prio = (properties or {}).get("priority") if isinstance(properties, dict) else None
        data: dict[str, Any] = {"task_name": name, "queue": routing_key, "args": args, "kwargs": kwargs}
        for src, dst in (("parent_id", "parent_task_id"), ("root_id", "root_task_id"), ("eta", "eta"),
                         ("expires", "expires"), ("retries", "retries")):
            value = headers.get(src)
            if value:
                data[dst] = value
        if exchange:
            data["exchange"] = exchange
        if prio is not None:
            data["broker_priority"] = prio
        record = publish_record(name, args, kwargs, headers, exchange=exchange, routing_key=routing_key,
                                priority=prio, embed=embed)
        self._publishing.pending = (task_id, data, record, time.time())

    def on_after_publish(self, sender: Any = None, **_: Any) -> None:
        pending = getattr(self._publishing, "pending", None)
        if pending is None:
            return
        self._publishing.pending = None
        task_id, data, record, at = pending
        safe_call(self.batcher.event, EventKind.TASK_SENT, task_id, data, at, site="celery.after_task_publish")
        if self.store is not None:  # the store queues and commits in bursts on its own thread
            safe_call(self.store.put, task_id, record, site="celery.after_task_publish")
