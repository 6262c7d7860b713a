"""Dramatiq capture: middleware hooks turned into lifecycle events, in the process that runs them.

Where each event comes from (docs/dramatiq.md has the hook/process/thread table):

* ``task.received``: a worker's consumer thread took the message off its queue
  (``ConsumerThread.handle_message``, patched while a capture is active: Dramatiq has no hook
  for that moment), dated then, and written with the message's next event (``task.started``,
  or its outcome if it never starts) in one append: under a busy worker's GIL every append
  costs far more than its write(), and a take that never leads anywhere (the worker stops and
  gives the message back) is not an event. Producers running the agent report it when they
  enqueue.
* ``task.started``: ``before_process_message`` (this middleware runs last among the
  ``before`` hooks, so a message that ``AgeLimit`` or ``Abortable`` skips is never "started").
* terminal event: decided when the worker thread settles the message with the broker
  (``before_ack`` / ``before_nack``), because only then is it known whether ``Retries``
  re-enqueued it (``task.retried``, seen as an ``after_enqueue`` of the same message id from the
  same thread), failed it (``task.failed``, dead-lettered on nack), or whether it succeeded or
  was skipped. It is durable before the broker hears about it.

Every hook is wrapped: a capture bug is counted and logged, never raised into Dramatiq.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from typing import Any

from ..events import EventKind, occurred_at_text
from ..logs import get_logger
from ..safety import safe_call
from . import dramatiq_store as st
from .base import EventSink

log = get_logger(__name__)

MAX_TRACEBACK = 4096
MAX_MESSAGE = 2048
_STATE = "_z4j_state"
_PENDING = "_z4j_received"  # the task.received of a taken message, written with its next event
_local = threading.local()


def canonical_queue(name: str) -> str:
    return name[:-3] if name.endswith((".DQ", ".XQ")) else name


def exception_parts(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "Exception", ""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = "<unprintable>"
    return type(exc).__name__, message[:MAX_MESSAGE]


def format_traceback(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=30))
    except Exception:  # noqa: BLE001
        return ""
    return text[-MAX_TRACEBACK:]


def failure_reason(exc: BaseException | None) -> str:
    name = type(exc).__name__ if exc is not None else ""
    return {"TimeLimitExceeded": "time_limit", "Abort": "aborted", "Shutdown": "worker_shutdown",
            "ActorNotFound": "actor_not_found", "RateLimitExceeded": "rate_limited"}.get(name, "exception")


class DramatiqCapture:
    """Builds and emits events for one broker in one process. Hooks are called by the middleware."""

    def __init__(self, sink: EventSink, broker: Any, *, store: st.MessageStore | None = None,
                 capture_args: bool = True, capture_results: bool | None = None, worker_side: bool = False,
                 broker_tracks_messages: bool = False) -> None:
        self.sink = sink
        self.broker = broker
        self.store = store
        # Redis keeps every message it holds readable (waiting, taken, delayed, dead-lettered):
        # cancel and reconcile ask it, and retry reads a dead letter from it. The store then only
        # needs failures and retries (a copy for retry by reference if the dead letter is gone):
        # no store write at all for a message that succeeds.
        self.broker_tracks_messages = broker_tracks_messages
        self.capture_args = capture_args
        self.capture_results = capture_results
        self.worker_side = worker_side
        self.worker = f"dramatiq.{os.getpid()}@{socket.gethostname()}"
        self._results = _find_results(broker)

    def __repr__(self) -> str:
        return f"<DramatiqCapture worker={self.worker!r} worker_side={self.worker_side}>"

    # -- event data ------------------------------------------------------------------------------
    def _base(self, message: Any) -> dict[str, Any]:
        return {"task_name": message.actor_name, "queue": canonical_queue(message.queue_name), "worker": self.worker}

    def _remember(self, message: Any, state: str, attempts: int | None = None, **extra: Any) -> None:
        store = self.store
        if store is None:
            return
        body = None
        options = message.options
        if state in (st.TAKEN, st.ENQUEUED) or (self.broker_tracks_messages and state in (st.FAILED, st.RETRYING)):
            body = safe_call(_encode, message, site="dramatiq.store.encode")
        if attempts is None:  # before a run, options count the retries so far (Retries adds one on failure)
            attempts = int(options.get("retries") or 0) + 1
        store.put(message.message_id, queue=canonical_queue(message.queue_name), actor=message.actor_name,
                  state=state, body=body, redis_id=options.get("redis_message_id"), attempts=attempts, **extra)

    # -- hooks ------------------------------------------------------------------------------------
    def taken(self, message: Any) -> None:
        """Consumer thread: the message left the broker for this worker's work queue."""
        options = message.options
        if options.get("eta") is not None or message.queue_name.endswith(".DQ"):
            return  # a delayed copy kept in memory until due; it is "taken" again from its queue
        data = self._base(message)
        if self.capture_args:
            data["args"], data["kwargs"] = list(message.args), dict(message.kwargs)
        _link_fields(data, options)
        if getattr(message, "redelivered", False):
            data["redelivered"] = True
        message.__dict__[_PENDING] = (EventKind.TASK_RECEIVED.value, message.message_id, data, time.time())
        if not self.broker_tracks_messages:
            self._remember(message, st.TAKEN)

    def _emit(self, message: Any, kind: str, data: dict[str, Any], at: float | None) -> None:
        pending = message.__dict__.pop(_PENDING, None)
        if pending is None:
            self.sink.emit(kind, message.message_id, data, at)
        else:
            self.sink.emit_many([pending, (kind, message.message_id, data, at)])

    def started(self, message: Any) -> None:
        now = time.time()
        attempt = int(message.options.get("retries") or 0) + 1
        message.__dict__[_STATE] = {"t0": now, "attempt": attempt}
        _local.current = message
        data = self._base(message)
        data["pid"] = os.getpid()
        data["attempt"] = attempt
        self._emit(message, EventKind.TASK_STARTED.value, data, now)

    def processed(self, message: Any, result: Any, exception: BaseException | None) -> None:
        state = message.__dict__.get(_STATE)
        if state is None:
            return
        state["t1"] = time.time()
        state["result"] = result
        state["exception"] = exception

    def skipped(self, message: Any) -> None:
        state = message.__dict__.setdefault(_STATE, {})
        state["skipped"] = True
        state["t1"] = time.time()
        _local.current = message

    def enqueued(self, message: Any, delay: int | None) -> None:
        current = getattr(_local, "current", None)
        if current is not None and current.message_id == message.message_id:
            state = current.__dict__.get(_STATE)
            if state is not None:  # Retries put this very message back with a delay
                state["retry"] = (delay, message.options.get("retries"), message.options.get("eta"))
            return
        if self.worker_side:
            return  # messages an actor sends, delayed copies moved: their own events follow
        data = self._base(message)
        del data["worker"]
        if self.capture_args:
            data["args"], data["kwargs"] = list(message.args), dict(message.kwargs)
        eta = message.options.get("eta")
        if delay is not None and isinstance(eta, (int, float)):
            data["eta"] = occurred_at_text(eta / 1000.0)
        _link_fields(data, message.options)
        data["status"] = "delayed" if delay is not None else "enqueued"
        sent_at = message.message_timestamp / 1000.0 if message.message_timestamp else None
        self.sink.emit(EventKind.TASK_RECEIVED.value, message.message_id, data, sent_at)
        self._remember(message, st.ENQUEUED)

    def settled(self, message: Any, acked: bool) -> None:
        """before_ack / before_nack: the outcome is final for this attempt; report it."""
        if getattr(_local, "current", None) is message:
            _local.current = None
        state = message.__dict__.pop(_STATE, None)
        if state is None:
            if not acked and message.failed:
                self._failed(message, {}, message._exception, dead_letter=True)  # never ran: unknown actor
            return
        if state.get("skipped"):
            self._skipped(message, state, acked)
            return
        exception = state.get("exception")
        if exception is None and "t1" in state:
            self._succeeded(message, state)
        elif exception is not None and state.get("retry") is not None:
            self._retried(message, state, exception)
        elif exception is not None:
            self._failed(message, state, exception, dead_letter=not acked)

    def worker_booted(self, worker: Any) -> None:
        self.worker_side = True
        queues = sorted(worker.consumer_whitelist or self.broker.get_declared_queues())
        data = {"worker": self.worker, "pid": os.getpid(), "queues": queues,
                "threads": getattr(worker, "worker_threads", None), "broker": type(self.broker).__name__}
        self.sink.emit(EventKind.WORKER_ONLINE.value, "", data)

    def worker_stopping(self, worker: Any) -> None:
        self.sink.emit(EventKind.WORKER_OFFLINE.value, "", {"worker": self.worker, "pid": os.getpid(),
                                                             "reason": "shutdown"})

    def flush(self) -> None:
        if self.store is not None:
            safe_call(self.store.flush, site="dramatiq.store.flush")

    # -- terminal events ----------------------------------------------------------------------------
    def _runtime(self, state: dict[str, Any], data: dict[str, Any]) -> float:
        t1 = state.get("t1") or time.time()
        if "t0" in state:
            data["runtime_ms"] = max(0, round((t1 - state["t0"]) * 1000))
        return t1

    def _succeeded(self, message: Any, state: dict[str, Any]) -> None:
        data = self._base(message)
        at = self._runtime(state, data)
        if self._wants_result(message):
            data["result"] = state.get("result")
        self._emit(message, EventKind.TASK_SUCCEEDED.value, data, at)
        if not self.broker_tracks_messages:
            self._remember(message, st.SUCCEEDED, state.get("attempt"))

    def _retried(self, message: Any, state: dict[str, Any], exception: BaseException) -> None:
        delay, retries, eta = state["retry"]
        data = self._base(message)
        at = self._runtime(state, data)
        data["retry_count"] = int(retries or state.get("attempt") or 1)  # the retry that follows
        if delay is not None:
            data["delay_ms"] = int(delay)
        if isinstance(eta, (int, float)):
            data["eta"] = occurred_at_text(eta / 1000.0)
        data["exception"], data["exception_message"] = exception_parts(exception)
        data["reason"] = failure_reason(exception)
        self._emit(message, EventKind.TASK_RETRIED.value, data, at)
        self._remember(message, st.RETRYING, state.get("attempt"), error=_summary(exception))

    def _failed(self, message: Any, state: dict[str, Any], exception: BaseException | None, *, dead_letter: bool) -> None:
        data = self._base(message)
        at = self._runtime(state, data)
        data["exception"], data["exception_message"] = exception_parts(exception)
        if exception is not None:
            data["traceback"] = format_traceback(exception)
        data["reason"] = failure_reason(exception)
        data["dead_lettered"] = dead_letter
        retried = int(state.get("attempt") or 1) - 1  # Retries already counted this attempt in options
        if retried:
            data["retry_count"] = retried
        self._emit(message, EventKind.TASK_FAILED.value, data, at)
        self._remember(message, st.FAILED, state.get("attempt", 1), error=_summary(exception))

    def _skipped(self, message: Any, state: dict[str, Any], acked: bool) -> None:
        data = self._base(message)
        at = self._runtime(state, data)
        exception = message._exception
        if message.failed:
            # AgeLimit (or another middleware) failed it before it ran: dead-lettered, a failure.
            text = exception_parts(exception)[1] if exception is not None else "skipped and failed"
            data["exception"], data["exception_message"] = "SkipMessage", text
            data["reason"] = "age_limit" if "age limit" in text.lower() else "skipped_failed"
            data["dead_lettered"] = not acked
            self._emit(message, EventKind.TASK_FAILED.value, data, at)
            self._remember(message, st.FAILED, state.get("attempt", 1), error=f"SkipMessage: {text}")
            return
        data["reason"] = "skipped"  # e.g. dramatiq-abort's cancel: acked, never run
        data["terminated"] = False
        self._emit(message, EventKind.TASK_REVOKED.value, data, at)
        if not self.broker_tracks_messages:
            self._remember(message, st.SKIPPED, state.get("attempt", 1))

    def _wants_result(self, message: Any) -> bool:
        if self.capture_results is not None:
            return self.capture_results
        results = self._results
        if results is None:
            return False
        try:
            store, _ = results._lookup_options(self.broker, message)
        except Exception:  # noqa: BLE001 - a Results version without the helper: its default
            store = getattr(results, "store_results", False)
        return bool(store)


def _link_fields(data: dict[str, Any], options: dict[str, Any]) -> None:
    retries = options.get("retries")
    if retries:
        data["retry_count"] = int(retries)
    origin = options.get("z4j_retry_of")
    if isinstance(origin, str) and origin:
        data["retry_of"] = origin


def _summary(exception: BaseException | None) -> str | None:
    if exception is None:
        return None
    name, text = exception_parts(exception)
    return f"{name}: {text}" if text else name


def _encode(message: Any) -> bytes:
    inner = getattr(message, "_message", message)  # MessageProxy -> Message
    return inner.encode()


def _find_results(broker: Any) -> Any | None:
    try:
        from dramatiq.results import Results
    except Exception:  # noqa: BLE001
        return None
    for middleware in getattr(broker, "middleware", ()):
        if isinstance(middleware, Results):
            return middleware
    return None


# -- the consumer-side patch ------------------------------------------------------------------------
_patch_lock = threading.Lock()
_patched: list[tuple[Any, str, Any]] = []
_active = 0


def _capture_of(broker: Any) -> DramatiqCapture | None:
    for middleware in getattr(broker, "middleware", ()):
        capture = getattr(middleware, "z4j_capture", None)
        if capture is not None:
            return capture
    return None


def _wrap_handle_message(orig: Any) -> Any:
    def handle_message(self: Any, message: Any) -> Any:
        capture = _capture_of(self.broker)
        if capture is not None:
            safe_call(capture.taken, message, site="dramatiq.taken")
        return orig(self, message)

    handle_message.__wrapped__ = orig  # type: ignore[attr-defined]
    return handle_message


def install_consumer_hook() -> None:
    """Patch ``ConsumerThread.handle_message`` once per process (reference-counted)."""
    global _active
    from dramatiq import worker

    # dramatiq 2 names it ConsumerThread (keeping the old alias); dramatiq 1.x only _ConsumerThread.
    ConsumerThread = getattr(worker, "ConsumerThread", None) or worker._ConsumerThread
    with _patch_lock:
        _active += 1
        if _patched:
            return
        orig = ConsumerThread.__dict__["handle_message"]
        ConsumerThread.handle_message = _wrap_handle_message(orig)
        _patched.append((ConsumerThread, "handle_message", orig))


def uninstall_consumer_hook() -> None:
    global _active
    with _patch_lock:
        _active = max(0, _active - 1)
        if _active:
            return
        while _patched:
            owner, attr, orig = _patched.pop()
            setattr(owner, attr, orig)
