"""z4j-bare: the framework-free z4j agent.

    from z4j_bare import install_agent
    from z4j_rq import RqEngineAdapter

    runtime = install_agent(engines=[RqEngineAdapter(redis_url="redis://localhost:6379/0")])
    runtime.health()      # for liveness/readiness probes
    runtime.stop()        # drain, close, join

Names are imported on first use, so ``import z4j_bare.protocol`` stays light in worker children.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import logs as _logs

__version__ = "2.0.0"

_EXPORTS = {
    "install_agent": "agent",
    "AgentRuntime": "runtime",
    "RuntimeState": "statechart",
    "BareFrameworkAdapter": "framework",
    "BufferStore": "buffer",
    "Config": "config",
    "ConfigError": "config",
    "EngineAdapter": "engines.base",
    "EventSink": "engines.base",
    "CommandFailed": "engines.base",
    "CommandRequest": "engines.base",
    "safe_boundary": "safety",
    "safe_call": "safety",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from .agent import install_agent
    from .buffer import BufferStore
    from .config import Config, ConfigError
    from .engines.base import CommandFailed, CommandRequest, EngineAdapter, EventSink
    from .framework import BareFrameworkAdapter
    from .runtime import AgentRuntime
    from .safety import safe_boundary, safe_call
    from .statechart import RuntimeState


def _log_scrubber() -> Any:
    from .redaction import log_scrubber

    return log_scrubber()


# Every agent log record is scrubbed before any handler sees it. logs.py is the bottom layer and
# cannot import the redactor, so the package wires it in here: this runs before any submodule.
_logs.set_scrubber_factory(_log_scrubber)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'z4j_bare' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
