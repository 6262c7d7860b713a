"""Channels of their own on the agent's session: how a feature (the schedule channel) plugs in.

A channel is an object with four methods, registered before the runtime starts::

    emit = runtime.add_frame_handler(handler)

* ``hello_fields() -> Mapping``: merged into every ``hello`` (and, on long-poll, into the
  runtime-features header): list fields (``schedulers``, ``runtime_features``) are extended,
  ``capabilities`` gains the channel's keys, other keys are added only if the core hello lacks
  them. Called on the I/O thread at each handshake, so it may change between sessions.
* ``handles(frame) -> bool`` and ``handle(frame)``: every verified inbound frame other than the
  runtime's own (``event_batch_ack``, ``error``) is offered to the channels in registration
  order; the first that ``handles`` it gets ``handle(frame)``, the rest go to the command
  channel. The frame is passed whole, not just its type, because a channel's traffic may
  arrive as ``command`` frames told apart by ``payload.action``. Both run on the I/O thread:
  return at once (hand slow work to a thread of your own). An exception is logged and the frame
  dropped; it never ends the session.
* ``session_changed(session)``: called with the new session's ``SessionInfo`` after each
  handshake, and with ``None`` when the session ends (its frames in flight will be sent again
  in the next session, except those the channel keeps itself: see ``settled`` below).

Optional members, used when present:

* ``executes(action) -> bool`` and ``execute(action, parameters, target) -> dict``: commands
  the channel carries out through the command channel, which keeps what every command needs
  (the ack at once, dedupe, the deadline, a redacted ``command_result``). ``execute`` runs on
  a command worker; it returns the result or raises ``engines.base.CommandFailed``. A result
  the channel redacted itself is returned as ``engines.base.Redacted`` (sent as it is).
* ``start()`` / ``stop()``: called by ``runtime.start()`` and, once the session is over and the
  command workers are shut down, by ``runtime.stop()`` (threads, signal receivers, files).
* ``health_fields() -> Mapping``: merged into ``runtime.health()`` (keys the runtime has are
  never replaced).

``emit(frame_type, frame_id, payload=None, *, row_kind=None, events=None, settled=None,
resend_after=None)`` (returned by ``add_frame_handler``, callable from any thread) sends a
signed frame on the same reliable path as command acks and results (``controls.ControlFrames``):
one FIFO queue ahead of the event backlog, so a frame emitted before another is sent before it.
By default the frame is durable first (a buffer row), deleted only once delivered, and sent
again after a reconnect; ``row_kind`` names the buffer row's kind. ``events`` carries an
``event_batch``'s events as canonical JSON texts. A channel whose frames must be durable in
its own store (written in the same transaction as its own state) passes ``settled``: no buffer
row; ``settled(delivered)`` comes with the brain's receipt; the frame lives in the session it
was emitted in (the next session forgets it without a call back). ``resend_after`` shortens
the wait for a receipt before the frame goes again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .logs import get_logger

if TYPE_CHECKING:
    from .protocol import Frame

log = get_logger(__name__)

#: ``emit(frame_type, frame_id, payload, *, row_kind=None)``
Emit = Callable[..., None]
_LIST_FIELDS = ("schedulers", "runtime_features")


@runtime_checkable
class FrameHandler(Protocol):
    def hello_fields(self) -> Mapping[str, Any]: ...

    def handles(self, frame: Frame) -> bool: ...

    def handle(self, frame: Frame) -> None: ...

    def session_changed(self, session: Any) -> None: ...


def check_handler(handler: Any) -> None:
    missing = [m for m in ("hello_fields", "handles", "handle", "session_changed") if not callable(getattr(handler, m, None))]
    if missing:
        raise TypeError(f"{type(handler).__name__} is not a frame handler: it lacks {', '.join(missing)} "
                        "(see z4j_bare.channels)")


def merge_hello(base: dict[str, Any], handlers: Iterable[FrameHandler]) -> dict[str, Any]:
    """``base`` with every handler's hello fields merged in (base keys are never replaced)."""
    hello = dict(base)
    for handler in handlers:
        try:
            fields = dict(handler.hello_fields() or {})
        except Exception as exc:  # noqa: BLE001 - a broken channel must not stop the handshake
            log.error("channels.hello_fields_failed", handler=type(handler).__name__, error_type=type(exc).__name__)
            continue
        for key, value in fields.items():
            if key in _LIST_FIELDS and isinstance(value, (list, tuple)):
                current = list(hello.get(key) or [])
                hello[key] = current + [v for v in value if v not in current]
            elif key == "capabilities" and isinstance(value, Mapping):
                caps = dict(hello.get("capabilities") or {})
                for name, tokens in value.items():
                    if name in caps:
                        log.warning("channels.capabilities_clash", handler=type(handler).__name__, name=name)
                        continue
                    caps[name] = tokens
                hello["capabilities"] = caps
            elif key not in hello:
                hello[key] = value
            else:
                log.warning("channels.hello_field_refused", handler=type(handler).__name__, field=key)
    return hello


def offer(handlers: Iterable[FrameHandler], frame: Frame) -> bool:
    """Give ``frame`` to the first handler that takes it; True if one did."""
    for handler in handlers:
        try:
            if not handler.handles(frame):
                continue
        except Exception as exc:  # noqa: BLE001 - a channel's bug costs its own frames, not the session
            _failed("handles", handler, frame, exc)
            continue
        try:
            handler.handle(frame)
        except Exception as exc:  # noqa: BLE001
            _failed("handle", handler, frame, exc)
        return True
    return False


def _failed(method: str, handler: Any, frame: Frame, exc: Exception) -> None:
    log.error("channels.handler_failed", handler=type(handler).__name__, method=method,
              frame_type=frame.type.value, error_type=type(exc).__name__)


def executors(handlers: Iterable[FrameHandler]) -> list[FrameHandler]:
    """The handlers that also carry out commands (``executes`` and ``execute``)."""
    return [h for h in handlers if callable(getattr(h, "executes", None)) and callable(getattr(h, "execute", None))]


def call_each(handlers: Iterable[FrameHandler], method: str) -> None:
    """``handler.method()`` for every handler that has it; a failure is logged, never raised."""
    for handler in handlers:
        hook = getattr(handler, method, None)
        if not callable(hook):
            continue
        try:
            hook()
        except Exception as exc:  # noqa: BLE001 - one channel's failure must not stop the agent
            log.error("channels.hook_failed", handler=type(handler).__name__, method=method,
                      error_type=type(exc).__name__, error=str(exc)[:200])


def merge_health(base: dict[str, Any], handlers: Iterable[FrameHandler]) -> dict[str, Any]:
    """``base`` with every handler's ``health_fields()`` added (base keys are never replaced)."""
    for handler in handlers:
        hook = getattr(handler, "health_fields", None)
        if not callable(hook):
            continue
        try:
            fields = dict(hook() or {})
        except Exception as exc:  # noqa: BLE001 - health() is called by probes: it never raises
            log.error("channels.health_fields_failed", handler=type(handler).__name__, error_type=type(exc).__name__)
            continue
        for key, value in fields.items():
            base.setdefault(key, value)
    return base


def notify_session(handlers: Iterable[FrameHandler], session: Any) -> None:
    for handler in handlers:
        try:
            handler.session_changed(session)
        except Exception as exc:  # noqa: BLE001
            log.error("channels.session_hook_failed", handler=type(handler).__name__, error_type=type(exc).__name__)
