"""CeleryEngineAdapter: capture Celery task lifecycle events and run operator commands.

    from z4j_bare import install_agent
    from z4j_celery import CeleryEngineAdapter

    install_agent(engines=[CeleryEngineAdapter(celery_app=app)])   # from worker_init, best

Outside a Celery worker (a web server importing the app, ``celery inspect``, beat) that call
starts nothing and waits for worker_init, unless ``outside_worker=True`` opts in.
Capture hooks: see ``celery_capture`` (worker main process, no ``-E`` needed, any bootstrap
point). Retry by reference: see ``celery_store`` (the original request is remembered at receipt,
so ``result_extended`` is not required). Broker reads and the single-queue purge: see
``celery_broker``. User guide: docs/celery.md.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any, ClassVar

from ..forkguard import fork_safe
from ..logs import get_logger
from ..safety import safe_call
from .base import CommandFailed, CommandRequest, EngineAdapter, EventSink
from .celery_broker import MAX_QUEUES, BrokerClient, BrokerError
from .celery_capture import CeleryCapture
from .celery_store import DEFAULT_MAX_ROWS, DEFAULT_TTL_SECONDS, RequestStore

log = get_logger(__name__)

CONTROL_TIMEOUT = 2.0
MAX_BULK = 10_000
MAX_BULK_DETAILS = 200
_RATE = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
_NO_GROW_POOLS = ("solo", "thread")
_STATE_MAP = {"PENDING": "pending", "RECEIVED": "pending", "RETRY": "pending", "STARTED": "started",
              "SUCCESS": "success", "FAILURE": "failure", "REVOKED": "failure"}


class CeleryEngineAdapter(EngineAdapter):
    name: ClassVar[str] = "celery"
    safe_retry_by_reference: ClassVar[bool] = True

    def __init__(
        self,
        celery_app: Any = None,
        *,
        worker_hostname: str | None = None,
        capture_sent: bool | None = None,
        batch_interval: float = 0.0,
        remember_requests: bool = True,
        request_store_max_rows: int = DEFAULT_MAX_ROWS,
        request_store_ttl_seconds: float = DEFAULT_TTL_SECONDS,
        outside_worker: bool = False,
    ) -> None:
        """
        celery_app: the Celery application (required).
        worker_hostname: this worker's node name; learned from the worker when omitted.
        capture_sent: emit task.sent from before/after_task_publish; default (None) = only outside
            a worker (web apps, beat), since in a worker the subtask's own events follow anyway.
        batch_interval: seconds the worker main process may gather events before one write.
            The default 0 makes every event durable before the worker acts on the task's outcome
            (see docs/celery.md, "Durability"); a positive value trades that window (events of a
            SIGKILLed main process in it are lost) for fewer writes.
        remember_requests: keep original publish parameters (bounded SQLite table next to the
            buffer) so retry_task works by reference without result_extended.
        outside_worker: also run the agent in a process that is not a Celery worker (a web app
            that sends tasks, a script, ``z4j-bare run``). By default install_agent in such a
            process (the app module imported by a web server, ``celery inspect``, beat) starts
            nothing and waits: the agent starts at worker_init if the process becomes a worker.
        """
        if celery_app is None or not hasattr(celery_app, "send_task") or not hasattr(celery_app, "control"):
            raise ValueError("CeleryEngineAdapter(celery_app=...) needs your Celery application instance "
                             f"(got {type(celery_app).__name__}); pass celery_app=app")
        if not isinstance(batch_interval, (int, float)) or not 0 <= batch_interval <= 5:
            raise ValueError(f"CeleryEngineAdapter batch_interval must be a number of seconds in [0, 5] "
                             f"(got {batch_interval!r})")
        if capture_sent not in (None, True, False):
            raise ValueError(f"CeleryEngineAdapter capture_sent must be True, False or None (got {capture_sent!r})")
        if outside_worker not in (True, False):
            raise ValueError(f"CeleryEngineAdapter outside_worker must be True or False (got {outside_worker!r})")
        self.app = celery_app
        self.outside_worker = outside_worker
        self.worker_hostname = worker_hostname
        self.capture_sent = capture_sent
        self.batch_interval = float(batch_interval)
        self.remember_requests = bool(remember_requests)
        self._store_rows = int(request_store_max_rows)
        self._store_ttl = float(request_store_ttl_seconds)
        self.store: RequestStore | None = None
        self.capture: CeleryCapture | None = None
        self.sink: EventSink | None = None
        self._broker: BrokerClient | None = None

    def __repr__(self) -> str:
        return f"<CeleryEngineAdapter app={getattr(self.app, 'main', None)!r} hostname={self.hostname!r}>"

    def waits_for_worker(self) -> bool:
        """True in a process that is not (yet) a Celery worker, unless ``outside_worker``: the
        worker main process from worker_init/worker_ready on and pool children (child mode) do
        not wait; an app module imported by `celery worker`, a web server or beat does."""
        if self.outside_worker:
            return False
        from .celery_capture import _find_worker_in_stack

        return CeleryCapture._is_main_process() and _find_worker_in_stack() is None

    def start_with_worker(self, start: Callable[[], Any]) -> None:
        """Call ``start`` once, at worker_init, if this process becomes a Celery worker."""
        from celery import signals

        uid = f"z4j-deferred-start-{id(self)}"

        def on_worker_init(sender: Any = None, **_: Any) -> None:
            signals.worker_init.disconnect(dispatch_uid=uid)
            safe_call(start, site="celery.deferred_start")

        signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid=uid)

    @property
    def hostname(self) -> str | None:
        if self.worker_hostname:
            return self.worker_hostname
        return self.capture.hostname if self.capture is not None else None

    @property
    def broker(self) -> BrokerClient:
        if self._broker is None:
            self._broker = BrokerClient(self.app)
        return self._broker

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(self, sink: EventSink) -> None:
        if self.capture is not None and self.capture.installed:
            return
        self.sink = sink
        if self.remember_requests and self.store is None:
            path = getattr(sink.buffer, "path", None)
            if path:
                self.store = RequestStore(f"{path}.celery-requests", max_rows=self._store_rows, ttl=self._store_ttl)
        self.capture = CeleryCapture(self.app, sink, self.store, batch_interval=self.batch_interval,
                                     capture_sent=self.capture_sent, hostname=self.worker_hostname)
        self.capture.install()

    def detach(self) -> None:
        capture = self.capture
        if capture is not None:
            capture.uninstall()
        if self._broker is not None:
            safe_call(self._broker.close, site="celery.broker.close")
        if self.store is not None:
            safe_call(self.store.close, site="celery.store.close")

    def flush(self) -> None:
        """Write batched events and remembered requests now (tests, shutdown hooks)."""
        if self.capture is not None:
            self.capture.batcher.flush()
        if self.store is not None:
            safe_call(self.store.flush, site="celery.store.flush")

    # -- capabilities --------------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        caps = {"submit_task", "retry_task", "cancel_task", "bulk_retry", "purge_queue", "rate_limit",
                "add_consumer", "cancel_consumer", "pool_grow", "pool_shrink"}
        pool = (self.capture.pool_name if self.capture is not None else None) or ""
        if any(p in pool.lower() for p in _NO_GROW_POOLS):
            caps -= {"pool_grow", "pool_shrink"}  # solo/threads pools cannot be resized
        if self.app.conf.worker_pool_restarts:
            caps.add("restart_worker")
        return frozenset(caps)

    # -- health --------------------------------------------------------------------------------
    def _queues(self) -> list[str]:
        names = dict.fromkeys([self.app.conf.task_default_queue or "celery"])
        try:
            names.update(dict.fromkeys(self.app.amqp.queues.keys()))
        except Exception:  # noqa: BLE001
            pass
        if self.capture is not None:
            names.update(dict.fromkeys(list(self.capture.seen_queues)))
        return [n for n in names if isinstance(n, str) and n][:MAX_QUEUES]

    @fork_safe
    def health(self) -> dict[str, Any]:
        broker = self.broker
        out: dict[str, Any] = {"broker_type": broker.type}
        depths: dict[str, int] = {}
        connected = True
        for queue in self._queues():
            try:
                depth = broker.depth(queue)
            except BrokerError:
                connected = False
                break
            if depth is not None:
                depths[queue] = depth
        out["broker_connected"] = connected
        out["queue_depths"] = depths
        if connected:
            out["worker_details"] = broker.worker_details(self.hostname)
        if broker.last_error:
            out["broker_error"] = broker.last_error
        if self.store is not None and self.capture is not None:
            out["pending_events"] = self.capture.batcher.pending
        return out

    @fork_safe
    def queue_depth(self, queue: str) -> int | None:
        try:
            return self.broker.depth(queue)
        except BrokerError:
            return None

    # -- commands ------------------------------------------------------------------------------
    def _original(self, task_id: str) -> tuple[dict[str, Any] | None, str]:
        if self.store is not None:
            record = self.store.get(task_id)
            if record is not None:
                return record, "agent_store"
        if self.app.conf.result_extended:
            try:
                meta = self.app.backend.get_task_meta(task_id)
            except Exception:  # noqa: BLE001
                meta = None
            if isinstance(meta, dict) and meta.get("name"):
                return {"name": meta["name"], "args": list(meta.get("args") or ()),
                        "kwargs": dict(meta.get("kwargs") or {}), "routing_key": meta.get("routing_key") or meta.get("queue"),
                        "exchange": meta.get("exchange"), "headers": {}}, "result_backend"
        return None, ""

    def _publish_again(self, task_id: str, *, task_name: Any, override_args: Any, override_kwargs: Any,
                       eta: Any, eta_seconds: Any, priority: Any) -> dict[str, Any]:
        if override_args is not None and not isinstance(override_args, (list, tuple)):
            raise CommandFailed("retry_task: override_args must be a list")
        if override_kwargs is not None and not isinstance(override_kwargs, dict):
            raise CommandFailed("retry_task: override_kwargs must be an object")
        record, source = self._original(task_id)
        if record is None:
            if override_args is not None and override_kwargs is not None and isinstance(task_name, str) and task_name:
                record, source = {"name": task_name, "args": [], "kwargs": {}, "headers": {}}, "overrides"
            else:
                raise CommandFailed(
                    f"retry_task: original request not known to this agent: task {task_id} was not received by a "
                    "worker running this agent (or it was pruned from the request store), and the result backend "
                    "does not keep arguments (result_extended is off). Pass override_args and override_kwargs to "
                    "publish it with explicit arguments.")
        if record.get("too_large"):
            raise CommandFailed(f"retry_task: the original request of task {task_id} was too large to remember "
                                f"({record['too_large']} bytes); pass override_args and override_kwargs")
        name = record["name"]
        if isinstance(task_name, str) and task_name and task_name not in (name, record.get("shadow")):
            raise CommandFailed(f"retry_task: task {task_id} is {name!r} here, not {task_name!r}; refusing to guess")
        options, label = _send_options(record, self.app.amqp.queues, priority, eta, eta_seconds)
        args = list(override_args) if override_args is not None else list(record.get("args") or ())
        kwargs = dict(override_kwargs) if override_kwargs is not None else dict(record.get("kwargs") or {})
        try:
            result = self.app.send_task(name, args=args, kwargs=kwargs, **options)
        except Exception as exc:  # noqa: BLE001 - broker errors
            raise CommandFailed(f"retry_task: publishing {name} failed: {type(exc).__name__}: {exc}") from None
        return {"new_task_id": result.id, "task_name": name,
                "priority": label if label is not None else options.get("priority"), "source": source,
                "original_task_id": task_id}

    def retry_task(self, request: CommandRequest) -> dict[str, Any]:
        task_id = request.require("task_id")
        return self._publish_again(
            task_id, task_name=request.param("task_name"), override_args=request.parameters.get("override_args"),
            override_kwargs=request.parameters.get("override_kwargs"), eta=request.param("eta"),
            eta_seconds=request.param("eta_seconds"), priority=request.param("priority"))

    def bulk_retry(self, request: CommandRequest) -> dict[str, Any]:
        filt = request.param("filter", {})
        if not isinstance(filt, dict):
            raise CommandFailed("bulk_retry: parameter 'filter' must be an object")
        ids = filt.get("task_ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise CommandFailed("bulk_retry: filter.task_ids must be a list of task ids (this agent retries by id only)")
        limit = request.param("max", 1000)
        limit = max(0, min(int(limit) if isinstance(limit, int) else 1000, MAX_BULK))
        names = filt.get("task_names") if isinstance(filt.get("task_names"), dict) else {}
        prios = filt.get("task_priorities") if isinstance(filt.get("task_priorities"), dict) else {}
        selected = list(dict.fromkeys(ids))[:limit]
        results, succeeded, failed = [], 0, 0
        for task_id in selected:
            try:
                out = self._publish_again(task_id, task_name=names.get(task_id),
                                          override_args=request.parameters.get("override_args"),
                                          override_kwargs=request.parameters.get("override_kwargs"),
                                          eta=None, eta_seconds=None, priority=prios.get(task_id))
                succeeded += 1
                item = {"task_id": task_id, "new_task_id": out["new_task_id"]}
            except CommandFailed as exc:
                failed += 1
                item = {"task_id": task_id, "error": str(exc)[:300]}
            if len(results) < MAX_BULK_DETAILS:
                results.append(item)
        result = {"filter": filt, "requested": len(selected), "succeeded": succeeded, "failed": failed,
                  "results": results}
        if failed and not succeeded and selected:
            raise CommandFailed(f"bulk_retry: none of {len(selected)} tasks could be retried", result)
        return result

    def cancel_task(self, request: CommandRequest) -> dict[str, Any]:
        task_id = request.require("task_id")
        terminate = request.parameters.get("terminate") is True
        signal = request.param("signal", "SIGTERM")
        if not isinstance(signal, str) or not re.fullmatch(r"SIG[A-Z0-9]+", signal):
            raise CommandFailed("cancel_task: parameter 'signal' must be a signal name like 'SIGTERM'")
        try:
            replies = self.app.control.revoke(task_id, terminate=terminate, signal=signal, reply=True,
                                              timeout=CONTROL_TIMEOUT) or []
        except Exception as exc:  # noqa: BLE001
            raise CommandFailed(f"cancel_task: broadcasting revoke failed: {type(exc).__name__}: {exc}") from None
        acked = sorted(host for reply in replies if isinstance(reply, dict) for host in reply)
        result = {"task_id": task_id, "terminated": terminate, "acknowledged_by": acked}
        if terminate:
            result["note"] = ("terminate=True signals the pool process running the task; it may already be "
                              "running another task")
        return result

    def submit_task(self, request: CommandRequest) -> dict[str, Any]:
        name = request.param("name") or request.param("task_name")
        if not isinstance(name, str) or not name:
            raise CommandFailed("submit_task: parameter 'name' is required")
        args = request.param("args", [])
        kwargs = request.param("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise CommandFailed("submit_task: 'args' must be a list and 'kwargs' an object")
        options = _eta_options(request.param("eta"), request.param("eta_seconds"), "submit_task")
        queue = request.param("queue")
        if isinstance(queue, str) and queue:
            options["queue"] = queue
        priority = request.param("priority")
        if isinstance(priority, int) and not isinstance(priority, bool):
            options["priority"] = priority
        try:
            result = self.app.send_task(name, args=list(args), kwargs=kwargs, **options)
        except Exception as exc:  # noqa: BLE001
            raise CommandFailed(f"submit_task: publishing {name} failed: {type(exc).__name__}: {exc}") from None
        return {"task_id": result.id, "engine": self.name, "task_name": name}

    def purge_queue(self, request: CommandRequest) -> dict[str, Any]:
        queue = request.require("queue")
        try:
            purged = self.broker.purge(queue)
        except BrokerError as exc:
            raise CommandFailed(f"purge_queue: {exc}") from None
        return {"queue": queue, "purged": purged}

    def rate_limit(self, request: CommandRequest) -> dict[str, Any]:
        task_name = request.require("task_name")
        rate = request.param("rate")
        rate = str(rate) if isinstance(rate, (int, str)) and not isinstance(rate, bool) else ""
        if not _RATE.match(rate):
            raise CommandFailed("rate_limit: parameter 'rate' must look like '10', '10/s', '5/m', '100/h' or '0'")
        worker = request.param("worker_name")
        replies = self._control("rate_limit", "rate_limit", task_name, rate, worker=worker)
        return {"task_name": task_name, "rate": rate, "worker": worker, "replies": replies}

    def restart_worker(self, request: CommandRequest) -> dict[str, Any]:
        worker = request.require("worker_name")
        if not self.app.conf.worker_pool_restarts:
            raise CommandFailed("restart_worker: worker_pool_restarts is disabled in the Celery config")
        replies = self._control("restart_worker", "pool_restart", worker=worker, reload=False)
        return {"worker": worker, "replies": replies}

    def pool_grow(self, request: CommandRequest) -> dict[str, Any]:
        return self._resize(request, "pool_grow")

    def pool_shrink(self, request: CommandRequest) -> dict[str, Any]:
        return self._resize(request, "pool_shrink")

    def _resize(self, request: CommandRequest, method: str) -> dict[str, Any]:
        worker = request.require("worker_name")
        delta = request.param("delta", 1)
        if isinstance(delta, bool) or not isinstance(delta, int) or not 1 <= abs(delta) <= 1000:
            raise CommandFailed(f"{method}: parameter 'delta' must be an integer between 1 and 1000")
        replies = self._control(method, method, n=abs(delta), worker=worker)
        return {"worker": worker, "delta": abs(delta), "replies": replies}

    def add_consumer(self, request: CommandRequest) -> dict[str, Any]:
        worker, queue = request.require("worker_name"), request.require("queue")
        replies = self._control("add_consumer", "add_consumer", queue, worker=worker)
        return {"worker": worker, "queue": queue, "replies": replies}

    def cancel_consumer(self, request: CommandRequest) -> dict[str, Any]:
        worker, queue = request.require("worker_name"), request.require("queue")
        replies = self._control("cancel_consumer", "cancel_consumer", queue, worker=worker)
        return {"worker": worker, "queue": queue, "replies": replies}

    def _control(self, action: str, method: str, *args: Any, worker: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Broadcast with replies; fail unless every addressed worker answered ok."""
        destination = [worker] if isinstance(worker, str) and worker else None
        try:
            replies = getattr(self.app.control, method)(*args, destination=destination, reply=True,
                                                        timeout=CONTROL_TIMEOUT, **kwargs) or []
        except Exception as exc:  # noqa: BLE001
            raise CommandFailed(f"{action}: broadcast failed: {type(exc).__name__}: {exc}") from None
        merged: dict[str, Any] = {}
        for reply in replies:
            if isinstance(reply, dict):
                merged.update(reply)
        if destination and not merged:
            raise CommandFailed(f"{action}: worker {worker!r} did not answer within {CONTROL_TIMEOUT:.0f} s "
                                "(unknown name, offline, or remote control disabled)")
        errors = {host: r["error"] for host, r in merged.items() if isinstance(r, dict) and "error" in r}
        if errors:
            raise CommandFailed(f"{action}: refused by {', '.join(sorted(errors))}: "
                                f"{'; '.join(str(e) for e in errors.values())[:500]}", {"replies": merged})
        return merged

    def reconcile_task(self, request: CommandRequest) -> dict[str, Any]:
        task_id = request.require("task_id")
        backend = self.app.backend
        if type(backend).__name__ == "DisabledBackend":
            return {"task_id": task_id, "engine_state": "unknown", "reason": "no result backend configured"}
        try:
            meta = backend.get_task_meta(task_id)
        except Exception as exc:  # noqa: BLE001
            raise CommandFailed(f"reconcile_task: result backend unreachable: {type(exc).__name__}") from None
        state = str(meta.get("status") or "PENDING")
        done = meta.get("date_done")
        result: dict[str, Any] = {"task_id": task_id, "engine_state": _STATE_MAP.get(state, "unknown"),
                                  "celery_state": state,
                                  "finished_at": done.isoformat() if isinstance(done, datetime) else done}
        if state in ("FAILURE", "REVOKED"):
            exc = meta.get("result")
            result["exception"] = type(exc).__name__ if isinstance(exc, BaseException) else (
                exc.get("exc_type") if isinstance(exc, dict) else None)
        return result


def _send_options(record: dict[str, Any], queues: Any, priority: Any, eta: Any,
                  eta_seconds: Any) -> tuple[dict[str, Any], str | None]:
    """``send_task`` options that publish a remembered request as it was first published, and the
    brain's priority label when one was asked for (the broker priority then stays as published)."""
    options: dict[str, Any] = {}
    routing_key, exchange = record.get("routing_key"), record.get("exchange")
    if routing_key and routing_key in queues:
        options["queue"] = routing_key
    elif routing_key:
        options["routing_key"] = routing_key
        if exchange is not None:
            options["exchange"] = exchange
    label = None
    if isinstance(priority, bool):
        raise CommandFailed("retry_task: priority must be an integer (broker priority) or a label")
    if isinstance(priority, int):
        options["priority"] = priority
    elif isinstance(priority, str) and priority:
        label = priority  # brain label (critical/high/...): broker priority stays as published
        if record.get("priority") is not None:
            options["priority"] = record["priority"]
    elif record.get("priority") is not None:
        options["priority"] = record["priority"]
    options.update(_eta_options(eta, eta_seconds, "retry_task"))
    for key in ("root_id", "parent_id", "shadow"):
        if record.get(key):
            options[key] = record[key]
    limits = record.get("timelimit")
    if isinstance(limits, (list, tuple)) and len(limits) == 2:
        options["time_limit"], options["soft_time_limit"] = limits
    if record.get("ignore_result") is not None:
        options["ignore_result"] = record["ignore_result"]
    if record.get("callbacks"):
        options["link"] = record["callbacks"]
    if record.get("errbacks"):
        options["link_error"] = record["errbacks"]
    if record.get("chain"):
        options["chain"] = record["chain"]
    if record.get("chord"):
        options["chord"] = record["chord"]
    if record.get("headers"):
        options["headers"] = dict(record["headers"])
    return options, label


def _eta_options(eta: Any, eta_seconds: Any, action: str) -> dict[str, Any]:
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise CommandFailed(f"{action}: 'eta' must be absolute POSIX seconds")
        return {"eta": datetime.fromtimestamp(float(eta), UTC)}
    if eta_seconds is not None:
        if isinstance(eta_seconds, bool) or not isinstance(eta_seconds, (int, float)) or eta_seconds < 0:
            raise CommandFailed(f"{action}: 'eta_seconds' must be a non-negative number")
        return {"eta": datetime.fromtimestamp(time.time() + float(eta_seconds), UTC)}
    return {}
