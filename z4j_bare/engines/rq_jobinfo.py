"""Read what an RQ job is without running any of its code.

RQ stores a job's call as ``serializer.dumps((func_name, instance, args, kwargs))``. Loading that
with ``pickle.loads`` imports and calls whatever the bytes name, so the agent never does. Instead:

* ``func_name_from_data`` walks the pickle opcode stream (``pickletools.genops`` only parses) and
  returns the first string, which is the function's dotted path;
* ``decode_call`` runs the pickle machine with ``find_class`` replaced: no module is imported and
  no callable is looked up. Plain data (str, numbers, containers, bytes) comes back as is; any
  class instance comes back as an inert ``Opaque`` placeholder that prints as ``<module.Name>``.

JSON-serialized jobs are read with ``json.loads``. Any other serializer: the agent reports the
name from the job's description and no arguments.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import pickle
import zlib
from typing import Any

MAX_DECODE_BYTES = 64 * 1024
MAX_DESCRIPTION_CHARS = 4096
MAX_TRACEBACK_CHARS = 4096
MAX_ARG_REPR = 75
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"})
# Types whose pickled form only rebuilds plain values (no user code runs): kept as real objects.
_SAFE_GLOBALS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex, ("datetime", "datetime"): _dt.datetime, ("datetime", "date"): _dt.date,
    ("datetime", "time"): _dt.time, ("datetime", "timedelta"): _dt.timedelta, ("datetime", "timezone"): _dt.timezone,
}


class Opaque:
    """Stands in for an object of a class the agent refuses to import."""

    __slots__ = ()
    _name = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self._name}>"

    __str__ = __repr__


_opaque_types: dict[str, type] = {}


def _opaque_type(module: str, name: str) -> type:
    key = f"{module}.{name}"[:200]
    cls = _opaque_types.get(key)
    if cls is None:
        if len(_opaque_types) > 512:
            _opaque_types.clear()
        cls = type("Opaque", (Opaque,), {"__slots__": (), "_name": key})
        _opaque_types[key] = cls
    return cls


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        safe = _SAFE_GLOBALS.get((module, name))
        return safe if safe is not None else _opaque_type(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return _opaque_type("persistent", "id")()


def inflate(raw: bytes | None, limit: int | None = None) -> bytes | None:
    """Job ``data`` as stored in Redis (zlib, or raw for old jobs); at most ``limit`` bytes out."""
    if not raw:
        return None
    try:
        d = zlib.decompressobj()
        return d.decompress(raw, limit) if limit else d.decompress(raw) + d.flush()
    except zlib.error:
        return raw if limit is None else raw[:limit]


def func_name_from_data(data: bytes | None) -> str | None:
    """The dotted function path from serialized job data, without unpickling."""
    if not data:
        return None
    if data[:1] == b"\x80":
        import pickletools  # here, not at import: the forking parent should not carry it

        try:
            for index, (op, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data))):
                if op.name in _STRING_OPS:
                    return arg if isinstance(arg, str) else (arg.decode("utf-8", "replace") if isinstance(arg, bytes) else None)
                if index > 8:
                    return None
        except Exception:  # noqa: BLE001 - truncated/corrupt data: name unknown
            return None
        return None
    if data[:1] == b"[":
        call = _json_call(data)
        return call[0] if call and isinstance(call[0], str) else None
    return None


def _json_call(data: bytes) -> list | None:
    try:
        value = json.loads(data.decode("utf-8"))
    except Exception:  # noqa: BLE001
        return None
    return value if isinstance(value, list) and len(value) == 4 else None


def decode_call(data: bytes | None) -> tuple[str | None, list | None, dict | None]:
    """(func_name, args, kwargs) with class instances replaced by placeholders; Nones if unreadable."""
    if not data or len(data) > MAX_DECODE_BYTES:
        return func_name_from_data(data[:4096] if data else None), None, None
    if data[:1] == b"\x80":
        try:
            value = _InertUnpickler(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001 - malformed or exotic pickle: name only
            return func_name_from_data(data), None, None
    elif data[:1] == b"[":
        value = _json_call(data)
    else:
        return None, None, None
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        return None, None, None
    name, _instance, args, kwargs = value
    name = name if isinstance(name, str) else None
    args = list(args) if isinstance(args, (list, tuple)) else None
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else None
    return name, args, kwargs


def decode_value(raw: bytes | None) -> Any:
    """A pickled/JSON return value, decoded inertly; None when not decodable."""
    if not raw or len(raw) > MAX_DECODE_BYTES:
        return None
    try:
        if raw[:1] == b"\x80":
            return _InertUnpickler(io.BytesIO(raw)).load()
        return json.loads(raw.decode("utf-8"))
    except Exception:  # noqa: BLE001
        return None


def name_from_description(description: str | None) -> str | None:
    if not description:
        return None
    head = description.split("(", 1)[0].strip()
    return head if head and " " not in head else None


def call_description(func_name: str | None, args: list | None, kwargs: dict | None, stored: str | None) -> str | None:
    """RQ's call string with keyword values hidden; a custom description is kept (cut)."""
    if stored and func_name and not stored.startswith(func_name + "("):
        return stored[:MAX_DESCRIPTION_CHARS]
    if func_name is None:
        return stored[:MAX_DESCRIPTION_CHARS] if stored else None
    if args is None and kwargs is None:
        return f"{func_name}(…)"
    parts = [_short_repr(a) for a in (args or [])]
    parts += [f"{k}=[REDACTED]" for k in sorted(map(str, (kwargs or {})))]
    return f"{func_name}({', '.join(parts)})"[:MAX_DESCRIPTION_CHARS]


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a placeholder never raises; real objects might
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_ARG_REPR else text[:MAX_ARG_REPR] + "…"


def to_epoch(value: Any) -> float | None:
    """datetime (naive = UTC) or RQ's stored timestamp text -> POSIX seconds."""
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
            try:
                value = _dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.timestamp()
    return None


def stream_id_epoch(entry_id: Any) -> float | None:
    """Redis stream entry id ``<ms>-<seq>`` -> POSIX seconds."""
    try:
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return int(text.split("-", 1)[0]) / 1000.0
    except (ValueError, AttributeError):
        return None


def exc_from_result(payload: dict | None) -> str | None:
    """The exception text of a stored RQ Result stream entry (base64 of zlib)."""
    if not payload:
        return None
    raw = payload.get(b"exc_string") or payload.get("exc_string")
    if not raw:
        return None
    try:
        import base64

        return zlib.decompress(base64.b64decode(raw)).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return None


def exception_summary(exc_text: str | None) -> str | None:
    """The last meaningful line of a traceback (``ValueError: boom``)."""
    if not exc_text:
        return None
    for line in reversed(exc_text.strip().splitlines()):
        line = line.strip()
        if line:
            return line[:1024]
    return None


def cut_traceback(exc_text: str | None) -> str | None:
    """Keep the end of a long traceback: the raising frame and the message are there."""
    if not exc_text:
        return None
    if len(exc_text) <= MAX_TRACEBACK_CHARS:
        return exc_text
    return "…" + exc_text[-(MAX_TRACEBACK_CHARS - 1):]


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
