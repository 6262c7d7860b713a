"""The boundary between host code and agent code: agent bugs never raise into the host.

``safe_boundary`` wraps every hook the agent installs in a host (signal receivers, patched
methods); ``safe_call`` is the same for a single call. Swallowed errors are counted per site and
logged with their type only (an exception message can carry task data). ``strict`` re-raises,
for tests. ``safe_str`` turns any host object into text without letting its ``__str__`` raise.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from .logs import get_logger

log = get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_errors: Counter[str] = Counter()
_strict = False


def set_strict_mode(enabled: bool) -> None:
    """Re-raise swallowed errors (tests and ``strict_mode=True``)."""
    global _strict
    _strict = bool(enabled)


def strict_mode() -> bool:
    return _strict


def error_counts() -> dict[str, int]:
    with _lock:
        return dict(_errors)


def _record(site: str, exc: BaseException) -> None:
    with _lock:
        _errors[site] += 1
        count = _errors[site]
    # The first few occurrences are worth a line each; after that one line per 1000.
    if count <= 3 or count % 1000 == 0:
        log.warning("safety.swallowed", site=site, error_type=type(exc).__name__, count=count)


def safe_call(fn: Callable[..., R], *args: Any, site: str | None = None, default: Any = None, **kwargs: Any) -> R | Any:
    try:
        return fn(*args, **kwargs)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - the whole point of the boundary
        _record(site or getattr(fn, "__qualname__", "call"), exc)
        if _strict:
            raise
        return default


def safe_boundary(fn: Callable[P, R] | None = None, *, site: str | None = None, default: Any = None) -> Any:
    """Decorator form of ``safe_call``; usable bare or with arguments."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        name = site or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return func(*args, **kwargs)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001
                _record(name, exc)
                if _strict:
                    raise
                return default

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _type_name(value: Any) -> str:
    try:
        return type(value).__name__
    except Exception:  # noqa: BLE001 - pathological metaclass
        return "object"


def safe_str(value: Any) -> str:
    """str(), then repr(), then a placeholder: a hostile ``__str__`` never escapes, and the
    result is a plain ``str`` (a str subclass could bring its own hooks along)."""
    for fn in (str, repr):
        try:
            text = fn(value)
            if type(text) is str:
                return text
            return str.__str__(text) if isinstance(text, str) else f"<unrepresentable {_type_name(value)}>"
        except Exception:  # noqa: BLE001,S112 - any failure means "try the next way"
            continue
    return f"<unrepresentable {_type_name(value)}>"
