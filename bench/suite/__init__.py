"""``make bench``: our agent and the reference agent (z4j-bare/celery/rq 1.13.0), same workloads, same brains.

The reference agent lives in its own virtualenv (bench/refagent.py) and only ever runs as a
separate process with that venv's interpreter; nothing here imports it.
"""
