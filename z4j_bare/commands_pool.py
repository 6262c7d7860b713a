"""A small pool of daemon worker threads for work the process must never wait for at exit.

``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so a
command still running (a slow broker call, a purge of a long queue) would keep a script alive
after ``stop()`` returned. Once the agent has stopped, a command can no longer report its result
anyway (the brain times it out), so its thread must not hold the process: these are daemons.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .logs import get_logger

log = get_logger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """Up to ``workers`` daemon threads, started on demand, running jobs in submission order."""

    def __init__(self, workers: int, name: str) -> None:
        self._max = max(1, workers)
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._closed = False

    def __repr__(self) -> str:
        return f"DaemonPool(name={self._name!r}, threads={len(self._threads)}/{self._max}, closed={self._closed})"

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; a job whose exception escapes is logged, never raised."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} pool is shut down")
            self._jobs.put((fn, args))
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def shutdown(self) -> None:
        """Drop jobs not yet started and let idle threads end; running jobs finish on their own."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in self._threads:
                self._jobs.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a job's own handling failed; keep the thread
                log.error("pool.job_failed", pool=self._name, error_type=type(exc).__name__)
