"""z4j for Dramatiq: ``from z4j_dramatiq import DramatiqEngineAdapter``.

    broker = RedisBroker(url="redis://localhost:6379/0")
    dramatiq.set_broker(broker)
    DramatiqEngineAdapter(broker=broker)      # in the module you give to the dramatiq command

With the Z4J_* environment set, ``dramatiq app.module`` then runs one z4j agent process next to
its workers (started by dramatiq itself, see ``z4j_dramatiq.agent``). In other processes (web
apps, programmatic workers) call ``install_agent(engines=[adapter])``. See docs/dramatiq.md.
"""

from z4j_bare.engines import dramatiq_family as _family
from z4j_bare.engines.dramatiq import DramatiqEngineAdapter

from . import agent as _agent

_family.register_agent_entry(_agent.run)

__all__ = ["DramatiqEngineAdapter"]
