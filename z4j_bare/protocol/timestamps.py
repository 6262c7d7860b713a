"""UTC timestamp text: the one place the agent writes an instant as ISO-8601.

The same instant travels in two spellings: frame envelopes and status fields end in ``Z``
(``2026-04-16T12:34:56.789000Z``, protocol.md section 2), event records end in ``+00:00`` (what
``datetime.isoformat()`` gives, protocol.md section 5.1). Both carry microseconds. The date-time
part is cached per whole second because event capture formats one timestamp per event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

ENVELOPE_ZONE = "Z"
EVENT_ZONE = "+00:00"

_second_prefix: tuple[int, str] = (-1, "")
#: "000" to "999": the microseconds are two look-ups, not a format call (per event on the hot path).
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))


def utc_text(timestamp: float | None = None, zone: str = ENVELOPE_ZONE) -> str:
    """POSIX seconds (now when None) as ``YYYY-MM-DDTHH:MM:SS.ffffff`` + ``zone``."""
    global _second_prefix
    ts = time.time() if timestamp is None else timestamp
    second = int(ts // 1)
    micros = round((ts - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _second_prefix
    if cached[0] != second:
        cached = _second_prefix = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S."))
    return cached[1] + _DIGITS3[micros // 1000] + _DIGITS3[micros % 1000] + zone


def utc_now_text(now: datetime | None = None) -> str:
    """``2026-04-16T12:34:56.789000Z``: the envelope form, of ``now`` (an aware datetime) or now."""
    return utc_text(None if now is None else now.timestamp())
