"""django-celery-beat's ``PeriodicTask`` table as a celery-beat source (schedules.md 3.5).

Available only when ``django_celery_beat.models`` imports (Django installed and configured);
otherwise the source reports unavailable and celery-beat shows the static schedule alone.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from ..logs import get_logger
from ..schedules.model import Schedule

log = get_logger(__name__)

DATABASE_SOURCE = "celery-beat:database"
PERIOD_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
NATIVE_FIELDS = ("args", "kwargs", "headers", "queue", "exchange", "routing_key", "priority", "expires",
                 "expire_seconds", "start_time", "one_off", "interval_id", "crontab_id", "clocked_id", "solar_id")
BEAT_TICK_FIELDS = frozenset({"last_run_at", "total_run_count", "date_changed"})


def _models() -> Any:
    try:
        from django_celery_beat import models
    except Exception:  # noqa: BLE001 - not installed, or Django not configured
        return None
    return models


def _json_field(text: Any, default: Any) -> Any:
    try:
        value = json.loads(text or "")
    except (TypeError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def _interval_seconds(every: Any, period: Any) -> str:
    if period == "microseconds":
        return format((Decimal(every) / 10**6).normalize(), "f")
    return str(int(every) * PERIOD_SECONDS.get(str(period), 1))


def _shape(periodic: Any) -> tuple[str, str, str]:
    if periodic.interval_id and periodic.interval is not None:
        return "interval", _interval_seconds(periodic.interval.every, periodic.interval.period), "UTC"
    if periodic.crontab_id and periodic.crontab is not None:
        c = periodic.crontab
        expr = " ".join(str(v) for v in (c.minute, c.hour, c.day_of_month, c.month_of_year, c.day_of_week))
        return "cron", expr, str(c.timezone) if getattr(c, "timezone", None) else "UTC"
    if periodic.clocked_id and periodic.clocked is not None:
        at = periodic.clocked.clocked_time
        return "clocked", at.isoformat() if at else "", "UTC"
    if periodic.solar_id and periodic.solar is not None:
        return "solar", str(periodic.solar.event), "UTC"
    return "interval", "0", "UTC"


def _source_hash(periodic: Any) -> str:
    native = {key: str(getattr(periodic, key, None)) for key in NATIVE_FIELDS}
    if periodic.interval_id and periodic.interval is not None:
        native["interval_every"] = str(periodic.interval.every)
        native["interval_period"] = str(periodic.interval.period)
    if periodic.solar_id and periodic.solar is not None:
        native["solar_coordinates"] = json.dumps({"latitude": str(periodic.solar.latitude),
                                                  "longitude": str(periodic.solar.longitude)}, sort_keys=True)
    return hashlib.sha256(json.dumps(native, sort_keys=True).encode("utf-8")).hexdigest()


def periodic_row(periodic: Any) -> Schedule:
    kind, expression, tz = _shape(periodic)
    return Schedule(
        engine="celery", scheduler="celery-beat", name=str(periodic.name), task_name=str(periodic.task), kind=kind,
        expression=expression, timezone=tz, queue=periodic.queue or None,
        args=_json_field(periodic.args, []), kwargs=_json_field(periodic.kwargs, {}), is_enabled=bool(periodic.enabled),
        last_run_at=periodic.last_run_at, total_runs=int(periodic.total_run_count or 0),
        external_id=f"dcb:{periodic.pk}", metadata={"source": "database"}, source=DATABASE_SOURCE,
        source_hash=_source_hash(periodic),
    )


class DjangoCeleryBeatSource:
    """Reads django-celery-beat's PeriodicTask rows; toggles ``enabled`` in one locked transaction."""

    writable = True

    def __init__(self) -> None:
        self._receivers: list[tuple[Any, Any]] = []

    @property
    def available(self) -> bool:
        return _models() is not None

    def _queryset(self) -> Any:
        return _models().PeriodicTask.objects.select_related("interval", "crontab", "clocked", "solar")

    def list_schedules(self) -> list[Schedule]:
        if not self.available:
            return []
        return [periodic_row(p) for p in self._queryset().all()]

    def _find(self, schedule_id: str) -> Any:
        if schedule_id.startswith("static:"):
            return None
        qs = self._queryset()
        if schedule_id.startswith("dcb:"):
            pk = schedule_id[4:]
            return qs.filter(pk=int(pk)).first() if pk.isdigit() else None
        hit = qs.filter(name=schedule_id).first()
        if hit is None and schedule_id.isdigit():
            hit = qs.filter(pk=int(schedule_id)).first()
        return hit

    def get_schedule(self, schedule_id: str) -> Schedule | None:
        if not self.available:
            return None
        periodic = self._find(schedule_id)
        return None if periodic is None else periodic_row(periodic)

    def set_enabled(self, schedule_id: str, enabled: bool) -> Any:
        from django.db import transaction

        from ..schedules.model import CommandResult

        found = self._find(schedule_id)
        if found is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        with transaction.atomic():
            periodic = _models().PeriodicTask.objects.select_for_update().get(pk=found.pk)
            periodic.enabled = enabled
            periodic.save(update_fields=["enabled", "last_run_at", "date_changed"])
        return CommandResult.ok(schedule_id=f"dcb:{found.pk}", is_enabled=enabled)

    def delete(self, schedule_id: str) -> Any:
        from ..schedules.model import CommandResult

        found = self._find(schedule_id)
        if found is None:
            return CommandResult.failed(f"schedule {schedule_id!r} not found")
        found.delete()
        return CommandResult.ok(schedule_id=f"dcb:{found.pk}")

    def connect_signals(self, sink: Any) -> None:
        if not self.available:
            return
        from django.db.models.signals import post_delete, post_save

        model = _models().PeriodicTask

        def saved(sender: Any, instance: Any, created: bool = False, update_fields: Any = None, **_: Any) -> None:
            if update_fields and set(update_fields) <= BEAT_TICK_FIELDS:
                return  # beat's own bookkeeping after each run
            sink("created" if created else "updated", None)

        def deleted(sender: Any, instance: Any, **_: Any) -> None:
            sink("deleted", None)

        post_save.connect(saved, sender=model, weak=False, dispatch_uid=f"z4j-dcb-save-{id(self)}")
        post_delete.connect(deleted, sender=model, weak=False, dispatch_uid=f"z4j-dcb-delete-{id(self)}")
        self._receivers = [(post_save, f"z4j-dcb-save-{id(self)}"), (post_delete, f"z4j-dcb-delete-{id(self)}")]

    def disconnect_signals(self) -> None:
        if not self._receivers:
            return
        model = _models().PeriodicTask
        for signal, uid in self._receivers:
            signal.disconnect(sender=model, dispatch_uid=uid)
        self._receivers = []
