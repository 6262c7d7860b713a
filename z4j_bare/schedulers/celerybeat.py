"""celery-beat: the static ``beat_schedule`` (read-only) and, when configured, django-celery-beat.

Static entries live in application code, so the brain shows them read-only (their ``source`` is
exactly ``celery-beat:static``) and the operator can only trigger them: ``trigger_now`` sends the
entry's task once with its args, kwargs and queue; beat's own cadence is untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from ..logs import get_logger
from ..protocol.schedules import CAP_MUTATION, CAP_STABLE_SNAPSHOT
from ..schedules.model import (
    IO_TIMEOUT_SECONDS,
    CommandResult,
    Schedule,
    SchedulerAdapter,
    as_command_result,
    call_with_timeout,
)

log = get_logger(__name__)

STATIC_SOURCE = "celery-beat:static"
READ_ONLY = "static beat_schedule entries are read-only"


def static_external_id(name: str) -> str:
    return "static:" + hashlib.sha256(name.encode("utf-8")).hexdigest()


def _seconds_text(seconds: float) -> str:
    return format(Decimal(str(seconds)).normalize(), "f")


def _crontab_timezone(value: Any, app: Any) -> str:
    tz = value.__dict__.get("tz")  # already resolved by beat: never touch the user's object
    if tz is None:
        owner = getattr(value, "_app", None) or app
        tz = getattr(owner, "timezone", None) if owner is not None else None
    return str(tz) if tz else "UTC"


def schedule_shape(value: Any, app: Any = None) -> tuple[str, str, str]:
    """(kind, expression, timezone) of a beat entry's ``schedule`` (schedules.md 3.3)."""
    if value is None:
        return "interval", "0", "UTC"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "interval", str(value), "UTC"
    if isinstance(value, timedelta):
        return "interval", _seconds_text(value.total_seconds()), "UTC"
    if hasattr(value, "_orig_minute"):
        fields = [getattr(value, f"_orig_{part}", None)
                  for part in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")]
        return "cron", " ".join("*" if f is None else str(f) for f in fields), _crontab_timezone(value, app)
    if hasattr(value, "event") and hasattr(value, "lat"):
        return "solar", str(value.event), "UTC"
    return "cron", str(value), "UTC"  # e.g. celery.schedules.schedule(45): the reference's rendering


def static_entry(name: str, entry: Mapping[str, Any], app: Any = None) -> Schedule:
    kind, expression, tz = schedule_shape(entry.get("schedule"), app)
    options = entry.get("options")
    queue = options.get("queue") if isinstance(options, Mapping) else None
    return Schedule(
        engine="celery", scheduler="celery-beat", name=str(name), task_name=str(entry.get("task", "")), kind=kind,
        expression=expression, timezone=tz, queue=str(queue) if queue else None,
        args=list(entry.get("args") or []), kwargs=dict(entry.get("kwargs") or {}),
        external_id=static_external_id(str(name)), metadata={"source": "static"}, source=STATIC_SOURCE,
    )


class StaticBeatScheduleSource:
    """``app.conf.beat_schedule``, read afresh on every call; never writable."""

    writable = False

    def __init__(self, celery_app: Any = None) -> None:
        self.celery_app = celery_app

    @property
    def available(self) -> bool:
        return self.celery_app is not None

    def list_schedules(self) -> list[Schedule]:
        if self.celery_app is None:
            return []
        entries = self.celery_app.conf.beat_schedule or {}
        return [static_entry(name, entry, self.celery_app) for name, entry in dict(entries).items()]

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        if schedule_id.startswith("dcb:"):
            return None
        for row in self.list_schedules():
            if schedule_id == row.external_id or (not schedule_id.startswith("static:") and schedule_id == row.name):
                return row
        return None

    def set_enabled(self, schedule_id: str, enabled: bool) -> CommandResult:
        return CommandResult.failed(READ_ONLY)

    def delete(self, schedule_id: str) -> CommandResult:
        return CommandResult.failed(READ_ONLY)


def _default_sources(celery_app: Any) -> list[Any]:
    from .celerybeat_django import DjangoCeleryBeatSource

    return [DjangoCeleryBeatSource(), StaticBeatScheduleSource(celery_app=celery_app)]


class CeleryBeatSchedulerAdapter(SchedulerAdapter):
    """``CeleryBeatSchedulerAdapter(celery_app=app)``: beat's schedule in the brain's Schedules page."""

    name = "celery-beat"
    poll_seconds = 30.0  # the static schedule has no change signal: re-read it (cheap) this often

    def __init__(self, *, celery_app: Any = None, sources: Sequence[Any] | None = None) -> None:
        self.celery_app = celery_app
        self.sources = list(sources) if sources is not None else _default_sources(celery_app)
        self._sink: Any = None

    def _available(self) -> list[Any]:
        return [s for s in self.sources if getattr(s, "available", True)]

    def capabilities(self) -> set[str]:
        from .celerybeat_django import DjangoCeleryBeatSource

        caps = {"list"}
        if self.celery_app is not None:
            caps.add("trigger_now")
        available = self._available()
        if any(getattr(s, "writable", False) for s in available):
            caps.update(("enable", "disable", "delete"))
        if any(hasattr(s, "apply_external_mutation") for s in available):
            caps.update((CAP_MUTATION, "create", "update"))
        if all(type(s) in (StaticBeatScheduleSource, DjangoCeleryBeatSource) for s in self.sources):
            caps.add(CAP_STABLE_SNAPSHOT)
        return caps

    def list_schedules(self) -> list[Schedule]:
        seen: set[tuple[str, str]] = set()
        rows = []
        for source in self._available():
            for row in source.list_schedules():
                key = (row.scheduler, row.name)
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        return rows

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        for source in self._available():
            row = source.get_schedule(schedule_id)
            if row is not None:
                return row
        return None

    def trigger_now(self, schedule_id: str) -> CommandResult:
        try:
            row = self.get_schedule(schedule_id)
        except Exception as exc:  # noqa: BLE001
            return CommandResult.failed(f"could not read schedule {schedule_id!r} ({type(exc).__name__}); refusing to "
                                        "fire a possibly mis-identified schedule -- retry.")
        if row is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        if self.celery_app is None:
            return CommandResult.failed("celery-beat adapter has no celery_app to send the task with")
        options = {"queue": row.queue} if row.queue else {}

        def send() -> Any:
            return self.celery_app.send_task(row.task_name, args=list(row.args), kwargs=dict(row.kwargs), **options)

        sent = call_with_timeout(send, IO_TIMEOUT_SECONDS, "trigger_now")
        if isinstance(sent, CommandResult):
            return sent
        log.info("celerybeat.triggered", schedule=row.name, task_name=row.task_name, task_id=getattr(sent, "id", None))
        return CommandResult.ok(schedule_id=schedule_id, task_name=row.task_name, task_id=getattr(sent, "id", None))

    def _is_static(self, schedule_id: str) -> bool:
        # Asked first: a writable source (django-celery-beat) would otherwise answer "not found".
        row = self.get_schedule(schedule_id)
        return row is not None and row.source == STATIC_SOURCE

    def _toggle(self, schedule_id: str, enabled: bool) -> CommandResult:
        if self._is_static(schedule_id):
            return CommandResult.failed(READ_ONLY)
        first_failure = None
        for source in self._available():
            if not getattr(source, "writable", False) or not hasattr(source, "set_enabled"):
                continue
            result = as_command_result(source.set_enabled(schedule_id, enabled))
            if result.succeeded or (result.result or {}).get("indeterminate"):
                return result
            first_failure = first_failure or result
        if first_failure is not None:
            return first_failure
        return CommandResult.failed(f"could not toggle schedule {schedule_id!r}: no writable source holds it")

    def enable_schedule(self, schedule_id: str) -> CommandResult:
        return self._toggle(schedule_id, True)

    def disable_schedule(self, schedule_id: str) -> CommandResult:
        return self._toggle(schedule_id, False)

    def delete_schedule(self, schedule_id: str) -> CommandResult:
        if self._is_static(schedule_id):
            return CommandResult.failed(READ_ONLY)
        for source in self._available():
            if getattr(source, "writable", False):
                result = as_command_result(source.delete(schedule_id))
                if result.succeeded or (result.result or {}).get("indeterminate"):
                    return result
        return CommandResult.failed(READ_ONLY if self.get_schedule(schedule_id) else f"schedule {schedule_id!r} not found")

    def _writable_mutator(self) -> Any:
        for source in self._available():
            if hasattr(source, "apply_external_mutation"):
                return source
        raise NotImplementedError("celery-beat has no writable schedule source (static beat_schedule is read-only)")

    def create_schedule(self, spec: Mapping[str, Any]) -> Schedule:
        return self._writable_mutator().create(spec)

    def update_schedule(self, schedule_id: str, spec: Mapping[str, Any]) -> Schedule:
        return self._writable_mutator().update(schedule_id, spec)

    def apply_external_mutation(self, *, operation: str, schedule_id: str | None, expected: Any,
                                definition: Mapping[str, Any]) -> Schedule | None:
        source = self._writable_mutator()
        return source.apply_external_mutation(operation=operation, schedule_id=schedule_id, expected=expected,
                                              definition=definition, project=self.project)

    def connect_signals(self, sink: Any) -> None:
        self._sink = sink
        for source in self._available():
            if hasattr(source, "connect_signals"):
                source.connect_signals(sink)

    def disconnect_signals(self) -> None:
        for source in self.sources:
            if hasattr(source, "disconnect_signals"):
                source.disconnect_signals()
        self._sink = None
