"""``install_agent``: resolve configuration, open the buffer, build and start the runtime."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from typing import Any

from .config import OPTIONS, Config
from .engines.base import EngineAdapter
from .framework import BareFrameworkAdapter
from .logs import get_logger
from .protocol import deployment_id
from .redaction_deferred import DeferredRedactor
from .runtime import AgentRuntime
from .safety import set_strict_mode

log = get_logger(__name__)

_lock = threading.Lock()
_current: AgentRuntime | None = None


def install_agent(
    *,
    engines: Sequence[EngineAdapter],
    framework: BareFrameworkAdapter | None = None,
    schedulers: Sequence[Any] | None = None,
    **options: Any,
) -> AgentRuntime | None:
    schedulers = _check_schedulers(schedulers)
    if not engines and not schedulers:
        raise ValueError("install_agent needs at least one adapter: engines=[CeleryEngineAdapter(...)] and/or "
                         "schedulers=[CeleryBeatSchedulerAdapter(...)]")
    if _disabled(options.get("disabled")):
        log.warning("agent.disabled", reason="disabled=True or Z4J_DISABLED is set; no agent installed")
        return None
    config = Config.resolve(**options)  # a configuration error shows at once, even when waiting
    if engines and not schedulers and all(_waits_for_worker(e) for e in engines):
        engines[0].start_with_worker(lambda: _install(config, engines, framework, schedulers))  # type: ignore[attr-defined]
        log.info("agent.waiting_for_worker", engines=[e.name for e in engines],
                 summary="not in a Celery worker: the agent starts at worker_init if this process becomes "
                         "one (pass outside_worker=True to CeleryEngineAdapter to run it here)")
        return None
    return _install(config, engines, framework, schedulers)


def _waits_for_worker(engine: EngineAdapter) -> bool:
    waits = getattr(engine, "waits_for_worker", None)
    return bool(waits()) if callable(waits) else False


def _install(config: Config, engines: Sequence[EngineAdapter], framework: BareFrameworkAdapter | None,
             schedulers: list[Any]) -> AgentRuntime:
    global _current
    with _lock:
        existing = _current
        if existing is not None and existing.state.value != "stopped":
            if existing._owner_pid != os.getpid():
                # A forked child (prefork pool, RQ work-horse) inherits the parent's agent: its hooks
                # already write to the shared buffer, and only the parent holds the socket.
                log.info("agent.inherited_from_parent", parent_pid=existing._owner_pid)
                return existing
            log.info("agent.already_installed", engines=sorted(existing.engines))
            return existing
        runtime = build_runtime(config, engines, framework, schedulers=schedulers)
        _current = runtime
    if config.autostart:
        try:
            runtime.start()
        except BaseException:
            with _lock:
                _current = None
            raise
        atexit.register(_stop_at_exit, runtime)
    return runtime


def _disabled(explicit: Any) -> bool:
    # Checked before resolving: a host with no credentials at all must still be able to opt out.
    if explicit is not None:
        return bool(explicit)
    return os.environ.get("Z4J_DISABLED", "").strip().lower() in {"1", "true", "yes", "on"}


def _check_schedulers(schedulers: Sequence[Any] | None) -> list[Any]:
    if schedulers is None:
        return []
    if isinstance(schedulers, (str, bytes)) or not isinstance(schedulers, Sequence):
        raise ValueError("schedulers= must be a list of scheduler adapters, e.g. "
                         "[CeleryBeatSchedulerAdapter(celery_app=app)]")
    for adapter in schedulers:
        missing = [m for m in ("capabilities", "list_schedules", "get_schedule") if not callable(getattr(adapter, m, None))]
        if missing or not isinstance(getattr(adapter, "name", None), str):
            raise ValueError(f"schedulers=: {adapter!r} is not a scheduler adapter (it lacks "
                             f"{', '.join(missing) or 'a name'}); use z4j_celerybeat.CeleryBeatSchedulerAdapter or "
                             "z4j_rqscheduler.RqSchedulerAdapter")
    return list(schedulers)


def build_runtime(config: Config, engines: Sequence[EngineAdapter], framework: BareFrameworkAdapter | None = None,
                  *, schedulers: Sequence[Any] | None = None) -> AgentRuntime:
    """Everything install_agent does except the singleton and start (for tests and doctor)."""
    from .buffer import BufferStore

    if config.strict_mode:
        set_strict_mode(True)
    redactor = _redactor(config)
    buffer = BufferStore.open_for_deployment(
        config.home, deployment_id(config.key), buffer_path=config.buffer_path,
        max_rows=config.buffer_max_events, max_bytes=config.buffer_max_bytes, spool=config.buffer_spool,
    )
    try:
        return AgentRuntime(config=config, engines=list(engines), buffer=buffer, redactor=redactor, framework=framework,
                            schedulers=schedulers)
    except BaseException:
        buffer.close()
        raise


def _redactor(config: Config) -> Any:
    def build() -> Any:
        from .redaction import Redactor

        return Redactor(extra_key_patterns=config.redaction_extra_key_patterns,
                        extra_value_patterns=config.redaction_extra_value_patterns,
                        max_value_bytes=config.max_payload_bytes, max_event_bytes=config.max_event_bytes)

    if config.redaction_extra_key_patterns or config.redaction_extra_value_patterns:
        return build()  # the redactor may refuse a configured pattern: install_agent must say so
    # The built-in patterns cannot fail: built by the I/O thread after install_agent returns.
    return DeferredRedactor(build, max_event_bytes=config.max_event_bytes, max_value_bytes=config.max_payload_bytes)


def current_runtime() -> AgentRuntime | None:
    return _current


def _reset_for_tests() -> None:
    global _current
    with _lock:
        _current = None


def _stop_at_exit(runtime: AgentRuntime) -> None:
    if runtime._owner_pid == os.getpid():
        runtime.stop()


def _docstring() -> str:
    lines = [
        "Install the z4j agent in this process and return its started AgentRuntime.",
        "",
        "Every option can be passed as a keyword or set as an environment variable; an explicit",
        "keyword wins, then the environment (an empty value counts as unset), then the default.",
        "One agent per process: a second call returns the first runtime. A forked child (Celery",
        "prefork pool, RQ work-horse) gets its parent's runtime, whose hooks write to the shared",
        "buffer; only the parent holds the connection. Returns None when Z4J_DISABLED is set.",
        "",
        "Celery: called where no Celery worker runs (the app module imported by a web server,",
        "`celery inspect`, beat, or by `celery worker` before worker_init), it starts nothing and",
        "returns None; the agent then starts at worker_init if the process becomes a worker",
        "(current_runtime() returns it). CeleryEngineAdapter(..., outside_worker=True) opts in to",
        "an agent in a process that is no worker (a web app reporting task.sent, a script).",
        "",
        "Arguments that have no environment variable:",
        "    engines: the engine adapters (CeleryEngineAdapter, RqEngineAdapter, ...).",
        "    schedulers: scheduler adapters (CeleryBeatSchedulerAdapter, RqSchedulerAdapter); see",
        "        docs/schedulers.md. At least one adapter across engines and schedulers.",
        "    framework: a BareFrameworkAdapter (default) or subclass naming the host framework.",
        "",
        "Options (keyword / environment variable / default):",
    ]
    for opt in OPTIONS:
        env = opt.env if opt.env_allowed else "(keyword only)"
        lines.append(f"    {opt.name} / {env} / {opt.default_text()}")
        lines.append(f"        {opt.doc}")
    lines += ["", "Raises ConfigError (a ValueError) naming the option, its variable and the fix."]
    return "\n".join(lines)


install_agent.__doc__ = _docstring()
