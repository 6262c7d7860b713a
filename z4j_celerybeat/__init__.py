"""Compatibility import path: ``from z4j_celerybeat import CeleryBeatSchedulerAdapter``."""

from z4j_bare.schedulers.celerybeat import CeleryBeatSchedulerAdapter, StaticBeatScheduleSource
from z4j_bare.schedulers.celerybeat_django import DjangoCeleryBeatSource

__all__ = ["CeleryBeatSchedulerAdapter", "DjangoCeleryBeatSource", "StaticBeatScheduleSource"]
