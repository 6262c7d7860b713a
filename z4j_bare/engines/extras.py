"""Optional dependencies: a missing one is reported with the extra that installs it.

    with needs_extra("RqEngineAdapter"):
        from redis import Redis

raises ``MissingExtra`` (a ``ModuleNotFoundError``, so existing handlers still catch it) with
"RqEngineAdapter needs redis, which is not installed: pip install 'z4j-bare[rq]'".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRA_OF", "MissingExtra", "missing_modules", "needs_extra"]

#: Top-level module -> the extra of z4j-bare that installs it.
EXTRA_OF = {
    "celery": "celery",
    "kombu": "celery",
    "redis": "rq",
    "rq": "rq",
    "rq_scheduler": "rqscheduler",
    "django_celery_beat": "django",
    "websockets": "brain",
}


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, purpose: str, module: str, extra: str) -> None:
        super().__init__(f"{purpose} needs {module}, which is not installed: pip install 'z4j-bare[{extra}]'",
                         name=module)
        self.module = module
        self.extra = extra


@contextmanager
def needs_extra(purpose: str, extra: str | None = None) -> Iterator[None]:
    """Turn a ModuleNotFoundError for an optional dependency into a MissingExtra naming its extra
    (``extra`` overrides the usual one, e.g. ``demo``). Other import errors pass unchanged."""
    try:
        yield
    except MissingExtra:
        raise
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRA_OF:
            raise
        raise MissingExtra(purpose, top, extra or EXTRA_OF[top]) from None


def missing_modules(*modules: str) -> list[str]:
    """Which of these top-level modules cannot be imported here (nothing is imported)."""
    gone = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                gone.append(name)
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent
            gone.append(name)
    return gone
