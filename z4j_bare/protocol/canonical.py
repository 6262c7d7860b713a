"""Canonical JSON: the exact byte form both peers hash (protocol.md section 3.2)."""

from __future__ import annotations

import json
from typing import Any

_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_text(obj: Any) -> str:
    """Sorted keys, compact separators, UTF-8 kept, NaN/Infinity refused (ValueError)."""
    return _canonical(obj)


def canonical_bytes(obj: Any) -> bytes:
    return _canonical(obj).encode("utf-8")


def json_string(value: str) -> str:
    """A JSON string literal exactly as the canonical encoder renders it."""
    return _canonical(value)
