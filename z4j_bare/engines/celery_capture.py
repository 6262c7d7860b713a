"""Where the Celery adapter hooks Celery, and what each hook turns into.

Worker tasks are captured in the worker **main** process, which every pool reports back to:
``Request.on_accepted`` (started, with the pool pid and the real start time),
``Request.on_success`` (succeeded, with Celery's own result repr and runtime),
``Request.on_failure`` (failed, also WorkerLostError / time limits; Retry is routed on to
``Request.on_retry`` -> retried) plus the ``task_received`` / ``task_revoked`` / ``worker_ready``
/ ``worker_shutdown`` signals, all dispatched in the main process. None of this needs ``-E``
(``Request.send_event`` is a no-op without it, so it is never relied upon), and because pool
children never need the agent it does not matter whether ``install_agent`` ran at import, on
``worker_init`` or on ``worker_ready`` (after the pool forked).

Each method is wrapped on ``celery.worker.request.Request`` *and* on every subclass that
overrides it: ``create_request_cls`` builds a per-task subclass whose ``on_success`` does not call
``super()``. Subclasses created later (a consumer restart rebuilds the strategies) are wrapped
by hooking ``create_request_cls`` in ``celery.worker.strategy``. A per-request marker keeps a
subclass wrapper and a base wrapper from reporting the same moment twice.

Eager calls (``task_always_eager``, ``Task.apply``) have no Request: task_prerun/postrun/failure/
retry signals with ``request.is_eager`` capture them (``celery_inline``, also pool-child mode).
Producers get ``task.sent`` from before/after_task_publish (``celery_publish``).

Events are durable before the worker acts on a task's outcome: how they are written (at once,
held for the outcome in a prefork main process, or by ``batch_interval``) is ``celery_batch``'s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from ..logs import get_logger
from ..safety import safe_call, safe_str
from .celery_batch import Batcher
from .celery_fields import MAX_MESSAGE, MAX_TRACEBACK, exc_parts, queue_of
from .celery_inline import InlineCapture
from .celery_publish import PublishCapture, publish_record, routing_record

if TYPE_CHECKING:
    from .base import EventSink
    from .celery_store import RequestStore

log = get_logger(__name__)

WRAPPED = ("on_accepted", "on_success", "on_failure", "on_retry")
_MARK_STARTED = "_z4j_started"
_MARK_DONE = "_z4j_done"
_RUNTIME = "_z4j_runtime"
MAX_ATTEMPTS_TRACKED = 10_000

class CeleryCapture:
    """Owns every hook the adapter installs; ``install``/``uninstall`` are idempotent."""

    def __init__(self, app: Any, sink: EventSink, store: RequestStore | None, *, batch_interval: float,
                 capture_sent: bool | None, hostname: str | None) -> None:
        self.app = app
        self.sink = sink
        self.store = store
        self.capture_sent = capture_sent
        self.hostname = hostname
        self.pool_name: str | None = None
        self.in_worker = False
        self.child_mode = False
        self.batcher = Batcher(sink, batch_interval if self._is_main_process() else 0.0)
        self._patched: list[tuple[type, str, Any]] = []
        self._strategy_patch: tuple[Any, Any] | None = None
        self._receivers: list[tuple[Any, str]] = []  # (signal, dispatch_uid)
        self._uid = os.urandom(8).hex()
        self.inline = InlineCapture(sink)
        self.publish = PublishCapture(self.batcher, store, self._sent_enabled)
        self._online_sent = False
        self.installed = False
        self.seen_queues: dict[str, None] = {}
        self._received_at: dict[str, float] = {}

    @staticmethod
    def _is_main_process() -> bool:
        try:
            from billiard.process import current_process

            return current_process().name == "MainProcess"
        except Exception:  # noqa: BLE001
            return True

    # -- install / uninstall --------------------------------------------------------------------
    def install(self) -> None:
        if self.installed:
            return
        from celery import signals

        self.installed = True
        # A prefork pool child where the parent never installed the agent: Request callbacks run
        # in the parent, so capture with the child-side task signals instead (documented mode).
        self.child_mode = not self._is_main_process()
        worker = _find_worker_in_stack()
        if worker is not None:
            self._learn_worker(worker)
        self.inline.child_mode = self.child_mode
        if self.child_mode:
            self.in_worker = True
        else:
            self._patch_requests()
            self._connect(signals.task_received, self._on_received)
            self._connect(signals.task_revoked, self._on_revoked)
            self._connect(signals.worker_init, self._on_worker_init)
            self._connect(signals.worker_ready, self._on_worker_ready)
            self._connect(signals.worker_shutdown, self._on_worker_shutdown)
        self._connect(signals.task_prerun, self.inline.on_prerun)
        self._connect(signals.task_postrun, self.inline.on_postrun)
        self._connect(signals.task_failure, self.inline.on_task_failure)
        self._connect(signals.task_retry, self.inline.on_task_retry)
        self._connect(signals.before_task_publish, self.publish.on_before_publish)
        self._connect(signals.after_task_publish, self.publish.on_after_publish)
        if worker is not None and self._worker_running(worker):
            # Installed from worker_ready: the worker is already up, announce it now.
            self._emit_online()
        log.info("celery.attached", hostname=self.hostname, child_mode=self.child_mode,
                 batching=self.batcher.batching, holding=self.batcher.holding)

    def uninstall(self) -> None:
        if not self.installed:
            return
        self.installed = False
        for signal, uid in self._receivers:
            # Connected with a dispatch_uid, so only that uid finds the receiver again.
            safe_call(signal.disconnect, dispatch_uid=uid, site="celery.disconnect")
        self._receivers.clear()
        for cls, name, original in reversed(self._patched):
            if original is None:
                safe_call(delattr, cls, name, site="celery.unpatch")
            else:
                setattr(cls, name, original)
        self._patched.clear()
        if self._strategy_patch is not None:
            module, original = self._strategy_patch
            module.create_request_cls = original
            self._strategy_patch = None
        self.batcher.close()

    def _connect(self, signal: Any, receiver: Callable) -> None:
        # Unique per capture: id(self) can be reused by a later capture, whose receivers an
        # earlier capture's uninstall would then remove (or whose connect Celery would skip).
        uid = f"z4j-celery-{receiver.__name__}-{self._uid}"
        signal.connect(receiver, weak=False, dispatch_uid=uid)
        self._receivers.append((signal, uid))

    def _patch_requests(self) -> None:
        from celery.worker import request as request_module
        from celery.worker import strategy

        seen: set[type] = set()
        stack = [request_module.Request]
        while stack:
            cls = stack.pop()
            if cls in seen:
                continue
            seen.add(cls)
            self._patch_class(cls)
            stack.extend(cls.__subclasses__())
        original = strategy.create_request_cls

        def create_request_cls(*args: Any, **kwargs: Any) -> Any:
            cls = original(*args, **kwargs)
            if self.installed:
                safe_call(self._patch_class, cls, site="celery.patch_request_cls")
            return cls

        create_request_cls.__wrapped__ = original  # type: ignore[attr-defined]
        strategy.create_request_cls = create_request_cls
        self._strategy_patch = (strategy, original)

    def _patch_class(self, cls: type) -> None:
        hooks = {"on_accepted": self._wrap_accepted, "on_success": self._wrap_success,
                 "on_failure": self._wrap_failure, "on_retry": self._wrap_retry}
        for name in WRAPPED:
            original = cls.__dict__.get(name)
            if original is None or getattr(original, "__z4j_original__", None) is not None:
                continue
            wrapper = hooks[name](original)
            wrapper.__z4j_original__ = original  # type: ignore[attr-defined]
            wrapper.__name__ = name
            wrapper.__qualname__ = f"{cls.__qualname__}.{name}"
            wrapper.__doc__ = original.__doc__
            setattr(cls, name, wrapper)
            self._patched.append((cls, name, original))

    # The wrappers call Celery first and report after: Celery's behaviour is never changed and
    # our code runs inside safe_call.
    def _wrap_accepted(self, original: Callable) -> Callable:
        def on_accepted(req: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(req, *args, **kwargs)
            safe_call(self._started, req, site="celery.on_accepted")
            return result
        return on_accepted

    def _wrap_success(self, original: Callable) -> Callable:
        def on_success(req: Any, failed__retval__runtime: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                # Celery hands the runtime only to on_success; keep it for on_failure/on_retry.
                req.__dict__[_RUNTIME] = failed__retval__runtime[2]
            except Exception:  # noqa: BLE001, S110
                pass
            # Durable before Celery acts on the outcome (it acks an acks_late task in there).
            safe_call(self._succeeded, req, failed__retval__runtime, site="celery.on_success")
            return original(req, failed__retval__runtime, *args, **kwargs)
        return on_success

    def _wrap_failure(self, original: Callable) -> Callable:
        def on_failure(req: Any, exc_info: Any, *args: Any, **kwargs: Any) -> Any:
            safe_call(self.batcher.flush_held, site="celery.on_failure")
            try:
                return original(req, exc_info, *args, **kwargs)
            finally:
                safe_call(self._failed, req, exc_info, site="celery.on_failure")
        return on_failure

    def _wrap_retry(self, original: Callable) -> Callable:
        def on_retry(req: Any, exc_info: Any, *args: Any, **kwargs: Any) -> Any:
            safe_call(self.batcher.flush_held, site="celery.on_retry")
            result = original(req, exc_info, *args, **kwargs)
            safe_call(self._retried, req, exc_info, site="celery.on_retry")
            return result
        return on_retry

    # -- worker main process: requests ------------------------------------------------------------
    def _base(self, req: Any) -> dict[str, Any]:
        return {"task_name": req.name, "queue": queue_of(req.delivery_info), "worker": req.hostname}

    def _on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        safe_call(self._received, request, site="celery.task_received")

    def _received(self, req: Any) -> None:
        if req is None:
            return
        if self.hostname is None:
            self.hostname = req.hostname
        headers = req.request_dict
        delivery = req.delivery_info
        data = self._base(req)
        queue = data["queue"]
        if queue and queue not in self.seen_queues and len(self.seen_queues) < 50:
            self.seen_queues[queue] = None
        data["args"] = req.args
        data["kwargs"] = req.kwargs
        data["parent_task_id"] = req.parent_id
        data["root_task_id"] = req.root_id
        retries = headers.get("retries")
        if retries:
            data["retries"] = retries
        eta = req.eta
        if eta is not None:
            data["eta"] = eta.isoformat()
        prio = delivery.get("priority")
        if prio is not None:
            data["broker_priority"] = prio
        now = time.time()
        self.batcher.early(EventKind.TASK_RECEIVED, req.id, data, now)
        seen = self._received_at
        seen[req.id] = now
        if len(seen) > MAX_ATTEMPTS_TRACKED:
            seen.pop(next(iter(seen)), None)
        if self.store is not None:
            safe_call(self._remember, req, headers, delivery, prio, site="celery.store.put")

    def _remember(self, req: Any, headers: dict, delivery: dict, prio: Any) -> None:
        """Keep what retry_task needs: the raw message body when there is one (no re-encoding)."""
        body = req.body
        exchange, routing_key = delivery.get("exchange"), delivery.get("routing_key")
        if isinstance(body, (bytes, str)) and not req._decoded:
            meta = routing_record(req.type, headers, exchange=exchange, routing_key=routing_key, priority=prio)
            meta["content_type"], meta["content_encoding"] = req.content_type, req.content_encoding
            self.store.put_message(req.id, meta, body)
            return
        embed = body[2] if isinstance(body, (tuple, list)) and len(body) == 3 else None
        self.store.put(req.id, publish_record(req.type, req.args, req.kwargs, headers, exchange=exchange,
                                              routing_key=routing_key, priority=prio, embed=embed))

    def _started(self, req: Any) -> None:
        d = req.__dict__
        if d.get(_MARK_STARTED):
            return
        d[_MARK_STARTED] = True
        data = self._base(req)
        data["pid"] = req.worker_pid
        self.batcher.early(EventKind.TASK_STARTED, req.id, data, req.time_start)

    def _succeeded(self, req: Any, outcome: Any) -> None:
        failed, retval, runtime = outcome
        if failed:
            return  # Celery routed it to on_failure, which reports it
        d = req.__dict__
        if d.get(_MARK_DONE):
            return
        d[_MARK_DONE] = True
        data = self._base(req)
        data["result"] = retval
        if isinstance(runtime, (int, float)):
            data["runtime_ms"] = round(runtime * 1000.0, 3)
        self.batcher.event(EventKind.TASK_SUCCEEDED, req.id, data, self._ended_at(req, runtime))

    def _retried(self, req: Any, exc_info: Any) -> None:
        d = req.__dict__
        if d.get(_MARK_DONE):
            return
        d[_MARK_DONE] = True
        from celery.exceptions import Retry

        exc = getattr(exc_info, "exception", None)
        if not isinstance(exc, Retry) and isinstance(getattr(exc, "exc", None), BaseException):
            exc = exc.exc  # ExceptionWithTraceback
        data = self._base(req)
        data["reason"] = safe_str(exc)[:MAX_MESSAGE] if exc is not None else "retry"
        data["retry_count"] = int(req.request_dict.get("retries") or 0) + 1
        orig = getattr(exc, "exc", None)
        if isinstance(orig, BaseException):
            data["exception"], data["exception_message"] = exc_parts(orig)
        at = self._ended_at(req, req.__dict__.get(_RUNTIME))
        later = self._received_at.get(req.id)
        if later is not None and req.time_start and later > req.time_start:
            # The next attempt was already received (a countdown=0 retry can finish first in
            # another pool process); the retry was decided before that message existed.
            at = min(at, later - 0.001)
        self.batcher.event(EventKind.TASK_RETRIED, req.id, data, at)

    def _failed(self, req: Any, exc_info: Any) -> None:
        from celery.exceptions import Ignore, Reject, Retry, Terminated, WorkerLostError

        d = req.__dict__
        if d.get(_MARK_DONE):
            return
        exc = getattr(exc_info, "exception", None)
        inner = getattr(exc, "exc", None)
        if type(exc).__name__ == "ExceptionWithTraceback" and isinstance(inner, BaseException):
            exc = inner
        if isinstance(exc, (Terminated, Retry, Ignore)):
            return  # revoked (task_revoked reports it), on_retry reports it, or the task opted out
        if isinstance(exc, (SystemExit, KeyboardInterrupt)) and (req._already_cancelled or req._already_revoked):
            return
        task = req.task
        kind = EventKind.TASK_FAILED
        data = self._base(req)
        if isinstance(exc, Reject) and exc.requeue:
            kind = EventKind.TASK_REJECTED
            data["requeue"] = True
        elif isinstance(exc, (WorkerLostError, SystemExit, KeyboardInterrupt)):
            if getattr(task, "acks_late", False) and getattr(task, "reject_on_worker_lost", False):
                kind = EventKind.TASK_REJECTED
                data["requeue"] = True
        d[_MARK_DONE] = True
        data["exception"], data["exception_message"] = exc_parts(exc)
        tb = getattr(exc_info, "traceback", None)
        if isinstance(tb, str) and tb:
            data["traceback"] = tb[-MAX_TRACEBACK:] if len(tb) > MAX_TRACEBACK else tb
        at = self._ended_at(req, req.__dict__.get(_RUNTIME))
        if req.time_start:
            data["runtime_ms"] = round((at - req.time_start) * 1000.0, 3)
        self.batcher.event(kind, req.id, data, at)

    @staticmethod
    def _ended_at(req: Any, runtime: Any) -> float:
        """time_start + runtime: when the pool process finished (callbacks may run later)."""
        start = req.time_start
        now = time.time()
        if start and isinstance(runtime, (int, float)) and runtime >= 0:
            return min(start + runtime, now)
        return now

    def _on_revoked(self, sender: Any = None, request: Any = None, terminated: Any = None, signum: Any = None,
                    expired: Any = None, **_: Any) -> None:
        safe_call(self._revoked, sender, request, terminated, signum, expired, site="celery.task_revoked")

    def _revoked(self, task: Any, request: Any, terminated: Any, signum: Any, expired: Any) -> None:
        task_id = getattr(request, "id", None)
        if not task_id:
            return
        data = {
            "task_name": getattr(request, "task", None) or getattr(task, "name", None),
            "queue": queue_of(getattr(request, "delivery_info", None)),
            "worker": getattr(request, "hostname", None) or self.hostname,
            "terminated": bool(terminated),
            "signum": None if signum is None else str(signum),
            "expired": bool(expired),
        }
        self.batcher.event(EventKind.TASK_REVOKED, task_id, data)

    # -- worker lifecycle -----------------------------------------------------------------------
    def _learn_worker(self, worker: Any) -> None:
        hostname = getattr(worker, "hostname", None)
        if isinstance(hostname, str) and hostname:
            self.hostname = hostname
        pool = getattr(worker, "pool_cls", None)
        if pool is None and getattr(worker, "controller", None) is not None:
            pool = getattr(worker.controller, "pool_cls", None)
        if pool is not None:
            self.pool_name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__qualname__}"
        self.in_worker = True
        if not self.child_mode:
            self.batcher.enable()
            if "prefork" in (self.pool_name or "").lower():  # tasks run in pool children: see celery_batch
                self.batcher.hold_until_outcome()

    @staticmethod
    def _worker_running(worker: Any) -> bool:
        # worker_init fires before the blueprint exists; by worker_ready the consumer is built.
        if type(worker).__name__ == "Consumer" or hasattr(worker, "connection"):
            return True
        return getattr(worker, "blueprint", None) is not None and getattr(worker, "consumer", None) is not None

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        safe_call(self._learn_worker, sender, site="celery.worker_init")

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        safe_call(self._learn_worker, sender, site="celery.worker_ready")
        safe_call(self._emit_online, site="celery.worker_ready")

    def _emit_online(self) -> None:
        if self._online_sent:
            return
        self._online_sent = True
        data = {"worker": self.hostname, "pid": os.getpid(), "pool": self.pool_name}
        self.batcher.event(EventKind.WORKER_ONLINE, "", data)
        self.batcher.flush()

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        data = {"worker": getattr(sender, "hostname", None) or self.hostname, "pid": os.getpid()}
        safe_call(self.batcher.event, EventKind.WORKER_OFFLINE, "", data, site="celery.worker_shutdown")
        safe_call(self.batcher.flush, site="celery.worker_shutdown")

    def _sent_enabled(self) -> bool:
        if self.capture_sent is not None:
            return self.capture_sent
        return not self.in_worker


def _find_worker_in_stack() -> Any | None:
    """The WorkController / Consumer whose code is calling us (install from worker_init/ready)."""
    try:
        from celery.worker.consumer.consumer import Consumer
        from celery.worker.worker import WorkController
    except Exception:  # noqa: BLE001
        return None
    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 80:
        candidate = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(candidate, (WorkController, Consumer)):
            return candidate
        for name in ("sender", "consumer"):
            value = frame.f_locals.get(name) if name in frame.f_code.co_varnames else None
            if isinstance(value, (WorkController, Consumer)):
                return value
        frame = frame.f_back
        depth += 1
    return None
