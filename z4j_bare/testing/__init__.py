"""A protocol-faithful local z4j brain for tests, demos and trying the agent without a server.

    from z4j_bare.testing import LocalBrain

    with LocalBrain() as brain:
        creds = brain.mint_agent()
        ...  # install_agent(**creds.kwargs(), engines=[...])
        brain.wait_for_events(1)

Needs the ``brain`` extra (``websockets``). See docs/local-brain.md.
"""

try:
    import websockets  # noqa: F401 - the brain's one optional dependency, checked first
except ModuleNotFoundError:
    raise ModuleNotFoundError("the local brain (z4j_bare.testing) needs websockets, which is not installed: "
                              "pip install 'z4j-bare[brain]'", name="websockets") from None

from .brain import LocalBrain
from .faults import BrainFaults
from .ingest import brain_event_id
from .records import AgentCredentials, CommandRecord

__all__ = ["LocalBrain", "AgentCredentials", "CommandRecord", "BrainFaults", "brain_event_id"]
