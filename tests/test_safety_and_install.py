"""safe_boundary/safe_call never let an agent bug reach the host; install_agent documents every option."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from z4j_bare import install_agent, safe_boundary, safe_call, safety
from z4j_bare.config import OPTIONS, ConfigError


@pytest.fixture
def lenient():
    safety.set_strict_mode(False)
    yield
    safety.set_strict_mode(True)


def test_safe_call_swallows_counts_and_logs_type_only(lenient):
    def boom(secret):
        raise ValueError(f"bad {secret}")

    with capture_logs() as logs:
        assert safe_call(boom, "hunter2", site="t.boom", default="fallback") == "fallback"
    assert safety.error_counts()["t.boom"] >= 1
    assert logs[0]["error_type"] == "ValueError" and "hunter2" not in repr(logs)


def test_safe_boundary_decorator_forms(lenient):
    @safe_boundary
    def bare():
        raise RuntimeError

    @safe_boundary(site="t.deco", default=0)
    def configured():
        raise RuntimeError

    assert bare() is None and configured() == 0


def test_strict_mode_reraises():
    with pytest.raises(ZeroDivisionError):
        safe_call(lambda: 1 / 0)


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_exit_signals_pass_through(lenient, exc):
    def raiser():
        raise exc

    with pytest.raises(exc):
        safe_call(raiser)


def test_install_agent_docstring_lists_every_option():
    doc = install_agent.__doc__
    for opt in OPTIONS:
        assert opt.name in doc and (opt.env in doc or not opt.env_allowed), opt.name


def test_install_agent_without_configuration_names_what_is_missing():
    from recording_engine import RecordingEngine

    with pytest.raises(ConfigError) as info:
        install_agent(engines=[RecordingEngine()])
    for env in ("Z4J_BRAIN_URL", "Z4J_TOKEN", "Z4J_HMAC_SECRET", "Z4J_PROJECT_ID"):
        assert env in str(info.value)


def test_disabled_returns_none_even_without_credentials(monkeypatch):
    from recording_engine import RecordingEngine

    monkeypatch.setenv("Z4J_DISABLED", "1")
    assert install_agent(engines=[RecordingEngine()]) is None


def test_engines_must_have_distinct_names(tmp_path):
    from recording_engine import RecordingEngine
    from z4j_bare.testing import LocalBrain

    with LocalBrain() as brain, pytest.raises(ValueError, match="distinct name"):
        install_agent(engines=[RecordingEngine("celery"), RecordingEngine("celery")], **brain.mint_agent().kwargs())


def test_safe_str_never_raises_and_returns_plain_str():
    class Loud(str):
        pass

    class BadStr:
        def __str__(self) -> str:
            raise RuntimeError("hunter2")

        def __repr__(self) -> str:
            return "<BadStr>"

    class Hopeless:
        def __str__(self) -> str:
            raise RuntimeError

        __repr__ = __str__

    class OddStr:
        def __str__(self):  # type: ignore[no-untyped-def]
            return Loud("loud")

    assert safety.safe_str(ValueError("boom")) == "boom"
    assert safety.safe_str(BadStr()) == "<BadStr>"
    assert safety.safe_str(Hopeless()) == "<unrepresentable Hopeless>"
    assert type(safety.safe_str(OddStr())) is str and safety.safe_str(OddStr()) == "loud"
