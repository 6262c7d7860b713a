"""Collects adapter health off the I/O thread so a slow broker never delays a heartbeat."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .logs import get_logger

if TYPE_CHECKING:
    from .engines.base import EngineAdapter

log = get_logger(__name__)
MAX_KEYS = 256


def flatten_health(engine: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{"<engine>.<key>": str}``; dicts and lists JSON-encoded (the brain parses queue_depths)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, str):
            text = value
        elif isinstance(value, (dict, list, tuple)):
            text = json.dumps(value, default=str, sort_keys=True)
        else:
            text = str(value)
        out[f"{engine}.{key}"] = text
    return out


class HealthCollector:
    def __init__(self, engines: Mapping[str, EngineAdapter], interval: float = 10.0) -> None:
        self._engines = dict(engines)
        self._interval = max(1.0, float(interval))
        self._snapshot: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="z4j-agent-health", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._snapshot)

    def collect_once(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for name, adapter in self._engines.items():
            started = time.monotonic()
            try:
                merged.update(flatten_health(name, adapter.health() or {}))
            except Exception as exc:  # noqa: BLE001 - a broken probe is reported, not raised
                merged[f"{name}.error"] = "health check failed"
                log.warning("health.failed", engine=name, error_type=type(exc).__name__)
            elapsed = time.monotonic() - started
            if elapsed > 5.0:
                log.warning("health.slow", engine=name, seconds=round(elapsed, 1))
        merged = dict(list(merged.items())[:MAX_KEYS])
        with self._lock:
            self._snapshot = merged
        return merged

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.collect_once()
            self._stop.wait(self._interval)
