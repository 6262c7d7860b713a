"""Is something going to restart this process if it exits? (protocol.md section 6.7)"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on"}
_ENV_SIGNALS = ("KUBERNETES_SERVICE_HOST", "INVOCATION_ID", "NOTIFY_SOCKET", "SUPERVISOR_ENABLED", "SUPERVISOR_PROCESS_NAME")
_CGROUP_MARKERS = ("docker", "kubepods", "containerd", "crio")


def detect_orchestrator(env: Mapping[str, str] | None = None, root: Path = Path("/"), pid: int | None = None) -> str | None:
    """A short description of the orchestrator, or None when a self-exit would just kill the worker."""
    env = os.environ if env is None else env
    explicit = env.get("Z4J_ORCHESTRATED", "").strip().lower()
    if explicit in _FALSE:
        return None
    if (pid if pid is not None else os.getpid()) == 1:
        return "pid 1 (container entrypoint)"
    marker = _filesystem_marker(root)
    signal = next((name for name in _ENV_SIGNALS if env.get(name)), None)
    if explicit in _TRUE:
        signal = signal or "Z4J_ORCHESTRATED"
    if marker and signal:
        return f"{marker} + {signal}"
    return None


def _filesystem_marker(root: Path) -> str | None:
    if (root / ".dockerenv").exists():
        return "/.dockerenv"
    if (root / "etc/z4j-orchestrated").exists():
        return "/etc/z4j-orchestrated"
    try:
        cgroup = (root / "proc/1/cgroup").read_text(errors="replace")
    except OSError:
        return None
    return next((f"cgroup:{m}" for m in _CGROUP_MARKERS if m in cgroup), None)
