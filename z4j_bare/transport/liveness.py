"""Is the brain still there? A session's liveness, judged by what comes back.

A brain can go silent without closing anything: its process or host frozen, a NAT or firewall
that forgot the flow, a path that black-holes packets. The kernel keeps the TCP connection, so
no read ever fails and no close ever comes. What gives it away is that nothing comes back: no
pong for a ping, no ack for a batch, no frame at all.

``Liveness`` (one per session, owned by the I/O thread, clock injected) keeps one question
open: since when has the brain owed us an answer? A ping or an event batch sent while nothing
is owed opens it (``sent``); anything at all heard from the brain after that closes it
(``heard``: a pong, an ack, a command, a long-poll answer). ``verdict`` names the problem once
the brain has owed an answer for longer than ``limit``.

No false positives from a busy brain: the limit adapts to what the session has shown. Each
closed question is a sample of how long this brain takes to answer (a brain ingesting large
frames answers nothing for seconds at a time, its pongs queued behind them); the limit is
``FACTOR`` times the longest sample, or the time the outbox expects the oldest batch to take
at the ack rate the brain has shown, never less than the configured base, never more than
``CEILING`` (the brain itself closes a connection it has not heard from in 90 s, so the agent
must decide well before that). Transports whose brain stays quiet by design while the agent
waits (long-poll holds a poll open) add that time (``quiet_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Pings go out this often at most (more often with a small base: six pings per base limit).
PING_EVERY_MAX_SECONDS = 5.0
PINGS_PER_LIMIT = 6
FACTOR = 3.0
CEILING_SECONDS = 75.0
DEFAULT_LIMIT_SECONDS = 30.0


class Liveness:
    def __init__(self, base_limit: float = DEFAULT_LIMIT_SECONDS, *, quiet_seconds: float = 0.0,
                 expected: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not base_limit > 0:
            raise ValueError(f"Liveness base_limit must be > 0 seconds, got {base_limit!r}")
        self.base_limit = float(base_limit)
        self.quiet_seconds = max(0.0, float(quiet_seconds))
        self._expected = expected or (lambda: None)
        self._clock = clock
        now = clock()
        self.last_heard = now
        self.longest_answer = 0.0
        self._owed_since: float | None = None
        self._owed_for = ""
        self._next_ping = now + self.ping_every
        # The limit as the I/O thread last judged it: health() reads this, never the outbox.
        self.last_limit = self.base_limit + self.quiet_seconds

    def __repr__(self) -> str:
        return (f"Liveness(limit={self.limit:.1f}s, owed_since={self._owed_since}, "
                f"longest_answer={self.longest_answer:.2f}s)")

    @property
    def ping_every(self) -> float:
        return min(PING_EVERY_MAX_SECONDS, self.base_limit / PINGS_PER_LIMIT)

    @property
    def limit(self) -> float:
        """Seconds the brain may owe an answer before the session counts as dead."""
        learned = FACTOR * max(self.longest_answer, self._expected() or 0.0)
        return min(max(self.base_limit, learned), max(self.base_limit, CEILING_SECONDS)) + self.quiet_seconds

    # -- what the session tells it ---------------------------------------------------------------
    def ping_due(self, now: float | None = None) -> bool:
        """True (once per interval) when a keepalive ping should go out now."""
        now = self._clock() if now is None else now
        if now < self._next_ping:
            return False
        self._next_ping = now + self.ping_every
        return True

    def sent(self, what: str, now: float | None = None) -> None:
        """The brain now owes an answer to ``what`` (a ping, an event batch), unless it already did."""
        if self._owed_since is None:
            self._owed_since = self._clock() if now is None else now
            self._owed_for = what

    def heard(self, at: float) -> None:
        """Something came from the brain at monotonic time ``at`` (the transport's ``last_heard``)."""
        if at <= self.last_heard:
            return
        self.last_heard = at
        if self._owed_since is not None and at >= self._owed_since:
            self.longest_answer = max(self.longest_answer, at - self._owed_since)
            self._owed_since = None
            self.last_limit = self.limit

    # -- what it says ------------------------------------------------------------------------------
    def verdict(self, now: float | None = None) -> str | None:
        """Why the session is dead, or None while the brain is within its limit."""
        if self._owed_since is None:
            return None
        now = self._clock() if now is None else now
        owed, limit = now - self._owed_since, self.limit
        self.last_limit = limit
        if owed < limit:
            return None
        return (f"the brain stopped answering: nothing came back for {owed:.1f} s after {self._owed_for} "
                f"(no pong, ack or frame; limit {limit:.1f} s, the longest answer this session had taken "
                f"{self.longest_answer:.1f} s)")

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """For health() (any thread): seconds since the brain was last heard, how long an answer
        has been owed, and the limit as last judged."""
        now = self._clock() if now is None else now
        owed_since = self._owed_since
        return {
            "heard_seconds_ago": round(max(0.0, now - self.last_heard), 3),
            "answer_owed_seconds": None if owed_since is None else round(now - owed_since, 3),
            "limit_seconds": round(self.last_limit, 3),
            "longest_answer_seconds": round(self.longest_answer, 3),
        }
