"""A tiny engine adapter for runtime tests: emits what the test asks, records the commands it runs."""

from __future__ import annotations

import threading
import time
from typing import Any

from z4j_bare.engines.base import CommandFailed, CommandRequest, EngineAdapter, EventSink


class RecordingEngine(EngineAdapter):
    safe_retry_by_reference = True

    def __init__(self, name: str = "celery", caps: tuple[str, ...] = ("retry_task", "cancel_task", "purge_queue", "submit_task"),
                 depth: int | None = 3, action_delay: float = 0.0) -> None:
        self.name = name  # type: ignore[misc]
        self._caps = frozenset(caps)
        self.sink: EventSink | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.depth = depth
        self.action_delay = action_delay
        self.attached = threading.Event()

    def capabilities(self) -> frozenset[str]:
        return self._caps

    def attach(self, sink: EventSink) -> None:
        self.sink = sink
        self.attached.set()

    def health(self) -> dict[str, Any]:
        return {"broker_type": "memory", "broker_connected": True, "queue_depths": {"default": self.depth or 0}}

    def queue_depth(self, queue: str) -> int | None:
        return self.depth

    def emit_task(self, task_id: str, *kinds: str, **data: Any) -> None:
        for kind in kinds:
            assert self.sink is not None
            self.sink.emit(kind, task_id, {"task_name": "tests.work", "queue": "default", "worker": "w1", **data})

    def _record(self, request: CommandRequest) -> None:
        if self.action_delay:
            time.sleep(self.action_delay)
        self.calls.append((request.action, dict(request.parameters)))

    def retry_task(self, request: CommandRequest) -> dict:
        self._record(request)
        return {"new_task_id": "new-" + request.require("task_id"), "task_name": request.param("task_name")}

    def cancel_task(self, request: CommandRequest) -> dict:
        self._record(request)
        if request.param("task_id") == "finished":
            raise CommandFailed("task already finished; nothing to cancel")
        if request.param("task_id") == "boom":
            raise RuntimeError("adapter bug")
        return {"task_id": request.param("task_id"), "terminated": False}

    def purge_queue(self, request: CommandRequest) -> dict:
        self._record(request)
        return {"purged": self.depth}

    def submit_task(self, request: CommandRequest) -> dict:
        self._record(request)
        return {"task_id": "submitted", "engine": self.name}
