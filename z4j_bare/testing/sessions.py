"""The open sessions of every agent, their worker slots, session hooks and the close codes used.

Everything here runs on the brain's event loop except the read-only lookups, which any thread
may call (they take the shared lock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..logs import get_logger
from .changes import Changes
from .framelog import Listeners
from .session import Session

log = get_logger(__name__)

SessionHook = Callable[[Session], Awaitable[None]]


class SessionHub:
    """Registry of open sessions. ``on_open`` hooks run after the handshake, before pending commands."""

    def __init__(self, changes: Changes, listeners: Listeners) -> None:
        self._changes = changes
        self._listeners = listeners
        self._sessions: dict[str, Session] = {}
        self._slots: dict[tuple[str, str | None], Session] = {}
        self._open_hooks: list[SessionHook] = []
        self._close_hooks: list[SessionHook] = []
        self.close_codes: list[int] = []

    # -- registry ------------------------------------------------------------------------------

    def add(self, sess: Session) -> Session | None:
        """Register an open session; returns the session it displaces from its worker slot, if any."""
        with self._changes.lock:
            displaced = None
            if sess.slot is not None:
                displaced = self._slots.get(sess.slot)
                self._slots[sess.slot] = sess
            self._sessions[sess.session_id] = sess
            sess.agent.open_sessions.add(sess.session_id)
            sess.agent.sessions += 1
            self._changes.bump()
        return displaced if displaced is not sess else None

    def remove(self, sess: Session) -> None:
        with self._changes.lock:
            self._sessions.pop(sess.session_id, None)
            if sess.slot is not None and self._slots.get(sess.slot) is sess:
                del self._slots[sess.slot]
            sess.agent.open_sessions.discard(sess.session_id)
            self._changes.bump()

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def sessions(self, agent_id: str | None = None) -> list[Session]:
        """Open sessions (of one agent, or all), oldest first."""
        with self._changes.lock:
            found = list(self._sessions.values())
        return [s for s in found if agent_id is None or s.agent.agent_id == agent_id]

    # -- hooks ---------------------------------------------------------------------------------

    def add_open_hook(self, hook: SessionHook) -> None:
        """``await hook(session)`` for each new session, after ``hello_ack``, before pending commands."""
        self._open_hooks.append(hook)

    def add_close_hook(self, hook: SessionHook) -> None:
        """``await hook(session)`` once a session has ended and left the registry."""
        self._close_hooks.append(hook)

    async def opened(self, sess: Session) -> None:
        await self._run_hooks(self._open_hooks, sess, "open")

    async def closed(self, sess: Session) -> None:
        await self._run_hooks(self._close_hooks, sess, "close")

    @staticmethod
    async def _run_hooks(hooks: list[SessionHook], sess: Session, when: str) -> None:
        for hook in list(hooks):
            try:
                await hook(sess)
            except Exception:
                log.exception("brain.session_hook_failed", when=when, session_id=sess.session_id)

    # -- closing -------------------------------------------------------------------------------

    def note_close(self, code: int, reason: str) -> None:
        """Record a close code the brain sends (tests read ``close_codes``; the feed shows it)."""
        with self._changes.lock:
            self.close_codes.append(code)
            self._changes.bump()
        if self._listeners:
            self._listeners.emit({"at": time.time(), "direction": "out", "type": "close", "code": code,
                                  "reason": reason})

    async def close(self, sess: Session, code: int, reason: str) -> None:
        log.info("brain.session_closing", agent_id=sess.agent.agent_id, session_id=sess.session_id, code=code)
        await sess.close(code, reason)

    async def close_matching(self, code: int, reason: str, agent_id: str | None = None) -> int:
        """Close the open sessions (of one agent, or all) with ``code``; returns how many."""
        targets = self.sessions(agent_id)
        await asyncio.gather(*(self.close(s, code, reason) for s in targets))
        return len(targets)
