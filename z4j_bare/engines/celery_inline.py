"""Tasks run without a worker's Request: eager calls, and pool children in child mode.

Eager calls (``task_always_eager``, ``Task.apply``) run in the caller's thread and never reach a
worker's ``Request``; a prefork pool child whose parent never installed the agent (child mode)
sees its tasks only through the task signals. Both are captured from ``task_prerun`` /
``task_failure`` / ``task_retry`` / ``task_postrun``, which fire in the thread that runs the
task: a per-thread stack pairs each postrun with its prerun (an eager task may call another).
Eager calls write started and the outcome together when the call ends; a pool child says
started at once (a task can run for hours and the child can be killed).
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..events import EventKind
from ..safety import safe_call, safe_str
from .celery_fields import MAX_MESSAGE, MAX_TRACEBACK, exc_parts, queue_of

if TYPE_CHECKING:
    from .base import EventSink


class InlineCapture:
    """The task signals' receivers for one ``CeleryCapture``."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink
        self.child_mode = False  # set by CeleryCapture.install, before any receiver is connected
        self._eager = threading.local()

    def _stack(self) -> list:
        stack = getattr(self._eager, "stack", None)
        if stack is None:
            stack = self._eager.stack = []
        return stack

    def on_prerun(self, sender: Any = None, task_id: Any = None, task: Any = None, args: Any = None,
                   kwargs: Any = None, **_: Any) -> None:
        request = getattr(task, "request", None)
        if not (self.child_mode or getattr(request, "is_eager", False)):
            return
        safe_call(self._prerun, task, request, task_id, args, kwargs, site="celery.task_prerun")

    def _prerun(self, task: Any, request: Any, task_id: Any, args: Any, kwargs: Any) -> None:
        data = {"task_name": task.name, "queue": queue_of(getattr(request, "delivery_info", None)),
                "worker": getattr(request, "hostname", None) if self.child_mode else None,
                "args": args, "kwargs": kwargs, "pid": os.getpid()}
        if request.parent_id:
            data["parent_task_id"] = request.parent_id
        if request.root_id:
            data["root_task_id"] = request.root_id
        entry = [task_id, data, time.time(), None]
        if self.child_mode:
            # Pool child: a task can run for hours and the child can be killed; say it now.
            self.sink.emit(EventKind.TASK_STARTED, task_id, data, entry[2])
            entry[1] = None
        self._stack().append(entry)

    def _top(self, task_id: Any) -> list | None:
        stack = getattr(self._eager, "stack", None)
        if stack and stack[-1][0] == task_id:
            return stack[-1]
        return None

    def on_task_failure(self, sender: Any = None, task_id: Any = None, exception: Any = None, einfo: Any = None,
                         **_: Any) -> None:
        entry = self._top(task_id)
        if entry is not None:
            entry[3] = ("failure", exception, getattr(einfo, "traceback", None))

    def on_task_retry(self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        entry = self._top(getattr(request, "id", None))
        if entry is not None:
            entry[3] = ("retry", reason, getattr(request, "retries", 0))

    def on_postrun(self, sender: Any = None, task_id: Any = None, task: Any = None, retval: Any = None,
                    state: Any = None, **_: Any) -> None:
        entry = self._top(task_id)
        if entry is None:
            return
        self._stack().pop()
        safe_call(self._postrun, task, entry, retval, state, site="celery.task_postrun")

    def _postrun(self, task: Any, entry: list, retval: Any, state: Any) -> None:
        task_id, started_data, t0, outcome = entry
        now = time.time()
        base = {"task_name": task.name}
        if started_data is not None:
            base["queue"] = started_data["queue"]
            base["worker"] = started_data["worker"]
        elif self.child_mode:
            request = task.request
            base["queue"] = queue_of(getattr(request, "delivery_info", None))
            base["worker"] = getattr(request, "hostname", None)
        runtime_ms = round((now - t0) * 1000.0, 3)
        if state == "SUCCESS":
            kind = EventKind.TASK_SUCCEEDED
            base["result"] = _result_repr(retval, task)
            base["runtime_ms"] = runtime_ms
        elif state == "RETRY" or (outcome and outcome[0] == "retry"):
            kind = EventKind.TASK_RETRIED
            reason = outcome[1] if outcome else retval
            base["reason"] = safe_str(reason)[:MAX_MESSAGE]
            base["retry_count"] = int((outcome[2] if outcome else 0) or 0) + 1
        elif state == "FAILURE" or (outcome and outcome[0] == "failure"):
            kind = EventKind.TASK_FAILED
            exc = outcome[1] if outcome else retval
            base["exception"], base["exception_message"] = exc_parts(exc if isinstance(exc, BaseException) else None)
            tb = outcome[2] if outcome else None
            if isinstance(tb, str) and tb:
                base["traceback"] = tb[-MAX_TRACEBACK:]
            base["runtime_ms"] = runtime_ms
        else:
            return  # IGNORED / REJECTED: the task chose its own state
        if started_data is None:
            self.sink.emit(kind, task_id, base, now)
        else:
            self.sink.emit_many([(EventKind.TASK_STARTED, task_id, started_data, t0), (kind, task_id, base, now)])


def _result_repr(value: Any, task: Any) -> str:
    from celery.utils.saferepr import saferepr

    maxsize = getattr(task, "resultrepr_maxsize", 1024) or 1024
    return saferepr(value, maxsize)
