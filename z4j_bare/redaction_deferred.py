"""A Redactor built after ``install_agent`` returns, so a short script does not wait for it.

Building the redactor (importing ``redaction`` and compiling its patterns) is about a third of
what ``install_agent`` costs. With the built-in patterns it cannot fail, so the agent's I/O
thread builds it before its first connect; the first caller that needs it before then builds it
itself (or waits for the build in progress). Configured extra patterns are checked when the
redactor is built, and a refused pattern must fail ``install_agent``: the agent builds such a
redactor at once (see ``agent.build_runtime``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .redaction import Redactor

_HOT = ("scrub", "scrub_text", "scrub_data", "is_sensitive_key", "contains_secret")


class DeferredRedactor:
    """Stands in for the Redactor ``build()`` returns; every attribute is the built one's."""

    def __init__(self, build: Callable[[], Redactor], *, max_event_bytes: int, max_value_bytes: int) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._real: Redactor | None = None
        # Read by EventSink at construction: known from the configuration, no build needed.
        self.max_event_bytes = max_event_bytes
        self.max_value_bytes = max_value_bytes

    def real(self) -> Redactor:
        real = self._real
        if real is None:
            if self._pid != os.getpid():  # forked mid-build: the copied lock may be held forever
                self._lock, self._pid = threading.Lock(), os.getpid()
            with self._lock:
                if self._real is None:
                    built = self._build()
                    for name in _HOT:  # later calls find them here, not through __getattr__
                        setattr(self, name, getattr(built, name))
                    self._real = built
                real = self._real
        return real

    def warm(self) -> None:
        """Build now (the I/O thread calls this before each connect; built once)."""
        try:
            self.real()
        except Exception:  # noqa: BLE001, S110 - the first real use builds again and reports
            pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_build", "_lock", "_pid", "_real"):
            raise AttributeError(name)
        return getattr(self.real(), name)

    def __repr__(self) -> str:
        return repr(self._real) if self._real is not None else "Redactor(<building>)"
