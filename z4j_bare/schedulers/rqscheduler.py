"""rq-scheduler: the jobs of one ``rq_scheduler.Scheduler`` registry in the brain's Schedules page.

Plain mode reads, triggers and deletes. rq-scheduler has no way to pause a job, so plain mode
does not offer enable/disable, and it negotiates the native-write protocol so the brain routes
an operator's enable/disable to a refusal it can show ("not supported") instead of sending a
control that would lock the stream (schedules.md 9 items 2 and 4; the reference deletes the job).
``managed=True`` adds create/update/enable/disable: disabled jobs move to a paused set that the
managed producer (installed on this Scheduler object) and plain producers both leave alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..logs import get_logger
from ..protocol.schedules import CAP_MUTATION, CAP_STABLE_SNAPSHOT
from ..schedules.model import (
    IO_TIMEOUT_SECONDS,
    CommandResult,
    ConflictError,
    NativeScheduleError,
    Schedule,
    SchedulerAdapter,
    call_with_timeout,
)
from . import rq_inventory as inv

log = get_logger(__name__)

PLAIN_CAPS = {"delete", "list", "trigger_now", CAP_STABLE_SNAPSHOT, CAP_MUTATION}
MANAGED_CAPS = PLAIN_CAPS | {"create", "update", "enable", "disable"}
NOT_PAUSABLE = ("rq-scheduler cannot pause a job; install the adapter with RqSchedulerAdapter(scheduler=..., "
                "managed=True) in the process that runs the scheduler to enable/disable schedules")


def _is_native(scheduler: Any) -> bool:
    try:
        from rq_scheduler import Scheduler
    except ImportError:
        return False
    return type(scheduler) is Scheduler


class RqSchedulerAdapter(SchedulerAdapter):
    """``RqSchedulerAdapter(scheduler=Scheduler(queue_name=..., connection=redis), managed=False)``."""

    name = "rq-scheduler"

    def __init__(self, *, scheduler: Any, project_id: str | None = None, managed: bool = False,
                 tasks: Mapping[str, Callable[..., Any] | str] | None = None) -> None:
        if scheduler is None:
            raise ValueError("RqSchedulerAdapter(scheduler=...) needs an rq_scheduler.Scheduler")
        self.scheduler = scheduler
        self.project_id = project_id
        self.managed = bool(managed)
        self.tasks = dict(tasks or {})
        self.native = _is_native(scheduler)
        if self.managed:
            if not self.native:
                raise ValueError("managed native control requires rq_scheduler.Scheduler")
            from .rq_managed import install_producer

            install_producer(scheduler, self)

    def capabilities(self) -> set[str]:
        if not self.native:
            # Not an exact Scheduler: no stable snapshot, so the brain never activates it.
            return {"delete", "list", "trigger_now"}
        return set(MANAGED_CAPS if self.managed else PLAIN_CAPS)

    # -- reading ------------------------------------------------------------------------------

    def _entries(self) -> dict[str, inv.Entry]:
        result = call_with_timeout(lambda: inv.snapshot(self.scheduler, self.managed), IO_TIMEOUT_SECONDS, "list")
        if isinstance(result, CommandResult):
            raise TimeoutError(f"reading the rq-scheduler registry took over {IO_TIMEOUT_SECONDS:.0f} s")
        return result

    def list_schedules(self) -> list[Schedule]:
        return [inv.entry_schedule(e) for e in self._entries().values()]

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        entry = inv.find(self._entries(), schedule_id)
        return None if entry is None else inv.entry_schedule(entry)

    # -- actions ------------------------------------------------------------------------------

    def trigger_now(self, schedule_id: str) -> CommandResult:
        """Enqueue a new job with the scheduled job's function and arguments; the schedule is untouched."""
        def run() -> CommandResult:
            from .rq_managed import trigger_copy

            return trigger_copy(self.scheduler, schedule_id, self.managed)

        try:
            return call_with_timeout(run, IO_TIMEOUT_SECONDS, "trigger_now")
        except NativeScheduleError as exc:
            return CommandResult.failed(str(exc))

    def delete_schedule(self, schedule_id: str) -> CommandResult:
        entry = inv.find(self._entries(), schedule_id)
        if entry is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        active, paused = inv.keys(self.scheduler)
        with self.scheduler.connection.pipeline() as pipe:
            pipe.zrem(active, entry.job.id)
            pipe.zrem(paused, entry.job.id)
            pipe.execute()
        return CommandResult.ok(schedule_id=entry.job.id, deleted=True)

    def enable_schedule(self, schedule_id: str) -> CommandResult:
        return self._set_enabled(schedule_id, True)

    def disable_schedule(self, schedule_id: str) -> CommandResult:
        return self._set_enabled(schedule_id, False)

    def _set_enabled(self, schedule_id: str, enabled: bool) -> CommandResult:
        if not self.managed:
            return CommandResult.failed(NOT_PAUSABLE)
        from .rq_managed import mutate

        row = self.get_schedule(schedule_id)
        if row is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        try:
            mutate(self, "update", row.external_id, None, {"is_enabled": enabled})
        except (ConflictError, NativeScheduleError) as exc:
            return CommandResult.failed(str(exc))
        return CommandResult.ok(schedule_id=row.external_id, is_enabled=enabled)

    def create_schedule(self, spec: Mapping[str, Any]) -> Schedule:
        return self.apply_external_mutation(operation="create", schedule_id=None, expected=None, definition=spec)

    def update_schedule(self, schedule_id: str, spec: Mapping[str, Any]) -> Schedule:
        row = self.get_schedule(schedule_id)
        if row is None:
            raise NativeScheduleError(f"schedule {schedule_id!r} not found")
        return self.apply_external_mutation(operation="update", schedule_id=row.external_id,
                                            expected=self.project(row), definition=spec)

    def apply_external_mutation(self, *, operation: str, schedule_id: str | None, expected: Any,
                                definition: Mapping[str, Any]) -> Schedule | None:
        from .rq_managed import mutate

        if operation != "delete" and not self.managed:
            raise NotImplementedError(f"rq-scheduler without managed=True cannot {operation} schedules")
        return mutate(self, operation, schedule_id, expected, definition)

