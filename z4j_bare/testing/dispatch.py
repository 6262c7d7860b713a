"""The inbound frame table: which handlers a verified frame of each type goes to.

The brain registers its own handlers (event batches, heartbeats, command acks and results); a
server-side module adds its handlers for the types it cares about, and they run after the
built-in ones, in the order added. Handlers run on the brain's loop, in frame order for a
session: keep them quick (use ``BrainServer.run_blocking`` for slow work). A handler may be a
plain function or a coroutine function; raising ``FrameRejected`` closes the session.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from ..logs import get_logger
from ..protocol import Frame, FrameType
from .session import Session

log = get_logger(__name__)

FrameHandler = Callable[[Session, Frame, "bytes | None"], "Awaitable[None] | None"]


class FrameRejected(Exception):
    """Raised by a handler: close the session with ``code`` (e.g. ``CloseCode.BAD_FRAME``) and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = int(code)
        self.reason = reason


class FrameDispatch:
    """``add(FrameType.X, handler)``; ``handler(session, frame, events_text)`` (events_text: event_batch only)."""

    def __init__(self) -> None:
        self._handlers: dict[FrameType, list[FrameHandler]] = {}

    def add(self, ftype: FrameType | str, handler: FrameHandler) -> None:
        self._handlers.setdefault(FrameType(ftype), []).append(handler)

    def remove(self, ftype: FrameType | str, handler: FrameHandler) -> None:
        handlers = self._handlers.get(FrameType(ftype), [])
        if handler in handlers:
            handlers.remove(handler)

    async def deliver(self, session: Session, frame: Frame, events_text: bytes | None) -> None:
        handlers = self._handlers.get(frame.type)
        if not handlers:
            log.debug("brain.frame_ignored", type=frame.type.value, agent_id=session.agent.agent_id)
            return
        for handler in list(handlers):
            result = handler(session, frame, events_text)
            if inspect.isawaitable(result):
                await result
