"""Compatibility import path: ``from z4j_celery import CeleryEngineAdapter``."""

from z4j_bare.engines.celery import CeleryEngineAdapter

__all__ = ["CeleryEngineAdapter"]
