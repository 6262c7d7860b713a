"""What an engine adapter is: the one file a new queue engine needs.

An adapter has two jobs and never touches the socket:

1. **Capture.** ``attach(sink)`` hooks the engine (signals, patched methods, worker classes) and
   turns each lifecycle moment into ``sink.emit(kind, task_id, data)``. The sink redacts ``data``,
   stamps ``id``/``occurred_at`` and makes the event durable in the buffer before returning, from
   any thread or forked process. ``detach()`` undoes the hooks.
2. **Commands.** For every action it supports, a method of the same name taking a
   ``CommandRequest`` and returning the result dict (sent as ``command_result.result`` with
   ``status="success"``), or raising ``CommandFailed`` (``status="failed"`` with its message and
   optional partial result). ``capabilities()`` lists exactly the actions that work; the runtime
   advertises them in hello and refuses the rest before calling the adapter. Any other exception
   becomes ``failed`` with ``internal error: <type>``: an adapter bug never crashes the agent.

Commands run on a bounded worker pool, never on the I/O thread, with a per-command deadline.
``purge_queue`` is special: the runtime checks the operator's confirm token against
``queue_depth(queue)`` before it calls ``purge_queue``; the adapter only empties the queue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..events import event_text_with
from ..flatdata import FlatDataEncoder
from ..protocol.canonical import canonical_tree_text
from ..logs import get_logger

if TYPE_CHECKING:
    from ..buffer import BufferStore
    from ..redaction import Redactor

log = get_logger(__name__)

# Capability tokens the brain knows (protocol.md section 10.1).
ACTIONS = (
    "submit_task",
    "retry_task",
    "cancel_task",
    "bulk_retry",
    "purge_queue",
    "requeue_dead_letter",
    "list_dead_letters",
    "restart_worker",
    "rate_limit",
    "pool_grow",
    "pool_shrink",
    "add_consumer",
    "cancel_consumer",
)
RETRY_BY_REFERENCE = "retry_by_reference_v1"


class CommandFailed(Exception):
    """The action ran (or was refused) and did not do what was asked; say why, truthfully."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


class Redacted(dict):  # type: ignore[type-arg]
    """A command result its producer already redacted with the agent's redactor: the command
    channel sends it as it is. A second pass is not a no-op on large values (the redactor's work
    cap can cut an already-redacted list at another place), and some results must match, byte
    for byte, what the agent sent elsewhere (a schedule mutation receipt and its snapshot)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CommandRequest:
    command_id: str
    action: str
    engine: str
    parameters: Mapping[str, Any]
    target: Mapping[str, Any] = field(default_factory=dict)

    def param(self, name: str, default: Any = None) -> Any:
        value = self.parameters.get(name)
        return default if value is None else value

    def require(self, name: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.parameters.get(name)
        if value is None or value == "" or not isinstance(value, kind):
            raise CommandFailed(f"{self.action}: parameter {name!r} is required")
        return value


class EventSink:
    """Redact, stamp and durably buffer one engine's events. Never raises into the host."""

    def __init__(self, engine: str, buffer: BufferStore, redactor: Redactor, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.engine = engine
        self._buffer = buffer
        self._redactor = redactor
        self._flat = FlatDataEncoder(redactor)
        self._on_error = on_error
        self._lock = threading.Lock()
        self.emitted = 0
        self.lost = 0

    @property
    def buffer(self) -> BufferStore:
        """The durable buffer (adapters may keep side tables next to its file)."""
        return self._buffer

    @property
    def redactor(self) -> Redactor:
        """The configured redactor, for adapter text that leaves in command results."""
        return self._redactor

    def encode(self, kind: str, task_id: str | None, data: dict[str, Any], occurred_at: float | None = None) -> str:
        text = self._flat.text(data)  # flat data (most started/succeeded events): remembered pieces
        if text is None:
            text = canonical_tree_text(self._redactor.scrub_data(data))
        return event_text_with(kind, self.engine, task_id, text, occurred_at)

    def emit(self, kind: str, task_id: str | None, data: dict[str, Any], occurred_at: float | None = None) -> bool:
        """Make one event durable; False (and counted in the buffer's loss ledger) if it could not be."""
        try:
            text = self.encode(kind, task_id, data, occurred_at)
        except Exception as exc:  # noqa: BLE001 - hot path in the host's thread
            self._lost_before_the_buffer(1, exc)
            return False
        ok = self._buffer.append("event", text, engine=self.engine)  # never raises; counts its own losses
        self._count(1 if ok else 0, 0 if ok else 1)
        return ok

    def emit_many(self, events: list[tuple[str, str | None, dict[str, Any], float | None]]) -> bool:
        """Several events in one transaction (one commit), e.g. started+succeeded of an eager call."""
        try:
            rows = [("event", self.encode(*e), self.engine) for e in events]
        except Exception as exc:  # noqa: BLE001
            self._lost_before_the_buffer(len(events), exc)
            return False
        written = self._buffer.append_many(rows)  # never raises; counts the rows it did not store
        self._count(written, len(rows) - written)
        return written == len(rows)

    def _lost_before_the_buffer(self, n: int, exc: BaseException) -> None:
        """Events that never reached the buffer (they could not be built): the buffer's ledger is
        the one place losses are counted, so they are counted there."""
        self._count(0, n)
        try:
            self._buffer.count_loss("event_records", n, engine=self.engine)
        except Exception:  # noqa: BLE001, S110 - counting must not fail the host's hook
            pass
        if self._on_error is not None:
            self._on_error(exc)

    def _count(self, emitted: int, lost: int) -> None:
        """This sink's own tally (``emitted``/``lost``, for the adapter's diagnostics); what is
        reported to the brain is the buffer's ledger, which counts every process's losses once."""
        with self._lock:
            self.emitted += emitted
            self.lost += lost


class EngineAdapter:
    """Base class; subclasses set ``name`` and implement what they support."""

    name: ClassVar[str] = ""
    #: True only when retry_task re-publishes the original request from the engine's own
    #: storage (never from brain-forwarded, redacted args): the brain then sends retries.
    safe_retry_by_reference: ClassVar[bool] = False

    def capabilities(self) -> frozenset[str]:
        return frozenset()

    def attach(self, sink: EventSink) -> None:
        """Install hooks; called once by the runtime in the process that runs install_agent."""

    def detach(self) -> None:
        """Remove hooks; idempotent."""

    def flush(self) -> None:
        """Write anything the adapter holds in memory to the sink (called before the final drain)."""

    def health(self) -> dict[str, Any]:
        """Heartbeat adapter_health entries (values may be dicts/lists: JSON-encoded on the wire)."""
        return {}

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in ``queue``; None when unknown (purge then needs ``force``)."""
        return None

    def advertised_capabilities(self) -> list[str]:
        caps = set(self.capabilities()) & set(ACTIONS)
        if self.safe_retry_by_reference and "retry_task" in caps:
            caps.add(RETRY_BY_REFERENCE)
        return sorted(caps)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} engine={self.name!r}>"
