"""How the agent logs: stdlib loggers named ``z4j_bare.*``; the host decides what is shown.

The agent is a guest in someone else's process, so it never configures logging and never writes
to stdout or stderr itself:

- every module gets ``log = get_logger(__name__)`` and writes events as a name plus key=value
  context: ``log.warning("runtime.session_failed", reason=..., retry_in_s=2.0)``;
- the host's stdlib levels are asked first (``isEnabledFor``), so a record below the host's level
  costs one cached check and nothing is built (structlog is not even imported);
- an enabled record is scrubbed by the redactor's log scrubber (no secret reaches any handler;
  the package hands it down with ``set_scrubber_factory``, as this module sits below the
  redactor), then built by structlog and handed to the stdlib logger of the same name, with the message
  ``"<event> key=value ..."`` and the fields on the record as ``z4j_event`` / ``z4j_fields`` for
  JSON formatters;
- when the host configured structlog itself (``structlog.configure``), the host's pipeline
  renders the (already scrubbed) event instead; the stdlib level still decides first;
- a ``NullHandler`` on ``z4j_bare`` keeps Python's last-resort handler from printing the agent's
  warnings on stderr when the host configured nothing.

A logging failure never reaches the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

ROOT = "z4j_bare"
logging.getLogger(ROOT).addHandler(logging.NullHandler())

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_scrubber: Any = None
_scrubber_factory: Callable[[], Callable[..., dict[str, Any]]] | None = None
_stdlib_processors: list[Any] | None = None


class AgentLogger:
    """A structlog-style logger (``log.info("event.name", key=value)``) over a stdlib logger."""

    __slots__ = ("name", "_stdlib", "_wrapped")

    def __init__(self, name: str) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)
        self._wrapped: Any = None

    def __repr__(self) -> str:
        return f"<AgentLogger {self.name}>"

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        fields.setdefault("exc_info", True)
        self._emit("error", event, fields)

    def is_enabled_for(self, method: str) -> bool:
        return self._stdlib.isEnabledFor(_LEVELS[method])

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        try:
            if not self._stdlib.isEnabledFor(_LEVELS[method]):
                return
            import structlog

            if structlog.is_configured():
                # The host set structlog up: its pipeline renders; ours only scrubs first.
                fields = _scrub(self.name, method, {"event": event, **fields})
                getattr(structlog.get_logger(self.name), method)(fields.pop("event"), **fields)
                return
            if self._wrapped is None:
                self._wrapped = structlog.wrap_logger(
                    self._stdlib, processors=_processors(), wrapper_class=structlog.BoundLogger,
                )
            getattr(self._wrapped, method)(event, **fields)
        except Exception:  # noqa: BLE001 - logging must never break the agent or its host
            pass


def get_logger(name: str) -> AgentLogger:
    """The logger for a module of the agent (``get_logger(__name__)``)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return AgentLogger(name)


def set_scrubber_factory(factory: Callable[[], Callable[..., dict[str, Any]]]) -> None:
    """Name what builds the log scrubber (the package registers the redactor's on import).

    The redactor lives layers above this module, so it is handed down instead of imported; it
    is built on the first record that is actually emitted.
    """
    global _scrubber_factory, _scrubber
    _scrubber_factory, _scrubber = factory, None


def _fields_dropped(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # No scrubber registered (this module loaded outside its package): fail closed.
    return {"event": event_dict.get("event", ""), "fields": "[dropped: no log scrubber registered]"}


def _scrub(name: str, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    global _scrubber
    if _scrubber is None:
        _scrubber = _scrubber_factory() if _scrubber_factory is not None else _fields_dropped
    return _scrubber(name, method, event_dict)


def _processors() -> list[Any]:
    global _stdlib_processors
    if _stdlib_processors is None:
        from structlog.processors import format_exc_info

        _stdlib_processors = [format_exc_info, _scrub_processor, _to_record]
    return _stdlib_processors


def _scrub_processor(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return _scrub(getattr(logger, "name", ROOT), method, event_dict)


def _to_record(logger: Any, method: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The last processor: one line of text for plain formatters, the fields for JSON ones.

    A ``summary`` field (a sentence for a person: what is wrong, what the agent does next) follows
    the event name: ``runtime.session_failed: cannot reach the brain ...; retrying in 1.2 s ... | key=value``.
    """
    event = str(event_dict.pop("event", ""))
    exception = event_dict.pop("exception", None)
    summary = event_dict.get("summary")
    pairs = " ".join(f"{key}={value!r}" for key, value in event_dict.items() if key != "summary")
    text = f"{event}: {summary} | {pairs}" if summary else f"{event} {pairs}".rstrip()
    if exception:
        text = f"{text}\n{exception}"
    return (text,), {"extra": {"z4j_event": event, "z4j_fields": event_dict}}


# -- entry points that own their process (the CLI, the demo, the local brain) ---------------------


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at write time (tests and tools swap it)."""

    _z4j_console = True

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        fields = getattr(record, "z4j_fields", None) or {}
        data = {"at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, "event": getattr(record, "z4j_event", record.getMessage()), **fields}
        return json.dumps(data, default=str)


def log_to_stderr(level: str = "warning", *, json_lines: bool = False) -> None:
    """Show the agent's records on stderr: for entry points that own their process only.

    The library itself never calls this. Replaces the handler an earlier call installed.
    """
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_z4j_console", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False


class _ForwardHandler(logging.Handler):
    """Hands the agent's records to another logger's handlers (see ``show_through``)."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def show_through(target: logging.Logger) -> None:
    """Let the agent's records appear where ``target``'s do, if the host set up nothing for them.

    For the agent's own worker classes (``rq worker --worker-class z4j_rq.Worker``): RQ gives
    only its ``rq.worker`` logger a handler, so without this the agent's warnings ("cannot reach
    the brain") would be invisible in the worker's output. The agent's level still applies
    (``z4j_bare``'s effective level: WARNING unless the host set another). Does nothing when any
    handler other than our ``NullHandler`` would already receive ``z4j_bare`` records.
    """
    logger: logging.Logger | None = logging.getLogger(ROOT)
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return
        logger = logger.parent if logger.propagate else None
    logging.getLogger(ROOT).addHandler(_ForwardHandler(target))


def has_console() -> bool:
    return any(getattr(h, "_z4j_console", False) for h in logging.getLogger(ROOT).handlers)


def reset_console() -> None:
    """Undo ``log_to_stderr`` (tests)."""
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        if getattr(handler, "_z4j_console", False):
            root.removeHandler(handler)
    root.setLevel(logging.NOTSET)
    root.propagate = True
