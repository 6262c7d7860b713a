"""z4j-bare: the framework-free z4j agent.

    from z4j_bare import install_agent
    from z4j_celery import CeleryEngineAdapter

    runtime = install_agent(engines=[CeleryEngineAdapter(celery_app=app)])
    runtime.health()      # for liveness/readiness probes
    runtime.stop()        # drain, close, join
"""

from .agent import install_agent
from .buffer import BufferStore
from .config import Config, ConfigError
from .engines.base import CommandFailed, CommandRequest, EngineAdapter, EventSink
from .framework import BareFrameworkAdapter
from .runtime import AgentRuntime
from .safety import safe_boundary, safe_call
from .statechart import RuntimeState

__version__ = "2.0.0"

__all__ = [
    "AgentRuntime",
    "BareFrameworkAdapter",
    "BufferStore",
    "CommandFailed",
    "CommandRequest",
    "Config",
    "ConfigError",
    "EngineAdapter",
    "EventSink",
    "RuntimeState",
    "install_agent",
    "safe_boundary",
    "safe_call",
    "__version__",
]
