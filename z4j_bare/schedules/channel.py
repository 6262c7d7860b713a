"""The schedule channel: scheduler adapters on the external schedule protocol v1, as a runtime channel.

``AgentRuntime(schedulers=...)`` registers it like any other channel (``channels.py``):

* ``hello_fields()``: schedulers, their capabilities and the runtime feature for the hello;
* ``executes(action)`` / ``execute(action, parameters, target)``: the ``schedule.*`` commands
  (but ``schedule.fire``), run by the command channel on its workers (acks, dedupe, deadline);
  ``handles(frame)`` takes nothing: all of this channel's inbound traffic is commands;
* ``session_changed(session)``: every authority dies with its session (the brain fences the
  epoch and re-activates on the next hello);
* ``emit`` (set by the runtime): the control path its committed frames leave on
  (``outbound.py``);
* ``start()`` / ``stop()``: the observer thread and the adapters' signal receivers;
* ``health_fields()``: ``health()["schedulers"]``.

What stays here and nowhere in the runtime: stream authority, durable sequences and the
transaction that writes a snapshot's frames (``store.py``), controls that are refused before
any effect when they cannot be finished (``control.py``), the mutation journal (``mutate.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..engines.base import CommandFailed
from ..protocol.schedules import PERIODIC_RESYNC_SECONDS, RESERVED_OWNER, RUNTIME_FEATURE
from ..safety import safe_call
from . import control, handlers, mutate
from .observer import Observer
from .outbound import Emit
from .store import ScheduleStore
from .streams import ScheduleStreams, capabilities_of

if TYPE_CHECKING:
    from ..protocol import Frame
    from ..redaction import Redactor

FIRE_ACTION = "schedule.fire"  # an engine action (protocol.md 6.3), not a scheduler adapter's


def check_adapters(adapters: Sequence[Any]) -> None:
    names = [getattr(a, "name", "") for a in adapters]
    for name in names:
        if not isinstance(name, str) or not name or len(name) > 40 or name == RESERVED_OWNER:
            raise ValueError(f"scheduler adapter name {name!r} must be 1..40 characters and not {RESERVED_OWNER!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"scheduler adapters need distinct names (got {names})")


class ScheduleChannel:
    def __init__(self, adapters: Sequence[Any], store: ScheduleStore, redactor: Redactor | None = None, *,
                 periodic_seconds: float = PERIODIC_RESYNC_SECONDS) -> None:
        check_adapters(adapters)
        self.streams = ScheduleStreams(adapters, store, redactor)
        self.observer = Observer(self.streams, periodic_seconds)
        self.streams.on_bind = self.observer.wake

    @classmethod
    def beside(cls, buffer_path: str | os.PathLike[str], adapters: Sequence[Any],
               redactor: Redactor | None = None) -> ScheduleChannel:
        """The channel for ``schedulers=``: its store sits next to the agent's buffer."""
        check_adapters(adapters)
        return cls(adapters, ScheduleStore.beside(buffer_path), redactor)

    def __repr__(self) -> str:
        return f"ScheduleChannel(schedulers={self.streams.names})"

    @property
    def store(self) -> ScheduleStore:
        return self.streams.store

    @property
    def emit(self) -> Emit | None:
        return self.streams.outbound.emit

    @emit.setter
    def emit(self, emit: Emit | None) -> None:
        self.streams.outbound.emit = emit

    def snapshot(self, owner: str, reason: str, *, only_if_changed: bool = False) -> dict[str, Any] | None:
        """One complete observation now (see ``ScheduleStreams.snapshot``)."""
        return self.streams.snapshot(owner, reason, only_if_changed=only_if_changed)

    # -- the channel interface (channels.py) ---------------------------------------------------

    def hello_fields(self) -> dict[str, Any]:
        caps = {name: capabilities_of(s.adapter) for name, s in self.streams.states.items()}
        return {"schedulers": self.streams.names, "capabilities": caps, "runtime_features": [RUNTIME_FEATURE]}

    def handles(self, frame: Frame) -> bool:
        return False  # schedule traffic arrives as commands: see executes()

    def handle(self, frame: Frame) -> None:
        return None

    def session_changed(self, session: Any) -> None:
        self.streams.session_changed(None if session is None else int(session.max_frame))

    def executes(self, action: str) -> bool:
        return action.startswith("schedule.") and action != FIRE_ACTION

    def execute(self, action: str, params: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
        streams = self.streams
        if action == "schedule.external.activate":
            return handlers.activate(streams, params, target)
        if action == "schedule.external.control":
            return control.control(streams, params, target)
        if action == "schedule.external.mutate":
            return mutate.mutate(streams, params, target)
        if action == "schedule.resync":
            return handlers.resync(streams)
        if action in handlers.LEGACY:
            return handlers.legacy(streams, action, params, target)
        raise CommandFailed(f"unrecognized schedule action {action!r}")

    def start(self) -> None:
        if self.streams.started:
            return
        self.streams.started = True
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        safe_call(self.streams.store.close, site="schedules.close_store")

    def health_fields(self) -> dict[str, Any]:
        return {"schedulers": self.streams.health()}
