"""Session fixtures for the interop suite: one real ``z4j==1.13.0`` brain per pytest session."""

from __future__ import annotations

import pytest

from .realbrain import BrainError, RealBrain, ensure_brain_venv


@pytest.fixture(scope="session")
def real_brain(tmp_path_factory: pytest.TempPathFactory):
    """A running real brain with a fresh Z4J_HOME, shared by every interop test.

    Installing or starting the brain failing is a test failure, never a skip: an interop run
    that silently proves nothing is worse than a red one.
    """
    problem = None
    try:
        ensure_brain_venv(log=lambda msg: print(msg, flush=True))
    except BrainError as exc:
        problem = f"cannot install the real brain for interop tests: {exc}"
    if problem:
        pytest.fail(problem, pytrace=False)
    brain = RealBrain(home=tmp_path_factory.mktemp("real-brain-home"))
    try:
        brain.start(timeout=120)
    except BrainError as exc:
        brain.stop()
        problem = f"cannot start the real brain: {exc}"
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield brain
    finally:
        brain.stop()


@pytest.fixture
def brain_creds(real_brain: RealBrain, request: pytest.FixtureRequest):
    """Fresh agent credentials per test, so sessions and worker slots never collide."""
    return real_brain.mint_agent(project="interop", name=request.node.name[:60])
