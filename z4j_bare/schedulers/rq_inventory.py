"""rq-scheduler's registry read as one consistent snapshot, and each job as a Schedule (3.7).

The active set is ``scheduler.scheduled_jobs_key`` (job id -> unix score); agent-managed paused
jobs sit in the same key + ``:z4j-paused``. A read WATCHes both sets and every job hash, then
proves nothing changed with an empty MULTI/EXEC; a concurrent change retries (3 times).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..protocol.schedules import canonical_external_json
from ..schedules.model import NativeScheduleError, Schedule

PAUSED_SUFFIX = ":z4j-paused"
META_NAME, META_TASK, META_QUEUE = "_z4j_schedule_name", "_z4j_task_name", "_z4j_queue"
HASH_EXCLUDED_META = frozenset({"repeat", META_NAME, META_TASK})
DEFAULT_TIMEOUT = 180
READ_ATTEMPTS = 3
SOURCE = "rq-scheduler:redis"


@dataclass(slots=True)
class Entry:
    job: Any
    score: float
    enabled: bool


def keys(scheduler: Any) -> tuple[str, str]:
    active = scheduler.scheduled_jobs_key
    return active, active + PAUSED_SUFFIX


def read_entries(scheduler: Any, pipe: Any, with_paused: bool) -> dict[str, Entry]:
    """Inside a pipeline in WATCH mode: both sets, then every job hash (also watched)."""
    active_key, paused_key = keys(scheduler)
    pipe.watch(active_key, paused_key)
    active = {_text(m): s for m, s in pipe.zrange(active_key, 0, -1, withscores=True)}
    paused = {_text(m): s for m, s in pipe.zrange(paused_key, 0, -1, withscores=True)} if with_paused else {}
    both = set(active) & set(paused)
    if both:
        raise NativeScheduleError(f"RQ schedule {min(both)!r} is both active and paused")
    ids = sorted(set(active) | set(paused))
    job_class = scheduler.job_class
    if ids:
        pipe.watch(active_key, paused_key, *[job_class.key_for(i) for i in ids])
    jobs = job_class.fetch_many(ids, connection=scheduler.connection) if ids else []
    out = {}
    for job_id, job in zip(ids, jobs, strict=True):
        if job is None:
            raise NativeScheduleError(f"RQ schedule {job_id!r} has no job hash")
        enabled = job_id in active
        out[job_id] = Entry(job, active[job_id] if enabled else paused[job_id], enabled)
    return out


def snapshot(scheduler: Any, with_paused: bool) -> dict[str, Entry]:
    from redis.exceptions import WatchError

    for _ in range(READ_ATTEMPTS):
        with scheduler.connection.pipeline() as pipe:
            try:
                entries = read_entries(scheduler, pipe, with_paused)
                pipe.multi()
                pipe.ping()
                pipe.execute()
                return entries
            except WatchError:
                continue
    raise NativeScheduleError("RQ schedule registry changed during inventory")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def source_config(job: Any) -> dict[str, Any]:
    meta = dict(job.meta or {})
    config = {k: v for k, v in meta.items() if k not in HASH_EXCLUDED_META}
    config.update(native_queue=job.origin, timeout=job.timeout if job.timeout is not None else DEFAULT_TIMEOUT,
                  result_ttl=job.result_ttl, ttl=job.ttl, enqueue_at_front=getattr(job, "enqueue_at_front", None))
    return config


def entry_schedule(entry: Entry) -> Schedule:
    job, meta = entry.job, dict(entry.job.meta or {})
    when = datetime.fromtimestamp(entry.score, UTC)
    cron, interval = meta.get("cron_string"), meta.get("interval")
    kind = "cron" if cron else ("interval" if interval else "clocked")
    func_name = job.func_name
    return Schedule(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, "rq-scheduler:" + job.id)), engine="rq", scheduler="rq-scheduler",
        name=meta.get(META_NAME) or f"{func_name[:90]} [{job.id[:90]}]", task_name=meta.get(META_TASK) or func_name,
        kind=kind, expression=str(cron or interval or when.isoformat()), timezone="UTC",
        queue=meta.get(META_QUEUE, job.origin), args=list(job.args), kwargs=dict(job.kwargs),
        is_enabled=entry.enabled, next_run_at=when if entry.enabled else None, external_id=job.id, source=SOURCE,
        source_hash=hashlib.sha256(canonical_external_json(source_config(job))).hexdigest(),
    )


def find(entries: Mapping[str, Entry], schedule_id: str) -> Entry | None:
    if schedule_id in entries:
        return entries[schedule_id]
    for entry in entries.values():
        if str(uuid.uuid5(uuid.NAMESPACE_URL, "rq-scheduler:" + entry.job.id)) == schedule_id:
            return entry
    return None
