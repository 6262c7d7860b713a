"""RQ lifecycle capture: patched worker and queue methods turned into events.

Worker side (the process that runs ``work()``; never the work-horse): ``execute_job`` of
``rq.worker.Worker`` and ``rq.worker.SimpleWorker`` is wrapped. Every shipped worker class
(SpawnWorker, HerokuWorker, RoundRobinWorker, ...) inherits one of the two, so each job is seen
exactly once, whichever class runs it. Before the call: ``task.received`` (dated at the job's
``enqueued_at``, so the brain folds it into the producer's own ``received``) and ``task.started``
in one buffer transaction. After it: the final status. A SimpleWorker keeps it in memory; for a
fork/spawn worker the horse wrote it to Redis, read back in one pipelined round trip. A horse that
died hard (SIGKILL, OOM) was already marked failed by RQ in the parent, so it is reported too.

Producer side: ``Queue.enqueue_job`` (``enqueue``/``enqueue_call``), ``Queue.enqueue_many`` and
``Queue.schedule_job`` (``enqueue_at``/``enqueue_in``) emit ``task.received`` with the arguments
the producer holds in memory. RQ's own requeues of the running job (retries) are not reported as
new jobs: the worker reports them as ``task.retried``.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from ..logs import get_logger
from ..safety import safe_call
from . import rq_jobinfo as info

if TYPE_CHECKING:
    from .base import EventSink

log = get_logger(__name__)

_lock = threading.Lock()
_patched: list[tuple[type, str, Any]] = []
_capture: Capture | None = None
# The job the current worker process is executing; a forked horse inherits it. RQ re-enqueues
# the running job on retry through the same Queue methods producers use.
_executing_job_id: str | None = None
_local = threading.local()

_RESULT_FIELDS = (b"status", b"ended_at", b"started_at", b"retries_left", b"number_of_retries")


class Capture:
    """Builds events from RQ objects and writes them through the sink."""

    def __init__(self, sink: EventSink, *, capture_args: bool = True, capture_results: bool = False) -> None:
        self.sink = sink
        self.capture_args = capture_args
        self.capture_results = capture_results

    # -- shared field extraction -----------------------------------------------------------------
    def call_fields(self, job: Any, in_memory: bool) -> dict[str, Any]:
        """task_name, description and (when readable without running job code) args/kwargs."""
        name = args = kwargs = None
        if in_memory:  # the producer built this job: the call is in memory, nothing to decode
            name = _evaluated(job, "_func_name")
            args = _evaluated(job, "_args")
            kwargs = _evaluated(job, "_kwargs")
        data = _evaluated(job, "_data")
        if name is None and isinstance(data, bytes):
            if self.capture_args:
                name, args, kwargs = info.decode_call(data)
            else:
                name = info.func_name_from_data(data)
        stored = getattr(job, "description", None)
        name = name or info.name_from_description(stored) or "unknown"
        fields: dict[str, Any] = {"task_name": name,
                                  "description": info.call_description(name, args, kwargs, stored)}
        if self.capture_args:
            fields["args"] = list(args) if isinstance(args, (list, tuple)) else None
            fields["kwargs"] = dict(kwargs) if isinstance(kwargs, dict) else None
        return fields

    # -- producer side ---------------------------------------------------------------------------
    def enqueued(self, jobs: list[Any], scheduled_at: Any = None) -> None:
        rows = []
        for job in jobs:
            if job is None or getattr(job, "id", None) == _executing_job_id:
                continue
            data = self.call_fields(job, in_memory=True)
            data["queue"] = getattr(job, "origin", None) or None
            status = _status_text(getattr(job, "_status", None))
            if status and status != "queued":
                data["status"] = status
            occurred = info.to_epoch(getattr(job, "enqueued_at", None))
            if scheduled_at is not None:
                data["status"] = "scheduled"
                data["eta"] = _iso(info.to_epoch(scheduled_at))
                occurred = None
            rows.append((EventKind.TASK_RECEIVED.value, job.id, data, occurred))
        if rows:
            self.sink.emit_many(rows)

    # -- worker side -----------------------------------------------------------------------------
    def before(self, worker: Any, job: Any, queue: Any) -> dict[str, Any]:
        call = self.call_fields(job, in_memory=False)
        base = {"task_name": call["task_name"], "queue": job.origin or getattr(queue, "name", None),
                "description": call["description"], "worker": worker.name}
        received = dict(base)
        if self.capture_args:
            received["args"], received["kwargs"] = call["args"], call["kwargs"]
        now = time.time()
        self.sink.emit_many([
            (EventKind.TASK_RECEIVED.value, job.id, received, info.to_epoch(job.enqueued_at) or now),
            (EventKind.TASK_STARTED.value, job.id, base, now),
        ])
        ctx = {"base": base, "started": now}
        if getattr(job, "retries_left", None) is not None:
            # RQ's Retry policy only decrements retries_left and keeps no attempt count: keep
            # our own, for jobs that have a policy only (one INCR per attempt).
            ctx["attempt"] = safe_call(_count_attempt, worker.connection, job.id, site="rq.count_attempt")
        return ctx

    def after(self, worker: Any, job: Any, ctx: dict[str, Any], in_process: bool) -> None:
        outcome = _memory_outcome(job) if in_process else None
        if outcome is None:
            outcome = read_outcome(worker.connection, job.id, job.key, with_result=self.capture_results)
        event = terminal_event(outcome, ctx["base"], ctx["started"])
        if event is not None:
            kind, data, occurred = event
            if kind == EventKind.TASK_RETRIED.value and data.get("retry_count") is None:
                data["retry_count"] = ctx.get("attempt")
            self.sink.emit(kind, job.id, data, occurred)


ATTEMPTS_TTL_SECONDS = 7 * 86400


def _count_attempt(connection: Any, job_id: str) -> int:
    key = f"z4j:rq:attempts:{job_id}"
    with connection.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, ATTEMPTS_TTL_SECONDS)
        return int(pipe.execute()[0])


def _memory_outcome(job: Any) -> dict[str, Any] | None:
    """A SimpleWorker ran the job in this process: its final state is on the object."""
    status = _status_text(getattr(job, "_status", None))
    if status not in ("finished", "failed", "queued", "scheduled"):
        return None  # stopped/canceled/odd states: ask Redis for the authoritative record
    return {
        "status": status, "exists": True, "ended_at": info.to_epoch(job.ended_at),
        "started_at": info.to_epoch(job.started_at), "retries_left": job.retries_left,
        "number_of_retries": job.number_of_retries, "exc": getattr(job, "_exc_info", None) or None,
        "result": getattr(job, "_result", None), "result_at": None, "result_type": None,
    }


def read_outcome(connection: Any, job_id: str, job_key: str, *, with_result: bool = True) -> dict[str, Any]:
    """The job's status fields, then (only when needed) its latest Result stream entry.

    A successful job needs one HMGET (~1 round trip); the stream is read for failures, stops
    and retries (exception text, exact time) and, with ``with_result``, for the return value.
    """
    fields = connection.hmget(job_key, _RESULT_FIELDS)
    status, ended, started, retries_left, retries = fields
    out: dict[str, Any] = {
        "status": info.text(status), "exists": status is not None, "ended_at": info.to_epoch(ended),
        "started_at": info.to_epoch(started), "retries_left": _int(retries_left),
        "number_of_retries": _int(retries), "exc": None, "result": None, "result_at": None, "result_type": None,
    }
    if status is None or (out["status"] == "finished" and not with_result):
        return out
    from rq.results import Result

    latest = connection.xrevrange(Result.get_key(job_id), "+", "-", count=1)
    if latest:
        entry_id, payload = latest[0]
        out["result_at"] = info.stream_id_epoch(entry_id)
        out["result_type"] = _int(payload.get(b"type"))
        out["exc"] = info.exc_from_result(payload)
        raw = payload.get(b"return_value")
        if raw and with_result:
            import base64

            out["result"] = safe_call(lambda: info.decode_value(base64.b64decode(raw)), site="rq.decode_result")
    return out


def terminal_event(outcome: dict[str, Any], base: dict[str, Any], started: float) -> tuple[str, dict, float | None] | None:
    status = outcome["status"]
    data = dict(base)
    occurred = outcome["result_at"] or outcome["ended_at"]
    runtime_ms = None
    if outcome["ended_at"] and outcome["started_at"]:
        runtime_ms = max(0, int((outcome["ended_at"] - outcome["started_at"]) * 1000))
    if not outcome["exists"]:
        # The hash is gone right after the job: RQ deletes it on success with result_ttl=0.
        data["runtime_ms"] = int((time.time() - started) * 1000)
        data["note"] = "job record already deleted (result_ttl=0)"
        return EventKind.TASK_SUCCEEDED.value, data, None
    if status == "finished":
        data["result"] = outcome["result"]
        if runtime_ms is not None:
            data["runtime_ms"] = runtime_ms
        return EventKind.TASK_SUCCEEDED.value, data, outcome["ended_at"] or occurred
    if status == "failed":
        exc = outcome["exc"]
        if not exc and outcome["result_type"] == 5:
            exc = "MaxRetriesExceeded: the job returned Retry and has no retries left"
        data["exception"] = info.exception_summary(exc) or "unknown error"
        data["traceback"] = info.cut_traceback(exc)
        if runtime_ms is not None:
            data["runtime_ms"] = runtime_ms
        return EventKind.TASK_FAILED.value, data, occurred
    if status in ("stopped", "canceled"):
        data["reason"] = status
        data["terminated"] = status == "stopped"
        return EventKind.TASK_REVOKED.value, data, occurred
    if status in ("queued", "scheduled"):
        data["retry_count"] = outcome["number_of_retries"]
        data["retries_left"] = outcome["retries_left"]
        data["reason"] = "returned Retry" if outcome["result_type"] == 4 else "exception; RQ Retry policy"
        data["requeued_as"] = status
        return EventKind.TASK_RETRIED.value, data, outcome["result_at"]
    return None  # still "started": the worker itself was interrupted; RQ's cleanup decides later


# -- patching ------------------------------------------------------------------------------------
def _wrap_execute(orig: Any, in_process: bool) -> Any:
    @functools.wraps(orig)
    def execute_job(self: Any, job: Any, queue: Any) -> Any:
        global _executing_job_id
        cap = _capture
        if cap is None or getattr(_local, "busy", False):
            return orig(self, job, queue)
        ctx = safe_call(cap.before, self, job, queue, site="rq.before_job")
        _local.busy = True
        _executing_job_id = job.id
        try:
            return orig(self, job, queue)
        finally:
            _local.busy = False
            _executing_job_id = None
            if ctx is not None:
                safe_call(cap.after, self, job, ctx, in_process, site="rq.after_job")

    execute_job.__z4j_wrapped__ = True  # type: ignore[attr-defined]
    return execute_job


def _wrap_enqueue_job(orig: Any) -> Any:
    @functools.wraps(orig)
    def enqueue_job(self: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig(self, job, *args, **kwargs)
        cap = _capture
        if cap is not None:
            safe_call(cap.enqueued, [result], site="rq.enqueue_job")
        return result

    return enqueue_job


def _wrap_enqueue_many(orig: Any) -> Any:
    @functools.wraps(orig)
    def enqueue_many(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig(self, *args, **kwargs)
        cap = _capture
        if cap is not None and isinstance(result, list):
            safe_call(cap.enqueued, result, site="rq.enqueue_many")
        return result

    return enqueue_many


def _wrap_schedule_job(orig: Any) -> Any:
    @functools.wraps(orig)
    def schedule_job(self: Any, job: Any, datetime: Any, *args: Any, **kwargs: Any) -> Any:
        result = orig(self, job, datetime, *args, **kwargs)
        cap = _capture
        if cap is not None:
            safe_call(cap.enqueued, [result], datetime, site="rq.schedule_job")
        return result

    return schedule_job


def install(capture: Capture) -> None:
    """Patch RQ once per process; a later install only swaps the sink."""
    global _capture
    from rq.queue import Queue
    from rq.worker import SimpleWorker, Worker

    with _lock:
        _capture = capture
        if _patched:
            return
        targets = [
            (Worker, "execute_job", lambda f: _wrap_execute(f, in_process=False)),
            (SimpleWorker, "execute_job", lambda f: _wrap_execute(f, in_process=True)),
            (Queue, "enqueue_job", _wrap_enqueue_job),
            (Queue, "enqueue_many", _wrap_enqueue_many),
            (Queue, "schedule_job", _wrap_schedule_job),
        ]
        for owner, attr, wrap in targets:
            orig = owner.__dict__[attr]
            setattr(owner, attr, wrap(orig))
            _patched.append((owner, attr, orig))
    log.debug("rq.capture_installed", targets=len(_patched))


def uninstall(capture: Capture | None = None) -> None:
    global _capture
    with _lock:
        if capture is not None and _capture is not capture:
            return
        _capture = None
        while _patched:
            owner, attr, orig = _patched.pop()
            setattr(owner, attr, orig)


def active() -> Capture | None:
    return _capture


# -- small helpers -------------------------------------------------------------------------------
def _evaluated(job: Any, attr: str) -> Any:
    from rq.job import UNEVALUATED

    value = getattr(job, attr, None)
    return None if value is UNEVALUATED else value


def _status_text(status: Any) -> str | None:
    if status is None:
        return None
    value = getattr(status, "value", status)
    return info.text(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, b"", "") else None
    except (TypeError, ValueError):
        return None


def _iso(ts: float | None) -> str | None:
    from ..events import occurred_at_text

    return occurred_at_text(ts) if ts is not None else None
