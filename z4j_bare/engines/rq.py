"""The RQ engine adapter: capture (see ``rq_capture``) and operator commands against Redis.

Commands act on RQ's own records and never deserialize a job's call: jobs are loaded with an
*opaque* serializer whose ``loads`` refuses, so RQ keeps the stored ``data``/``meta`` bytes as
they are and writes them back unchanged on requeue. Every result says what really happened,
checked in Redis after the fact (a cancel of a running job is only a success once RQ marked it
stopped).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..events import EventKind
from ..logs import get_logger
from . import rq_capture as capture
from . import rq_jobinfo as info
from .base import CommandFailed, CommandRequest, EngineAdapter, EventSink

log = get_logger(__name__)

MAX_DLQ_PAGE = 200
MAX_HEALTH_QUEUES = 64
MAX_PURGE_EVENTS = 10_000
CANCELABLE = frozenset({"queued", "deferred", "scheduled", "created", "rate_limited", "ready_to_enqueue"})
_JOB_FIELDS = (b"status", b"origin", b"worker_name", b"description", b"enqueued_at", b"started_at", b"ended_at")


class _OpaqueSerializer:
    """Serializer for command paths: writing delegates to the real one, reading refuses.

    RQ then keeps undecodable ``meta`` as raw bytes and saves them back untouched, and the job
    call (``data``) stays the bytes it was (RQ only decodes it lazily, which we never trigger).
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def dumps(self, obj: Any) -> bytes:
        return self._real.dumps(obj)

    def loads(self, data: bytes) -> Any:
        raise ValueError("z4j: job payloads are not deserialized on command paths")


class RqEngineAdapter(EngineAdapter):
    """Capture RQ job lifecycle events and run operator commands on RQ.

    ``RqEngineAdapter(redis_url="redis://host:6379/0")``, or pass an existing ``redis.Redis``
    (``connection=``, or positionally) or an ``rq.Queue`` (``queue=``, or positionally; its
    connection and serializer are used). ``queues`` names the queues reported in heartbeats
    (default: every queue RQ knows in that Redis, up to 64). ``capture_args=False`` keeps job
    arguments out of events. ``capture_results=True`` adds a fork/spawn job's return value to
    ``task.succeeded`` (one more Redis read per job; a SimpleWorker always has it in memory).
    ``stop_wait_seconds`` bounds how long ``cancel_task`` waits for a
    running job to be stopped before it reports the truth.
    """

    name: ClassVar[str] = "rq"
    safe_retry_by_reference: ClassVar[bool] = True

    def __init__(
        self,
        redis_url: Any = None,
        *,
        connection: Any = None,
        queue: Any = None,
        rq_app: Any = None,
        queues: Iterable[str] | None = None,
        serializer: Any = None,
        capture_args: bool = True,
        capture_results: bool = False,
        stop_wait_seconds: float = 5.0,
        default_queue: str = "default",
    ) -> None:
        from .extras import needs_extra

        with needs_extra("RqEngineAdapter"):
            from redis import Redis
            from rq.queue import Queue
            from rq.serializers import resolve_serializer

        for value in (redis_url, rq_app):
            if isinstance(value, Queue):
                queue = queue or value
            elif isinstance(value, Redis):
                connection = connection or value
        url = redis_url if isinstance(redis_url, str) else None
        if queue is not None:
            connection = connection or queue.connection
            serializer = serializer or queue.serializer
            default_queue = queue.name if default_queue == "default" else default_queue
        if connection is None:
            url = url or os.environ.get("Z4J_RQ_REDIS_URL") or None
            if not url:
                raise ValueError("RqEngineAdapter needs Redis: pass redis_url='redis://host:6379/0', "
                                 "connection=<redis.Redis> or queue=<rq.Queue> (or set Z4J_RQ_REDIS_URL)")
            try:
                connection = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30)
            except ValueError as exc:
                raise ValueError(f"RqEngineAdapter: redis_url is not a valid Redis URL ({type(exc).__name__}); "
                                 "expected redis://[:password@]host:port/db or rediss://...") from None
        if not isinstance(connection, Redis):
            raise ValueError(f"RqEngineAdapter: connection must be a redis.Redis, got {type(connection).__name__}")
        if stop_wait_seconds < 0:
            raise ValueError("RqEngineAdapter: stop_wait_seconds must be >= 0")
        self.connection = connection
        self.serializer = resolve_serializer(serializer)
        self._opaque = _OpaqueSerializer(self.serializer)
        self.queues = list(queues) if queues else []
        self.capture_args = bool(capture_args)
        self.capture_results = bool(capture_results)
        self.stop_wait_seconds = float(stop_wait_seconds)
        self.default_queue = default_queue
        self._where = _describe(connection, url)
        self._sink: EventSink | None = None
        self._capture: capture.Capture | None = None

    def __repr__(self) -> str:
        return f"<RqEngineAdapter redis={self._where}>"

    # -- lifecycle -------------------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        return frozenset({"submit_task", "retry_task", "cancel_task", "bulk_retry", "purge_queue",
                          "requeue_dead_letter", "list_dead_letters"})

    def attach(self, sink: EventSink) -> None:
        self._sink = sink
        self._capture = capture.Capture(sink, capture_args=self.capture_args,
                                        capture_results=self.capture_results)
        capture.install(self._capture)

    def detach(self) -> None:
        capture.uninstall(self._capture)
        self._capture = None

    def watch_queues(self, names: Iterable[str]) -> None:
        """Add queues to the heartbeat's depth report (the worker classes call this)."""
        for name in names:
            if name not in self.queues:
                self.queues.append(name)

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"broker_type": "redis"}
        try:
            names = self.queues or sorted(self._known_queues())[:MAX_HEALTH_QUEUES]
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.ping()
                for name in names:
                    pipe.llen(self._queue_key(name))
                replies = pipe.execute()
            out["broker_connected"] = bool(replies[0])
            out["queue_depths"] = {name: int(n) for name, n in zip(names, replies[1:])}
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the heartbeat
            out["broker_connected"] = False
            out["broker_error"] = type(exc).__name__
        return out

    def queue_depth(self, queue: str) -> int | None:
        try:
            return int(self.connection.llen(self._queue_key(queue)))
        except Exception:  # noqa: BLE001 - unknown depth: the runtime then needs force
            return None

    # -- commands --------------------------------------------------------------------------------
    def retry_task(self, request: CommandRequest) -> dict[str, Any]:
        return self._requeue_failed(request.require("task_id"), request.action)

    def requeue_dead_letter(self, request: CommandRequest) -> dict[str, Any]:
        return self._requeue_failed(request.require("task_id"), request.action)

    def bulk_retry(self, request: CommandRequest) -> dict[str, Any]:
        filt = request.param("filter", {})
        if not isinstance(filt, dict):
            raise CommandFailed("bulk_retry: parameter 'filter' must be an object")
        limit = max(0, min(int(request.param("max", 1000)), 10_000))
        ids = filt.get("task_ids")
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise CommandFailed("bulk_retry: filter.task_ids must be a list of task ids")
        if ids is None:
            queue = filt.get("queue")
            ids = self._failed_ids([queue] if isinstance(queue, str) and queue else None, limit)
        requested = ids[:limit]
        done: list[str] = []
        errors: dict[str, str] = {}
        for job_id in requested:
            try:
                self._requeue_failed(job_id, "bulk_retry")
                done.append(job_id)
            except CommandFailed as exc:
                errors[job_id] = str(exc)
        result = {"filter": filt, "requested": len(requested), "succeeded": len(done), "failed": len(errors),
                  "retried": done, "errors": errors, "skipped_over_max": max(0, len(ids) - limit)}
        if requested and not done:
            raise CommandFailed(f"bulk_retry: none of the {len(requested)} jobs could be retried", result)
        return result

    def cancel_task(self, request: CommandRequest) -> dict[str, Any]:
        job_id = request.require("task_id")
        fields = self._job_fields(job_id)
        if fields is None:
            raise CommandFailed(f"cancel_task: RQ job {job_id!r} does not exist (expired or deleted)",
                                {"task_id": job_id, "canceled": False})
        status, origin = fields["status"], fields["origin"]
        base = {"task_id": job_id, "queue": origin, "previous_status": status}
        if status in CANCELABLE:
            if status == "queued" and not self.connection.lrem(self._queue_key(origin), 1, job_id):
                # Popped by a worker between our read and the LREM: it is (about to be) running.
                return self._stop_running(job_id, origin, base, fields)
            job = self._load_job(job_id)
            job.cancel()
            now_status = info.text(self.connection.hget(job.key, "status"))
            if now_status != "canceled":
                raise CommandFailed(f"cancel_task: job {job_id} is {now_status} after cancel", {**base, "new_status": now_status})
            self._emit(EventKind.TASK_REVOKED, job_id, {"queue": origin, "reason": "canceled", "terminated": False,
                                                        "task_name": self._task_name(job_id)})
            return {**base, "new_status": "canceled", "canceled": True, "terminated": False}
        if status == "started":
            return self._stop_running(job_id, origin, base, fields)
        raise CommandFailed(f"cancel_task: job {job_id} already ended (status {status}); nothing to cancel",
                            {**base, "new_status": status, "canceled": False})

    def purge_queue(self, request: CommandRequest) -> dict[str, Any]:
        from rq.queue import Queue

        name = request.require("queue")
        queue = Queue(name, connection=self.connection, serializer=self._opaque)
        ids = [info.text(i) for i in self.connection.lrange(queue.key, 0, MAX_PURGE_EVENTS - 1)]
        purged = int(queue.empty() or 0)
        if self._sink is not None and ids:
            # Jobs already reported as received would otherwise stay "received" in the brain.
            now = time.time()
            self._sink.emit_many([(EventKind.TASK_REVOKED.value, i, {"queue": name, "reason": "purged",
                                                                     "terminated": False}, now) for i in ids[:purged]])
        return {"queue": name, "purged": purged}

    def list_dead_letters(self, request: CommandRequest) -> dict[str, Any]:
        limit = request.param("limit", 100)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise CommandFailed("list_dead_letters: limit must be a positive integer")
        limit = min(limit, MAX_DLQ_PAGE)
        queue = request.param("queue")
        names = [queue] if isinstance(queue, str) and queue else sorted(self._known_queues())
        start_q, offset = 0, 0
        cursor = request.param("cursor")
        if cursor:
            try:
                off, _, qname = str(cursor).partition("@")
                offset, start_q = int(off), names.index(qname)
            except ValueError:
                raise CommandFailed("list_dead_letters: cursor is not one this agent issued") from None
        now = time.time()
        with self.connection.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(self._failed_key(name), now, "+inf")
            counts = [int(c) for c in pipe.execute()]
        entries: list[dict[str, Any]] = []
        next_cursor = None
        for index in range(start_q, len(names)):
            name = names[index]
            need = limit - len(entries)
            ids = [info.text(i) for i in self.connection.zrevrangebyscore(
                self._failed_key(name), "+inf", now, start=offset, num=need + 1)]
            entries.extend(self._dead_letter_entries(name, ids[:need]))
            if len(ids) > need:
                next_cursor = f"{offset + need}@{name}"
                break
            offset = 0
            if len(entries) >= limit and index + 1 < len(names) and any(counts[index + 1:]):
                next_cursor = f"0@{names[index + 1]}"
                break
        return {"entries": entries, "next_cursor": next_cursor, "total": sum(counts), "engine": "rq"}

    def submit_task(self, request: CommandRequest) -> dict[str, Any]:
        from rq.queue import Queue

        name = request.param("name") or request.param("task_name")
        if not isinstance(name, str) or "." not in name or any(c.isspace() for c in name):
            raise CommandFailed("submit_task: parameter 'name' must be the job function's dotted path, e.g. 'app.jobs.send'")
        args, kwargs = request.param("args", []), request.param("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise CommandFailed("submit_task: 'args' must be a list and 'kwargs' an object")
        queue = Queue(request.param("queue") or self.default_queue, connection=self.connection, serializer=self.serializer)
        eta = request.param("eta")
        if eta is None and request.param("eta_seconds") is not None:
            eta = time.time() + float(request.param("eta_seconds"))
        front = request.param("priority") in ("critical", "high")
        if eta is not None and float(eta) > time.time():
            from datetime import UTC, datetime

            job = queue.enqueue_at(datetime.fromtimestamp(float(eta), UTC), name, *args, at_front=front, **_rq_safe(kwargs))
        else:
            job = queue.enqueue_call(func=name, args=args, kwargs=kwargs, at_front=front)
        status = capture._status_text(job.get_status(refresh=False))
        return {"task_id": job.id, "engine": "rq", "queue": queue.name, "status": status}

    def reconcile_task(self, request: CommandRequest) -> dict[str, Any]:
        job_id = request.require("task_id")
        outcome = capture.read_outcome(self.connection, job_id, self._job_key(job_id), with_result=False)
        status = outcome["status"]
        state = {"queued": "pending", "deferred": "pending", "scheduled": "pending", "created": "pending",
                 "rate_limited": "pending", "started": "started", "finished": "success", "failed": "failure",
                 "stopped": "failure", "canceled": "failure"}.get(status or "", "unknown")
        finished = outcome["ended_at"] or (outcome["result_at"] if state in ("success", "failure") else None)
        exc = info.exception_summary(outcome["exc"]) if state == "failure" else None
        return {"task_id": job_id, "engine_state": state, "rq_status": status,
                "finished_at": capture._iso(finished), "exception": self._scrub(exc)}

    # -- command helpers -------------------------------------------------------------------------
    def _requeue_failed(self, job_id: str, action: str) -> dict[str, Any]:
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.registry import FailedJobRegistry

        fields = self._job_fields(job_id)
        if fields is None:
            raise CommandFailed(f"{action}: RQ job {job_id!r} does not exist (expired or deleted); nothing to retry",
                                {"task_id": job_id, "retried": False})
        origin = fields["origin"]
        registry = FailedJobRegistry(origin, connection=self.connection, serializer=self._opaque)
        if self.connection.zscore(registry.key, job_id) is None:
            raise CommandFailed(f"{action}: job {job_id} is not in the failed registry of queue {origin!r} "
                                f"(status {fields['status']}); only failed jobs are retried",
                                {"task_id": job_id, "queue": origin, "status": fields["status"], "retried": False})
        try:
            job = registry.requeue(self._load_job(job_id))
        except (InvalidJobOperation, NoSuchJobError):
            raise CommandFailed(f"{action}: job {job_id} left the failed registry before it could be requeued",
                                {"task_id": job_id, "queue": origin, "retried": False}) from None
        new_status = capture._status_text(job.get_status(refresh=False))
        self._emit(EventKind.TASK_RECEIVED, job_id, {"queue": origin, "task_name": self._task_name(job_id),
                                                     "requeued_by": action, "status": new_status},
                   info.to_epoch(job.enqueued_at))
        return {"task_id": job_id, "queue": origin, "source": "failed_registry", "new_status": new_status,
                "retried": True}

    def _stop_running(self, job_id: str, origin: str, base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        from rq.command import send_command

        worker = fields["worker_name"]
        deadline = time.monotonic() + self.stop_wait_seconds
        if not worker:  # dequeued but not yet prepared: the worker name lands with "started"
            while not worker and time.monotonic() < deadline:
                time.sleep(0.02)
                worker = info.text(self.connection.hget(self._job_key(job_id), "worker_name"))
            if not worker:
                raise CommandFailed(f"cancel_task: job {job_id} was taken by a worker that has not started it "
                                    f"within {self.stop_wait_seconds:g} s; not stopped", {**base, "canceled": False})
        send_command(self.connection, worker, "stop-job", job_id=job_id)
        status = "started"
        while time.monotonic() < deadline:
            status = info.text(self.connection.hget(self._job_key(job_id), "status")) or "deleted"
            if status != "started" and status != "queued":
                break
            time.sleep(0.02)
        result = {**base, "worker": worker, "stop_sent": True, "new_status": status}
        if status == "stopped":
            outcome = capture.read_outcome(self.connection, job_id, self._job_key(job_id), with_result=False)
            self._emit(EventKind.TASK_REVOKED, job_id, {"queue": origin, "worker": worker, "reason": "stopped",
                                                        "terminated": True, "task_name": self._task_name(job_id)},
                       outcome["result_at"] or outcome["ended_at"])
            return {**result, "canceled": True, "terminated": True}
        result["canceled"] = False
        if status in ("finished", "deleted"):
            raise CommandFailed(f"cancel_task: job {job_id} finished before it could be stopped", result)
        if status == "failed":
            raise CommandFailed(f"cancel_task: job {job_id} failed on its own before it could be stopped", result)
        if status in ("started", "queued"):
            raise CommandFailed(
                f"cancel_task: stop sent to worker {worker} but job {job_id} is still running after "
                f"{self.stop_wait_seconds:g} s (a plain rq SimpleWorker cannot stop a running job; "
                "z4j_rq.SimpleWorker can)", result)
        raise CommandFailed(f"cancel_task: job {job_id} is {status} after the stop request", result)

    def _job_fields(self, job_id: str) -> dict[str, Any] | None:
        values = self.connection.hmget(self._job_key(job_id), _JOB_FIELDS)
        if values[0] is None and values[1] is None:
            return None
        return {k.decode(): info.text(v) for k, v in zip(_JOB_FIELDS, values)}

    def _load_job(self, job_id: str) -> Any:
        from rq.job import Job

        return Job.fetch(job_id, connection=self.connection, serializer=self._opaque)

    def _task_name(self, job_id: str) -> str:
        data, description = self.connection.hmget(self._job_key(job_id), [b"data", b"description"])
        return (info.func_name_from_data(info.inflate(data, 4096))
                or info.name_from_description(info.text(description)) or "unknown")

    def _dead_letter_entries(self, queue: str, ids: list[str]) -> list[dict[str, Any]]:
        from rq.results import Result

        if not ids:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._job_key(job_id), [b"data", b"description", b"ended_at"])
                pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)
                pipe.xlen(Result.get_key(job_id))
            replies = pipe.execute()
        out = []
        for n, job_id in enumerate(ids):
            (data, description, ended), latest, attempts = replies[3 * n: 3 * n + 3]
            exc = info.exc_from_result(latest[0][1]) if latest else None
            failed_at = (info.stream_id_epoch(latest[0][0]) if latest else None) or info.to_epoch(ended)
            out.append({
                "task_id": job_id, "queue": queue,
                "task_name": (info.func_name_from_data(info.inflate(data, 4096))
                              or info.name_from_description(info.text(description)) or "unknown"),
                "failed_at": capture._iso(failed_at),
                "error_excerpt": self._scrub(info.exception_summary(exc)),
                "attempts": max(1, int(attempts or 0)),
            })
        return out

    def _failed_ids(self, queues: list[str] | None, limit: int) -> list[str]:
        ids: list[str] = []
        now = time.time()
        for name in queues or sorted(self._known_queues()):
            ids += [info.text(i) for i in self.connection.zrangebyscore(self._failed_key(name), now, "+inf",
                                                                         start=0, num=limit - len(ids))]
            if len(ids) >= limit:
                break
        return ids

    def _known_queues(self) -> set[str]:
        from rq.queue import Queue

        prefix = Queue.redis_queue_namespace_prefix
        names = {info.text(k)[len(prefix):] for k in self.connection.smembers(Queue.redis_queues_keys)}
        return names | set(self.queues)

    def _emit(self, kind: EventKind, job_id: str, data: dict[str, Any], occurred_at: float | None = None) -> None:
        if self._sink is not None:
            self._sink.emit(kind.value, job_id, data, occurred_at)

    def _scrub(self, text: str | None) -> str | None:
        if text is None:
            return None
        redactor = self._sink.redactor if self._sink is not None else None
        if redactor is None:
            from ..redaction import default_redactor

            redactor = default_redactor()
        return redactor.scrub_text(text)

    @staticmethod
    def _queue_key(name: str) -> str:
        from rq.queue import Queue

        return Queue.redis_queue_namespace_prefix + name

    @staticmethod
    def _failed_key(name: str) -> str:
        from rq.registry import FailedJobRegistry

        return FailedJobRegistry.key_template.format(name)

    @staticmethod
    def _job_key(job_id: str) -> str:
        from rq.job import Job

        return Job.key_for(job_id)


def _rq_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """enqueue_at reads RQ options from kwargs; a job kwarg with such a name would be eaten."""
    reserved = {"job_timeout", "description", "result_ttl", "ttl", "failure_ttl", "depends_on", "job_id",
                "at_front", "meta", "retry", "repeat", "on_success", "on_failure", "on_stopped", "pipeline",
                "unique", "rate_limit", "webhooks", "args", "kwargs"}
    clash = reserved & set(kwargs)
    if clash:
        raise CommandFailed(f"submit_task: with an eta, job kwargs cannot be named {sorted(clash)} (RQ options)")
    return kwargs


def _describe(connection: Any, url: str | None) -> str:
    """host:port/db for reprs and logs; never the password."""
    if url:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
    kw = getattr(getattr(connection, "connection_pool", None), "connection_kwargs", {}) or {}
    if kw.get("path"):
        return f"unix:{kw['path']}/{kw.get('db', 0)}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
