"""The command dedupe store (``seen_commands``): a command executed once is not executed again
while its key lives, across restarts of the agent (the file keeps it)."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["ADOPT", "ANY_LIVE", "CommandDedupe"]

#: Expired keys are purged on every PURGE_EVERY-th remember.
PURGE_EVERY = 256
#: True when the file remembers a live key (``?`` = now); such a file is kept on close.
ANY_LIVE = "EXISTS(SELECT 1 FROM seen_commands WHERE expires_at > ?)"
#: Take an ATTACHed ``orphan`` database's live keys (``?`` = now).
ADOPT = (
    "INSERT INTO main.seen_commands(key, expires_at) SELECT key, expires_at"
    " FROM orphan.seen_commands WHERE expires_at > ? ON CONFLICT(key)"
    " DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)"
)


class CommandDedupe:
    def __init__(self) -> None:
        self._remembered = 0

    @staticmethod
    def seen(conn: sqlite3.Connection, key: str) -> bool:
        row = conn.execute("SELECT 1 FROM seen_commands WHERE key=? AND expires_at > ?",
                           (key, time.time())).fetchone()
        return row is not None

    def remember(self, conn: sqlite3.Connection, key: str, ttl_seconds: float) -> None:
        now = time.time()
        conn.execute("INSERT INTO seen_commands(key, expires_at) VALUES (?, ?) ON CONFLICT(key)"
                     " DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                     (key, now + float(ttl_seconds)))
        self._remembered += 1
        if self._remembered % PURGE_EVERY == 0:
            conn.execute("DELETE FROM seen_commands WHERE expires_at <= ?", (now,))
