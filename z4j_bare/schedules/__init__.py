"""Scheduler adapters on the external schedule protocol v1 (see docs/schedulers.md)."""

from .model import CommandResult, ConflictError, NativeScheduleError, Schedule, SchedulerAdapter

__all__ = ["CommandResult", "ConflictError", "NativeScheduleError", "Schedule", "SchedulerAdapter"]
