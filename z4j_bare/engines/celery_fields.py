"""What Celery's objects become in event fields, shared by the worker and the in-process capture."""

from __future__ import annotations

from typing import Any

from ..safety import safe_str

MAX_TRACEBACK = 4096
MAX_MESSAGE = 2048

def exc_parts(exc: BaseException | None) -> tuple[str, str]:
    """(type name, message); unwraps Celery's pickling wrappers."""
    if exc is None:
        return "Exception", ""
    inner = getattr(exc, "exc", None)
    if type(exc).__name__ == "ExceptionWithTraceback" and isinstance(inner, BaseException):
        exc = inner
    name = getattr(exc, "exc_cls_name", None) or type(exc).__name__
    message = getattr(exc, "exc_msg", None)
    return str(name), safe_str(exc if message is None else message)[:MAX_MESSAGE]


def queue_of(delivery_info: Any) -> str | None:
    """The queue a message came from, as Celery recorded its delivery."""
    if isinstance(delivery_info, dict):
        return delivery_info.get("routing_key") or delivery_info.get("exchange") or None
    return None
