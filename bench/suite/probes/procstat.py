"""Process/thread CPU and RSS readings from /proc (Linux), standard library only.

Imported by the probes of both venvs by path (the reference probe runs with ``-P``), so it must
not import anything from either project.
"""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu() -> float:
    """CPU seconds of the whole process (user + system, all threads)."""
    return time.process_time()


def thread_cpu(native_ids: list[int]) -> float:
    """CPU seconds of the given threads (utime + stime of /proc/self/task/<tid>/stat)."""
    total = 0
    for tid in native_ids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


def threads_named(prefix: tuple[str, ...]) -> list[int]:
    import threading

    return [t.native_id for t in threading.enumerate() if t.name.startswith(prefix) and t.native_id]
