"""Compatibility import path: ``from z4j_rqscheduler import RqSchedulerAdapter``."""

from z4j_bare.schedulers.rqscheduler import RqSchedulerAdapter

__all__ = ["RqSchedulerAdapter"]
