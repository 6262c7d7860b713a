"""The middleware ``DramatiqEngineAdapter`` adds to your broker, and what it does in each process.

* **dramatiq CLI worker process**: captures into the command's shared buffer (``dramatiq_family``)
  as a non-owner writer, from the moment the worker boots. Never connects to the brain. The
  first worker to boot asks the dramatiq CLI (``forks``) to start the agent process.
* **agent process** (and any process where ``install_agent`` attached the adapter): captures with
  the runtime's sink; in a process that runs no worker that means producer-side ``task.received``
  for messages it sends.
* anywhere else without an agent: does nothing.

Every hook is a safety boundary: errors are counted and logged, never raised into Dramatiq.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dramatiq.middleware import Middleware

from ..logs import get_logger
from ..safety import safe_call
from . import dramatiq_family as family
from .dramatiq_capture import (
    DramatiqCapture,
    install_consumer_hook,
    uninstall_consumer_hook,
)
from .dramatiq_store import MessageStore

if TYPE_CHECKING:
    from .base import EventSink
    from .dramatiq_support import DramatiqAdapterView

log = get_logger(__name__)


class Z4jMiddleware(Middleware):
    """Routes Dramatiq hooks to this process's ``DramatiqCapture`` (if any)."""

    def __init__(self, adapter: DramatiqAdapterView) -> None:
        self.adapter = adapter
        self.z4j_capture: DramatiqCapture | None = None
        self._lock = threading.Lock()
        self._family_tried = False
        self._family_error: str | None = None
        self._hooked = False

    def __repr__(self) -> str:
        return f"<Z4jMiddleware capture={self.z4j_capture!r}>"

    # -- which capture runs in this process -----------------------------------------------------
    def use_sink(self, sink: EventSink | None, store: MessageStore | None) -> None:
        """Called by the adapter's attach (sink) and detach (None)."""
        with self._lock:
            if family.process_role() == family.WORKER:
                if sink is not None:
                    log.warning("dramatiq.install_in_worker_ignored",
                                fix="under the dramatiq CLI do not call install_agent in worker processes; "
                                    "the z4j agent process started by dramatiq holds the brain session")
                return
            self._swap(sink, store, worker_side=False)

    def _swap(self, sink: EventSink | None, store: MessageStore | None, *, worker_side: bool) -> None:
        old = self.z4j_capture
        if old is not None:
            old.flush()
        if sink is None:
            self.z4j_capture = None
            if self._hooked:
                self._hooked = False
                uninstall_consumer_hook()
            return
        adapter = self.adapter
        self.z4j_capture = DramatiqCapture(sink, adapter.broker, store=store, capture_args=adapter.capture_args,
                                           capture_results=adapter.capture_results, worker_side=worker_side,
                                           broker_tracks_messages=adapter.ops.kind == "redis")
        if not self._hooked:
            self._hooked = True
            install_consumer_hook()

    def _ensure_family(self) -> bool:
        """In a CLI worker process: open the shared buffer once. False if capture is off here."""
        if self.z4j_capture is not None:
            return True
        if family.process_role() != family.WORKER:
            return False
        with self._lock:
            if self._family_tried:
                return self.z4j_capture is not None
            self._family_tried = True
            if _disabled():
                return False
            try:
                config = family.resolve_config()
                sink = family.open_writer_sink(config, self.adapter.name)
            except Exception as exc:  # noqa: BLE001 - a monitoring problem never stops the worker
                from ..config import ConfigError

                self._family_error = f"{type(exc).__name__}: {exc}"
                fix = ("set the Z4J_* variables (brain_url, token, hmac_secret, project_id) for the dramatiq "
                       "command, or Z4J_DISABLED=1" if isinstance(exc, ConfigError) else
                       "set Z4J_HOME to a persistent directory this user can write")
                log.error("dramatiq.capture_off", error=self._family_error, fix=fix)
                return False
            store = self.adapter.open_store(sink) if self.adapter.remember_messages else None
            self._swap(sink, store, worker_side=True)
            self.adapter.family_sink = sink
            return True

    # -- dramatiq hooks ---------------------------------------------------------------------------
    @property
    def forks(self) -> list:
        return safe_call(self._forks, site="dramatiq.forks", default=[]) or []

    def _forks(self) -> list:
        if not self._ensure_family():
            return []
        entry = family.agent_entry()
        if entry is None:
            log.error("dramatiq.no_agent_process", fix="import DramatiqEngineAdapter from z4j_dramatiq (the "
                      "package registers the agent process); events wait in the buffer meanwhile")
            return []
        return [entry]

    def after_process_boot(self, broker: Any) -> None:
        safe_call(self._ensure_family, site="dramatiq.process_boot")

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        safe_call(self._ensure_family, site="dramatiq.worker_boot")

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.worker_booted, worker, site="dramatiq.worker_boot")

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.worker_stopping, worker, site="dramatiq.worker_shutdown")

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            capture.flush()

    def before_process_message(self, broker: Any, message: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.started, message, site="dramatiq.started")

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.processed, message, result, exception, site="dramatiq.processed")

    def after_skip_message(self, broker: Any, message: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.skipped, message, site="dramatiq.skipped")

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.enqueued, message, delay, site="dramatiq.enqueued")

    def before_ack(self, broker: Any, message: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.settled, message, True, site="dramatiq.settled")

    def before_nack(self, broker: Any, message: Any) -> None:
        capture = self.z4j_capture
        if capture is not None:
            safe_call(capture.settled, message, False, site="dramatiq.settled")


def _disabled() -> bool:
    import os

    return os.environ.get("Z4J_DISABLED", "").strip().lower() in {"1", "true", "yes", "on"}
