"""The agent's log records as a host's handler sees them (on the ``z4j_bare`` stdlib logger)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Keep(logging.Handler):
    def __init__(self, seen: list[logging.LogRecord], level: int) -> None:
        super().__init__(level)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


@contextmanager
def agent_records(logger_level: int, keep_from: int = logging.NOTSET) -> Iterator[list[logging.LogRecord]]:
    """Records at or above ``keep_from``, with the ``z4j_bare`` logger set to ``logger_level``
    meanwhile (restored after)."""
    seen: list[logging.LogRecord] = []
    logger = logging.getLogger("z4j_bare")
    handler = _Keep(seen, keep_from)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logger_level)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
