"""What a scheduler adapter is (schedules.md section 2): the Schedule it produces and its methods.

An adapter reads a scheduler's inventory and, where the scheduler allows it, changes it. It never
touches the socket or the sequence store: the schedule channel owns those. Adapters here are
synchronous (the agent is thread based); a custom adapter written for the reference with
``async def`` methods also works, the channel awaits what they return.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ..protocol.schedules import CAP_MUTATION, CAP_STABLE_SNAPSHOT

CAPABILITY_TOKENS = frozenset({"list", "create", "update", "delete", "enable", "disable", "trigger_now",
                               CAP_STABLE_SNAPSHOT, CAP_MUTATION})
#: Offloaded scheduler I/O gives up after this long (celery send, redis); django ORM gets 15 s.
IO_TIMEOUT_SECONDS = 10.0

Sink = Callable[[str, Any], None]
Projector = Callable[[Mapping[str, Any]], dict[str, Any]]


class ConflictError(Exception):
    """The native schedule changed since the brain read it: refresh before editing."""


class NativeScheduleError(Exception):
    """A native write or lookup was refused; the message is safe to show to an operator."""


@dataclass(slots=True)
class Schedule:
    """One schedule as the adapter reads it (z4j-core's Schedule model, schedules.md 2.2)."""

    engine: str
    scheduler: str
    name: str
    task_name: str
    kind: str
    expression: str
    timezone: str = "UTC"
    queue: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    is_enabled: bool = True
    last_run_at: datetime | None = None
    next_run_at: datetime | None = None
    total_runs: int = 0
    external_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    catch_up: str = "skip"
    overlap_policy: str = "allow"
    source: str = "dashboard"
    source_hash: str | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_raw(self) -> dict[str, Any]:
        """The JSON-shaped dict normalization consumes (datetimes stay objects: it formats them)."""
        if self.overlap_policy != "allow":
            raise ValueError(f"schedule {self.name!r}: overlap_policy {self.overlap_policy!r} is not supported "
                             "(only 'allow')")
        return {
            "id": self.id, "engine": self.engine, "scheduler": self.scheduler, "name": self.name,
            "task_name": self.task_name, "kind": self.kind, "expression": self.expression,
            "timezone": self.timezone, "queue": self.queue, "args": list(self.args), "kwargs": dict(self.kwargs),
            "is_enabled": self.is_enabled, "last_run_at": self.last_run_at, "next_run_at": self.next_run_at,
            "total_runs": self.total_runs, "external_id": self.external_id, "catch_up": self.catch_up,
            "source": self.source, "source_hash": self.source_hash,
        }


def schedule_raw(schedule: Any) -> dict[str, Any]:
    """A Schedule, a dict, or any object with the Schedule attributes, as a raw dict."""
    if isinstance(schedule, Schedule):
        return schedule.to_raw()
    if isinstance(schedule, Mapping):
        if schedule.get("overlap_policy", "allow") not in (None, "allow"):
            raise ValueError(f"schedule {schedule.get('name')!r}: only overlap_policy 'allow' is supported")
        return dict(schedule)
    dump = getattr(schedule, "model_dump", None)
    if callable(dump):
        return schedule_raw(dump())
    raise TypeError(f"a scheduler adapter returned {type(schedule).__name__}, not a Schedule")


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def ok(cls, **result: Any) -> CommandResult:
        return cls("success", result, None)

    @classmethod
    def failed(cls, error: str, result: dict[str, Any] | None = None) -> CommandResult:
        return cls("failed", result, error)

    @classmethod
    def indeterminate(cls, operation: str, error: str) -> CommandResult:
        return cls("failed", {"indeterminate": True, "operation": operation},
                   f"INDETERMINATE: {error}; the effect may have landed")

    @property
    def succeeded(self) -> bool:
        return self.status == "success"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "result": self.result, "error": self.error}


def as_command_result(value: Any) -> CommandResult:
    if isinstance(value, CommandResult):
        return value
    if isinstance(value, Mapping) and value.get("status") in ("success", "failed"):
        result = value.get("result")
        return CommandResult(value["status"], dict(result) if isinstance(result, Mapping) else None,
                             None if value.get("error") is None else str(value.get("error")))
    status = getattr(value, "status", None)
    status = getattr(status, "value", status)
    if status in ("success", "failed"):
        result = getattr(value, "result", None)
        return CommandResult(status, dict(result) if isinstance(result, Mapping) else None,
                             None if getattr(value, "error", None) is None else str(value.error))
    raise TypeError(f"a scheduler adapter returned {type(value).__name__}, not a CommandResult")


class SchedulerAdapter:
    """Base class; subclasses set ``name`` and implement what their scheduler supports.

    ``project`` is installed by the agent: it turns a raw schedule into the row the brain sees
    (normalized, args/kwargs redacted). Compare-and-set writes compare ``project(current)``
    with the brain's ``expected`` row, never the raw values.
    """

    name: ClassVar[str] = ""

    def project(self, schedule: Any) -> dict[str, Any]:
        """Replaced by the agent's projector (which also redacts); normalization alone until then."""
        from ..protocol.schedules import normalize_external_schedule

        return normalize_external_schedule(schedule_raw(schedule), self.name)

    def capabilities(self) -> set[str]:
        return {"list"}

    def list_schedules(self) -> list[Schedule]:
        raise NotImplementedError

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        raise NotImplementedError

    def enable_schedule(self, schedule_id: str) -> CommandResult:
        return CommandResult.failed(f"{self.name} cannot enable schedules")

    def disable_schedule(self, schedule_id: str) -> CommandResult:
        return CommandResult.failed(f"{self.name} cannot disable schedules")

    def trigger_now(self, schedule_id: str) -> CommandResult:
        return CommandResult.failed(f"{self.name} cannot trigger schedules")

    def delete_schedule(self, schedule_id: str) -> CommandResult:
        return CommandResult.failed(f"{self.name} cannot delete schedules")

    def create_schedule(self, spec: Mapping[str, Any]) -> Schedule:
        raise NotImplementedError(f"{self.name} cannot create schedules")

    def update_schedule(self, schedule_id: str, spec: Mapping[str, Any]) -> Schedule:
        raise NotImplementedError(f"{self.name} cannot update schedules")

    def connect_signals(self, sink: Sink) -> None:
        """Call ``sink(action, schedule)`` when the inventory may have changed (any thread)."""

    def disconnect_signals(self) -> None:
        """Undo connect_signals; idempotent."""

    def advertised_capabilities(self) -> list[str]:
        return sorted(set(self.capabilities()) & CAPABILITY_TOKENS)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} scheduler={self.name!r}>"


def call_with_timeout(fn: Callable[[], Any], timeout: float, operation: str) -> CommandResult | Any:
    """Run ``fn`` on a helper thread; past ``timeout`` the outcome is unknown (indeterminate)."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"z4j-schedule-{operation}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return CommandResult.indeterminate(operation, f"{operation} did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")
