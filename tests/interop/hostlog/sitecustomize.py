"""Interop worker processes are hosts that log the agent at INFO to stderr (their log file).

The agent never configures logging itself; the interop tests read its records in the workers'
logs (one ``runtime.session_open`` per worker, no ``runtime.session_failed``, resends only for
withheld acks), so these hosts set up what a user would: a handler and a level for ``z4j_bare``.
On PYTHONPATH only for the interop workers (tests/interop/workers.py).
"""

import logging
import sys

_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
_agent = logging.getLogger("z4j_bare")
_agent.addHandler(_handler)
_agent.setLevel(logging.INFO)
_agent.propagate = False  # the worker's own root handler would print each record a second time
