"""transport="auto": WebSocket, long-poll while a proxy on the path refuses the upgrade, and back."""

from __future__ import annotations

import logging

import pytest
from recording_engine import RecordingEngine
from upgrade_proxy import UpgradeRefusingProxy
from waiting import wait_for

from z4j_bare import RuntimeState
from z4j_bare.agent import build_runtime
from z4j_bare.config import Config
from z4j_bare.testing import LocalBrain

FAST = dict(heartbeat_seconds=1.0, stop_timeout=3.0, backoff_max_connection=1.0, backoff_max_protocol=1.0)


@pytest.fixture
def brain():
    with LocalBrain(heartbeat_interval=1) as b:
        yield b


def test_auto_falls_back_to_longpoll_behind_a_proxy_that_refuses_upgrades_and_comes_back(brain, caplog):
    caplog.set_level(logging.INFO, logger="z4j_bare")
    with UpgradeRefusingProxy(brain.port, status=502) as proxy:
        creds = brain.mint_agent()
        engine = RecordingEngine()
        runtime = build_runtime(Config.resolve(**{**creds.kwargs(), "brain_url": proxy.url}, **FAST, transport="auto"),
                                [engine])
        runtime.transports.ws_retry_seconds = 2.0
        runtime.start()
        wait_for(lambda: runtime.health()["transport"] == "longpoll" and runtime.state is RuntimeState.RUNNING,
                 what="a long-poll session", timeout=15.0)
        health = runtime.health()
        assert health["transport_mode"] == "auto" and "HTTP 502" in health["transport_fallback"]["reason"]
        connected = [e for e in runtime.trace if e["trigger"] == "connected"][0]
        assert connected["transport"] == "longpoll" and "HTTP 502" in connected["fallback"]
        for i in range(20):
            engine.emit_task(f"lp{i}", "task.received")
        assert runtime.flush(10)

        # Still refused after ws_retry_seconds: WebSocket is tried again, long-poll resumes at once.
        wait_for(lambda: proxy.refused >= 2, what="a second WebSocket try", timeout=15.0)
        wait_for(lambda: runtime.state is RuntimeState.RUNNING and runtime.health()["transport"] == "longpoll", timeout=15.0)
        retry = [e for e in runtime.trace if e["trigger"] == "reconnect"][0]
        assert "trying WebSocket again" in retry["reason"] and retry["retry_in_s"] == 0

        proxy.refuse_upgrades = False
        wait_for(lambda: runtime.health()["transport"] == "ws" and runtime.state is RuntimeState.RUNNING,
                 what="back on WebSocket", timeout=15.0)
        assert runtime.health()["transport_fallback"] is None
        for i in range(20):
            engine.emit_task(f"ws{i}", "task.received")
        assert runtime.flush(10)
        runtime.stop()
    assert brain.event_count() == 40
    warnings = [r for r in caplog.records if r.getMessage().startswith("transport.fallback_longpoll")
                and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, however often the upgrade is refused again
    assert any(r.getMessage().startswith("transport.websocket_restored") for r in caplog.records)


@pytest.mark.parametrize("transport", ["ws", "auto"])
def test_an_auth_refusal_of_the_upgrade_is_not_a_reason_to_fall_back(brain, transport):
    with UpgradeRefusingProxy(brain.port, status=401) as proxy:
        creds = brain.mint_agent()
        runtime = build_runtime(Config.resolve(**{**creds.kwargs(), "brain_url": proxy.url}, **FAST,
                                               transport=transport), [RecordingEngine()])
        runtime.start()
        wait_for(lambda: runtime.health()["backoff"] is not None, what="the auth backoff", timeout=15.0)
        health = runtime.health()
        assert health["backoff"]["failure_class"] == "auth" and health["transport_fallback"] is None
        assert health["transport"] == "ws" and runtime.state is RuntimeState.CONNECTING
        runtime.stop(1)


def test_ws_never_falls_back(brain):
    with UpgradeRefusingProxy(brain.port, status=502) as proxy:
        runtime = build_runtime(Config.resolve(**{**brain.mint_agent().kwargs(), "brain_url": proxy.url}, **FAST,
                                               transport="ws"), [RecordingEngine()])
        runtime.start()
        wait_for(lambda: runtime.health()["backoff"] is not None, what="a connect failure", timeout=15.0)
        assert runtime.health()["transport_fallback"] is None and runtime.health()["backoff"]["failure_class"] == "connection"
        runtime.stop(1)
