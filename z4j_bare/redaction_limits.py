"""Payload size limits: text cut to a UTF-8 byte budget, values and whole events shrunk to fit.

Used by the redactor after it has scrubbed a value: every string is capped at
``max_payload_bytes`` and every event's canonical JSON at ``max_event_bytes``, each cut marked
with ``TRUNCATION_MARKER_PREFIX`` so the brain shows what was dropped.
"""

from __future__ import annotations

import re
from typing import Any

from .protocol import canonical_bytes

TRUNCATION_MARKER_PREFIX = "\u2026[truncated "
SURROGATES = re.compile("[\ud800-\udfff]")

# When an event is too big these go first, in this order, before any other field.
SHRINK_FIRST = ("traceback", "args", "kwargs", "result", "description", "exception_message", "exception")
KEEP_LAST = ("task_name", "queue", "worker")


def utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def truncate_utf8(s: str, limit: int, total: int | None = None) -> str:
    """Cut ``s`` so the result, marker included, is at most ``limit`` UTF-8 bytes."""
    if total is None:
        total = utf8_len(s)
    if total <= limit:
        return s
    reserve = len((TRUNCATION_MARKER_PREFIX + f"{total} bytes]").encode("utf-8"))
    keep = max(0, limit - reserve)
    head = s[:keep].encode("utf-8", "surrogatepass")[:keep].decode("utf-8", "ignore")
    head = SURROGATES.sub("\ufffd", head)
    kept = utf8_len(head)
    return f"{head}{TRUNCATION_MARKER_PREFIX}{total - kept} bytes]"


def json_size(value: Any) -> int:
    return len(canonical_bytes(value))


def fit_event(out: dict[str, Any], limit: int) -> dict[str, Any]:
    """``out`` (a scrubbed event's data) made to fit ``limit`` bytes of canonical JSON."""
    total = json_size(out)
    if total <= limit:
        return out
    sizes = {k: json_size(v) for k, v in out.items()}
    first = [k for k in SHRINK_FIRST if k in out]
    rest = [k for k in out if k not in first and k not in KEEP_LAST]
    last = [k for k in KEEP_LAST if k in out]
    # 1. shrink values, payload fields first, largest first inside a group: the fewest
    #    fields lose information
    for group in (first, rest):
        for k in sorted(group, key=lambda k: -sizes[k]):
            if total <= limit:
                return out
            smaller = shrink(out[k], max(0, sizes[k] - (total - limit)))
            new = json_size(smaller)
            if new < sizes[k]:
                out[k] = smaller
                total += new - sizes[k]
                sizes[k] = new
    if total <= limit:
        return out
    # 2. too many fields: drop whole fields (smallest priority first) behind one marker
    marker_key = TRUNCATION_MARKER_PREFIX + "fields]"
    reserve = 80
    dropped = 0
    for k in [*reversed(rest), *reversed(first)]:
        if total + reserve <= limit:
            break
        total -= json_size(k) + sizes.pop(k) + 2
        del out[k]
        dropped += 1
    if dropped:
        out[marker_key] = f"{dropped} fields dropped to fit {limit} bytes"
    total = json_size(out)
    # 3. the identity fields themselves (only when max_value_bytes > max_event_bytes)
    for k in sorted(last, key=lambda k: -sizes[k]):
        if total <= limit:
            return out
        smaller = shrink(out[k], max(0, sizes[k] - (total - limit)))
        if json_size(smaller) < sizes[k]:
            out[k] = smaller
            total = json_size(out)
    if total <= limit:
        return out
    slim = {k: shrink(out[k], limit // 8) for k in KEEP_LAST if k in out}
    slim[marker_key] = f"event did not fit in {limit} bytes"
    return slim


def shrink(value: Any, budget: int) -> Any:
    """A version of ``value`` whose canonical JSON is at most ``budget`` bytes (best effort:
    the smallest marker is about 30 bytes)."""
    size = json_size(value)
    if size <= budget:
        return value
    if isinstance(value, str):
        # JSON escaping can make the encoded form larger than the UTF-8 text: cut, then verify
        limit = max(0, budget - 2)
        for _ in range(8):
            cut = truncate_utf8(value, limit)
            if json_size(cut) <= budget or limit == 0:
                return cut
            limit = max(0, limit - (json_size(cut) - budget) - 8)
        return cut
    marker_room = 40
    if isinstance(value, list):
        out: list[Any] = []
        used = 2
        for i, item in enumerate(value):
            item_size = json_size(item) + 1
            room = budget - used - marker_room
            if item_size <= room:
                out.append(item)
                used += item_size
                continue
            if room > 64:
                out.append(shrink(item, room - 1))
                used += json_size(out[-1]) + 1
                i += 1
            if i < len(value):
                out.append(f"{TRUNCATION_MARKER_PREFIX}{len(value) - i} items]")
            break
        return out if json_size(out) <= budget else f"{TRUNCATION_MARKER_PREFIX}{size} bytes]"
    if isinstance(value, dict):
        outd: dict[str, Any] = {}
        used = 2
        items = list(value.items())
        for i, (k, item) in enumerate(items):
            item_size = json_size(k) + json_size(item) + 2
            room = budget - used - marker_room - len(k.encode("utf-8", "surrogatepass"))
            if item_size <= budget - used - marker_room:
                outd[k] = item
                used += item_size
                continue
            if room > 64:
                outd[k] = shrink(item, room - 4)
                used += json_size(k) + json_size(outd[k]) + 2
                i += 1
            if i < len(items):
                outd[TRUNCATION_MARKER_PREFIX + "keys]"] = f"{len(items) - i} more keys"
            break
        return outd if json_size(outd) <= budget else f"{TRUNCATION_MARKER_PREFIX}{size} bytes]"
    return f"{TRUNCATION_MARKER_PREFIX}{size} bytes]"
