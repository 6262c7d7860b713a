"""Canonical JSON: the exact byte form both peers hash (protocol.md section 3.2)."""

from __future__ import annotations

import json
import json.encoder
from typing import Any

_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


_encode_string = json.encoder.encode_basestring


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# One C encoder with the canonical settings, made once. No cycle bookkeeping: only for values
# that cannot contain a cycle, such as the fresh copies the redactor returns.
_tree_encoder = (json.encoder.c_make_encoder(None, _not_serializable, json.encoder.encode_basestring, None, ":", ",",
                                             True, False, False)
                 if json.encoder.c_make_encoder is not None else None)


def canonical_tree_text(obj: Any) -> str:
    """``canonical_text`` of a value that cannot contain a cycle (a redacted copy), same text.

    Skips what ``json.JSONEncoder.encode`` does per call (a new C encoder and a cycle-marker
    dict): about a third of the cost for an event's small ``data`` dict.
    """
    if _tree_encoder is None:
        return _canonical(obj)
    return "".join(_tree_encoder(obj, 0))


def canonical_text(obj: Any) -> str:
    """Sorted keys, compact separators, UTF-8 kept, NaN/Infinity refused (ValueError)."""
    return _canonical(obj)


def canonical_bytes(obj: Any) -> bytes:
    return _canonical(obj).encode("utf-8")


def json_string(value: str) -> str:
    """A JSON string literal exactly as the canonical encoder renders it."""
    if isinstance(value, str):
        return _encode_string(value)  # what JSONEncoder.encode itself does for a str
    return _canonical(value)
