"""Keep fork() from copying a lock that one of the agent's threads holds mid-I/O.

Celery's prefork pool forks children from the worker main process, where the agent's health
thread talks to the broker (queue depths, worker details) every heartbeat, starting at the very
moment the pool forks its first children. kombu's after-fork cleanup in each child disconnects
every redis channel's connection pool, taking that pool's lock: if an agent thread held it at the
moment of fork, the child inherits it locked and hangs forever. Broker I/O done by the agent's
threads runs inside ``no_fork_during()``; an at-fork hook takes the same lock, so a fork waits
for that I/O (bounded by its timeouts) instead of copying its locks half-held.

Command handlers are deliberately not guarded: a broadcast such as pool_grow waits for this
very worker's reply, which comes only after the worker forks; guarding it would stall both
until the broadcast timed out and then report a restart that did happen as failed.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.RLock()


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # the child has only the forking thread; start clean


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


@contextmanager
def no_fork_during() -> Iterator[None]:
    with _lock:
        yield


def fork_safe(fn: F) -> F:
    """Decorator form of ``no_fork_during`` for methods that do broker I/O from agent threads."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
