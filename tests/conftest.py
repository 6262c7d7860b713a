from __future__ import annotations

import importlib.util
import os

import pytest

from z4j_bare import safety

# django-celery-beat cannot share a virtualenv with rq-scheduler (both install a top-level
# `crontab` module): its tests run in their own (`make test-djbeat`, part of `make test`).
collect_ignore = [] if importlib.util.find_spec("django_celery_beat") else ["test_celerybeat_django.py"]


@pytest.fixture(autouse=True)
def _isolate_agent(monkeypatch, tmp_path):
    """Each test gets its own Z4J_HOME, no Z4J_* leaking in from the environment, strict safety."""
    for name in list(os.environ):
        if name.startswith("Z4J_") and not name.startswith("Z4J_TEST_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("Z4J_HOME", str(tmp_path / "z4j-home"))
    safety.set_strict_mode(True)
    yield
    safety.set_strict_mode(False)
    from z4j_bare import agent

    runtime = agent.current_runtime()
    if runtime is not None:
        runtime.stop(timeout=2)
    agent._reset_for_tests()
    # structlog.testing.capture_logs() leaves structlog "configured" (with its default printing
    # pipeline): the agent would then hand later tests' records to that pipeline, as it does for
    # a host that configured structlog.
    import structlog

    structlog.reset_defaults()
