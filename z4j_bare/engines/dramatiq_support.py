"""What the Dramatiq command modules need from the adapter, and the lookups they share.

``DramatiqAdapterView`` is the part of ``DramatiqEngineAdapter`` the middleware, the commands,
cancel and dead letters use (a Protocol, so none of them imports the adapter's module and the
adapter imports them). The helpers below read the message store and the broker the same way for
every command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..events import occurred_at_text
from .dramatiq_broker import BrokerError, parse_body

if TYPE_CHECKING:
    from .base import EventSink
    from .dramatiq_broker import BrokerOps
    from .dramatiq_store import MessageStore

#: Workers commit what they remember ~20 ms after the event that reported it: a command right
#: after that event looks this long before it calls a message unknown.
STORE_WAIT_SECONDS = 0.3


class DramatiqAdapterView(Protocol):
    name: str
    broker: Any
    store: MessageStore | None
    sink: EventSink | None
    family_sink: EventSink | None
    capture_args: bool
    capture_results: bool | None
    remember_messages: bool
    cancel_wait_seconds: float
    cancel_ttl_seconds: float

    @property
    def ops(self) -> BrokerOps: ...

    def queues(self) -> list[str]: ...

    def emit(self, kind: str, task_id: str, data: dict[str, Any], occurred_at: float | None = None) -> None: ...

    def open_store(self, sink: EventSink) -> MessageStore | None: ...


def iso(ts: float | None) -> str | None:
    return occurred_at_text(ts) if ts is not None else None


def record(a: DramatiqAdapterView, message_id: str, wait: float = STORE_WAIT_SECONDS) -> dict[str, Any] | None:
    return a.store.get(message_id, wait=wait) if a.store is not None else None


def scrub(a: DramatiqAdapterView, text: str | None) -> str | None:
    """Text that leaves in a command result, through the agent's redactor."""
    if text is None:
        return None
    sink = a.sink or a.family_sink
    if sink is None:
        from ..redaction import default_redactor

        return default_redactor().scrub_text(text)
    return sink.redactor.scrub_text(text)


def abortable(broker: Any) -> Any | None:
    """dramatiq-abort's Abortable on this broker, when its backend can be observed (Redis)."""
    try:
        from dramatiq_abort import Abortable
        from dramatiq_abort.backends import RedisBackend
    except Exception:  # noqa: BLE001 - dramatiq-abort is optional
        return None
    for middleware in broker.middleware:
        if isinstance(middleware, Abortable) and isinstance(middleware.backend, RedisBackend):
            return middleware
    return None


def original(a: DramatiqAdapterView, message_id: str,
             wait: float = STORE_WAIT_SECONDS) -> tuple[Any | None, str, dict[str, Any] | None]:
    """(Message, source, store record) of a message this agent can publish again.

    On Redis the dead letter (the message exactly as it was sent) comes first; the agent's copy
    (taken by the worker that failed it) covers a dead letter that expired or a failure that was
    acked. Elsewhere the agent's copy is the only one.
    """
    from dramatiq import Message

    found = record(a, message_id, wait)
    if a.ops.kind == "redis":
        queues = [found["queue"]] if found is not None else a.queues()
        for queue in queues:
            try:
                dead = a.ops.find_dead(queue, message_id, found.get("redis_id") if found else None)
            except BrokerError:
                continue
            fields = parse_body(dead[1]) if dead is not None else None
            if fields is not None:
                fields["args"] = tuple(fields.get("args") or ())
                return Message(**fields), "dead_letter_queue", found
    if found is not None and found.get("body"):
        return Message.decode(found["body"]), "agent_store", found
    return None, "", found
