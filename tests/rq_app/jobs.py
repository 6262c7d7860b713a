"""Jobs for real ``rq worker`` subprocesses (imported as ``rq_app.jobs`` with tests/ on the path)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def noop() -> None:
    return None


def add(x: int, y: int, **kwargs: object) -> int:
    return x + y


def boom(x: int) -> None:
    raise ValueError(f"boom {x}")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleepy(seconds: float, marker: str) -> str:
    """Writes ``marker`` only if it runs to completion."""
    Path(marker + ".started").write_text("1")
    time.sleep(seconds)
    Path(marker).write_text("done")
    return "slept"


def fail_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return "second attempt ok"
