"""rq-scheduler writes: trigger copies, the managed producer and compare-and-set mutations (3.8).

Every write is one optimistic Redis transaction over the active set, the paused set and the job
hash: a concurrent change (another producer moving the job, another edit) aborts it, so a stale
brain view never overwrites a newer schedule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..logs import get_logger
from ..protocol.schedules import EDITABLE_FIELDS, external_schedule_configuration, normalize_external_schedule
from ..schedules.model import CommandResult, ConflictError, NativeScheduleError, Schedule
from . import rq_inventory as inv

log = get_logger(__name__)

WRITE_ATTEMPTS = 3


def trigger_copy(scheduler: Any, schedule_id: str, with_paused: bool) -> CommandResult:
    from redis.exceptions import WatchError

    for _ in range(WRITE_ATTEMPTS):
        with scheduler.connection.pipeline() as pipe:
            try:
                entry = inv.find(inv.read_entries(scheduler, pipe, with_paused), schedule_id)
                if entry is None:
                    return CommandResult.failed(f"native schedule {schedule_id!r} not found")
                job = entry.job
                queue = scheduler.get_queue_for_job(job)
                copy = queue.create_job(job.func_name, args=list(job.args), kwargs=dict(job.kwargs),
                                        timeout=job.timeout, result_ttl=job.result_ttl, ttl=job.ttl)
                pipe.multi()
                queue.enqueue_job(copy, pipeline=pipe)
                pipe.execute()
            except WatchError:
                continue
        log.info("rqscheduler.triggered", schedule=job.id, task_id=copy.id)
        return CommandResult.ok(task_id=copy.id, schedule_id=job.id)
    return CommandResult.failed("RQ schedule registry kept changing; trigger not sent -- retry")


# -- the managed producer -------------------------------------------------------------------------

def install_producer(scheduler: Any, adapter: Any) -> None:
    """Replace ``scheduler.enqueue_job`` with a transactional one that honours the paused set."""
    if getattr(scheduler, "_z4j_managed", None) is not None:
        raise ValueError("RQ scheduler already has managed native control")
    scheduler._z4j_managed = adapter

    def enqueue_job(job: Any) -> None:
        managed_enqueue(scheduler, job.id)

    scheduler.enqueue_job = enqueue_job


def _next_score(meta: Mapping[str, Any], now: int) -> int | None:
    if meta.get("interval"):
        return now + int(meta["interval"])
    if meta.get("cron_string"):
        from rq_scheduler.utils import get_next_scheduled_time, to_unix

        return int(to_unix(get_next_scheduled_time(meta["cron_string"],
                                                   use_local_timezone=meta.get("use_local_timezone", False))))
    return None


def managed_enqueue(scheduler: Any, job_id: str) -> bool:
    """Move one due job to its queue and re-arm it; False when it is not due, paused or raced."""
    from redis.exceptions import WatchError

    active, paused = inv.keys(scheduler)
    conn = scheduler.connection
    with conn.pipeline() as pipe:
        try:
            pipe.watch(active, paused, scheduler.job_class.key_for(job_id))
            score = pipe.zscore(active, job_id)
            now = int(time.time())
            if score is None or score > now or pipe.zscore(paused, job_id) is not None:
                return False
            job = scheduler.job_class.fetch(job_id, connection=conn)
            meta = job.meta
            repeat = meta.get("repeat")
            if repeat:
                meta["repeat"] = int(repeat) - 1
            queue = scheduler.get_queue_for_job(job)
            pipe.multi()
            queue.enqueue_job(job, pipeline=pipe, at_front=bool(getattr(job, "enqueue_at_front", False)))
            pipe.zrem(active, job_id)
            nxt = None if (repeat is not None and meta.get("repeat") == 0) else _next_score(meta, now)
            if nxt is not None:
                pipe.zadd(active, {job_id: nxt})
            pipe.execute()
            return True
        except WatchError:
            return False  # the next tick reads again


# -- compare-and-set mutations --------------------------------------------------------------------

def mutate(adapter: Any, operation: str, schedule_id: str | None, expected: Any,
           definition: Mapping[str, Any]) -> Schedule | None:
    from redis.exceptions import WatchError

    if not set(definition) <= EDITABLE_FIELDS:
        raise NativeScheduleError(f"fields outside the editable set: {sorted(set(definition) - EDITABLE_FIELDS)}")
    if operation not in ("create", "update", "delete"):
        raise NativeScheduleError(f"unknown operation {operation!r}")
    scheduler = adapter.scheduler
    for _ in range(WRITE_ATTEMPTS):
        with scheduler.connection.pipeline() as pipe:
            try:
                job_id = _apply(adapter, pipe, operation, schedule_id, expected, definition)
            except WatchError:
                continue
        return None if job_id is None else adapter.get_schedule(job_id)
    raise NativeScheduleError("RQ schedule registry kept changing during the write; retry")


def _apply(adapter: Any, pipe: Any, operation: str, schedule_id: str | None, expected: Any,
           definition: Mapping[str, Any]) -> str | None:
    scheduler = adapter.scheduler
    entries = inv.read_entries(scheduler, pipe, adapter.managed)
    current = inv.find(entries, schedule_id) if schedule_id else None
    if operation != "create":
        if current is None:
            raise ConflictError("native schedule changed; refresh before editing (it no longer exists)")
        if expected is not None:
            want = external_schedule_configuration(normalize_external_schedule(expected, "rq-scheduler"))
            if external_schedule_configuration(adapter.project(inv.entry_schedule(current))) != want:
                raise ConflictError("native schedule changed; refresh before editing")
        pipe.watch(scheduler.job_class.key_for(current.job.id))
    active, paused = inv.keys(scheduler)
    if operation == "delete":
        pipe.multi()
        pipe.zrem(active, current.job.id)
        pipe.zrem(paused, current.job.id)
        pipe.execute()
        return None
    row = _candidate(adapter, current, definition)
    _check_unique(entries, current, row["name"])
    job, score = _build_job(adapter, entries, current, row)
    pipe.multi()
    job.save(pipeline=pipe)
    pipe.persist(job.key)
    pipe.zrem(active, job.id)
    pipe.zrem(paused, job.id)
    pipe.zadd(active if row["is_enabled"] else paused, {job.id: score})
    pipe.execute()
    log.info("rqscheduler.written", operation=operation, schedule=job.id, enabled=row["is_enabled"])
    return job.id


def _candidate(adapter: Any, current: inv.Entry | None, definition: Mapping[str, Any]) -> dict[str, Any]:
    if current is not None:
        raw = inv.entry_schedule(current).to_raw()
        shown = adapter.project(inv.entry_schedule(current))
    else:
        raw = {"name": "", "task_name": "", "kind": "interval", "expression": "", "timezone": "UTC", "queue": None,
               "args": [], "kwargs": {}, "is_enabled": True}
        shown = None
    row = {k: raw.get(k) for k in EDITABLE_FIELDS}
    for key, value in definition.items():
        # args/kwargs echoed back exactly as the brain was shown them (redacted) keep the real values
        if key in ("args", "kwargs") and shown is not None and value == shown[key]:
            continue
        row[key] = value
    if not isinstance(row["args"], list) or not isinstance(row["kwargs"], dict):
        raise NativeScheduleError("args must be a list and kwargs an object")
    if str(row.get("timezone") or "UTC") != "UTC":
        raise NativeScheduleError("rq-scheduler schedules run in UTC; timezone must be 'UTC'")
    row["name"] = str(row.get("name") or "").strip()
    row["task_name"] = str(row.get("task_name") or "").strip()
    if not row["name"] or not row["task_name"]:
        raise NativeScheduleError("a schedule needs a name and a task_name")
    row["is_enabled"] = bool(row.get("is_enabled", True))
    return row


def _check_unique(entries: Mapping[str, inv.Entry], current: inv.Entry | None, name: str) -> None:
    for entry in entries.values():
        if (current is None or entry.job.id != current.job.id) and inv.entry_schedule(entry).name == name:
            raise NativeScheduleError(f"another rq-scheduler schedule is already named {name!r}")


def _func(adapter: Any, entries: Mapping[str, inv.Entry], current: inv.Entry | None, task_name: str) -> Any:
    if task_name in adapter.tasks:
        return adapter.tasks[task_name]
    if current is not None and inv.entry_schedule(current).task_name == task_name:
        return current.job.func_name
    for entry in entries.values():
        if inv.entry_schedule(entry).task_name == task_name:
            return entry.job.func_name
    raise NativeScheduleError(f"unknown task {task_name!r}: pass it in RqSchedulerAdapter(tasks={{...}})")


def _timing(row: Mapping[str, Any], current: inv.Entry | None, now: int) -> tuple[dict[str, Any], int]:
    kind, expression = str(row["kind"]), str(row["expression"])
    if current is not None:
        old = inv.entry_schedule(current)
        if (old.kind, old.expression, old.timezone) == (kind, expression, "UTC") and (
                not row["is_enabled"] or current.score > now):
            meta = {"cron_string": expression, "use_local_timezone": False} if kind == "cron" else (
                {"interval": int(expression)} if kind == "interval" else {})
            return meta, int(current.score)
    if kind == "cron":
        from rq_scheduler.utils import get_next_scheduled_time, to_unix

        try:
            when = get_next_scheduled_time(expression, use_local_timezone=False)
        except Exception as exc:  # noqa: BLE001 - croniter's errors vary by version
            raise NativeScheduleError(f"cron expression {expression!r} is not valid: {exc}") from None
        if len(expression.split()) != 5:
            raise NativeScheduleError("a cron expression needs exactly 5 fields")
        return {"cron_string": expression, "use_local_timezone": False}, int(to_unix(when))
    if kind == "interval":
        if not expression.isdigit() or str(int(expression)) != expression or int(expression) <= 0:
            raise NativeScheduleError("an rq-scheduler interval is a positive whole number of seconds")
        return {"interval": int(expression)}, now + int(expression)
    if kind == "clocked":
        try:
            when = datetime.fromisoformat(expression.replace("Z", "+00:00"))
        except ValueError:
            raise NativeScheduleError("a clocked schedule needs an ISO-8601 time with an offset") from None
        if when.tzinfo is None:
            raise NativeScheduleError("a clocked schedule needs an ISO-8601 time with an offset")
        return {}, int(when.astimezone(UTC).timestamp())
    raise NativeScheduleError(f"rq-scheduler cannot run {kind!r} schedules (cron, interval or clocked)")


def _build_job(adapter: Any, entries: Mapping[str, inv.Entry], current: inv.Entry | None,
               row: Mapping[str, Any]) -> tuple[Any, int]:
    from rq.job import JobStatus

    scheduler = adapter.scheduler
    timing, score = _timing(row, current, int(time.time()))
    old_meta = dict(current.job.meta or {}) if current is not None else {}
    meta = {k: v for k, v in old_meta.items() if k not in ("cron_string", "interval", "use_local_timezone")}
    meta.update(timing)
    meta.update({inv.META_NAME: row["name"], inv.META_TASK: row["task_name"], inv.META_QUEUE: row["queue"]})
    func = _func(adapter, entries, current, row["task_name"])
    old = current.job if current is not None else None
    job = scheduler.job_class.create(
        func, args=list(row["args"]), kwargs=dict(row["kwargs"]), connection=scheduler.connection,
        id=old.id if old else uuid.uuid4().hex, timeout=old.timeout if old else None,
        result_ttl=old.result_ttl if old else (-1 if timing else None), ttl=old.ttl if old else None,
        meta=meta, description=old.description if old else None, status=JobStatus.SCHEDULED,
    )
    job.origin = row["queue"] or (old.origin if old else scheduler.queue_name)
    return job, score
