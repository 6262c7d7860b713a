"""The redactor built after install_agent returns: same redaction, failures still at install."""

from __future__ import annotations

import os
import threading

import pytest

from z4j_bare.config import Config
from z4j_bare.redaction import Redactor
from z4j_bare.redaction_deferred import DeferredRedactor

CREDS = {"brain_url": "http://127.0.0.1:9", "token": "t" * 40, "hmac_secret": "A" * 43, "project_id": "p"}


def test_deferred_redactor_is_the_built_one_once_used():
    built = []

    def build():
        built.append(1)
        return Redactor(max_event_bytes=4096)

    r = DeferredRedactor(build, max_event_bytes=4096, max_value_bytes=8192)
    assert r.max_event_bytes == 4096 and not built  # known without building
    out = r.scrub_data({"password": "hunter2", "q": "user@example.com"})
    assert out == Redactor().scrub_data({"password": "hunter2", "q": "user@example.com"})
    assert r.scrub_text("token=abcdefabcdefabcdef") == Redactor().scrub_text("token=abcdefabcdefabcdef")
    r.warm()
    assert built == [1]


def test_callers_racing_the_warm_up_build_once():
    gate = threading.Event()
    built = []

    def build():
        gate.wait(5)
        built.append(1)
        return Redactor()

    r = DeferredRedactor(build, max_event_bytes=65536, max_value_bytes=8192)
    threads = [threading.Thread(target=r.warm)] + [threading.Thread(target=r.scrub, args=("x",)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert built == [1]


def test_a_child_forked_while_the_build_holds_the_lock_builds_its_own():
    gate = threading.Event()
    started = threading.Event()

    def build():
        started.set()
        gate.wait(10)
        return Redactor()

    r = DeferredRedactor(build, max_event_bytes=65536, max_value_bytes=8192)
    threading.Thread(target=r.warm, daemon=True).start()
    assert started.wait(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            gate.set()  # the child's copy of the event: its own build may run
            code = 0 if r.scrub_data({"api_key": "x"}) == {"api_key": "[REDACTED]"} else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    assert os.waitstatus_to_exitcode(status) == 0


def test_install_agent_defers_only_the_built_in_redactor(tmp_path):
    from z4j_bare.agent import _redactor

    assert isinstance(_redactor(Config.resolve(**CREDS, home=tmp_path)), DeferredRedactor)
    custom = _redactor(Config.resolve(**CREDS, home=tmp_path, redaction_extra_key_patterns=["tenant_.*"]))
    assert isinstance(custom, Redactor)  # built at once: a refused pattern fails install_agent


def test_events_emitted_right_after_install_are_redacted(tmp_path):
    from recording_engine import RecordingEngine

    from z4j_bare import install_agent
    from z4j_bare.agent import _reset_for_tests

    engine = RecordingEngine()
    rt = install_agent(engines=[engine], home=tmp_path, **CREDS)
    try:
        sink = rt.sinks[engine.name]
        assert sink.emit("task.received", "t1", {"task_name": "x", "kwargs": {"password": "hunter2"}})
        rows = rt.buffer.read(limit=10)
        assert rows and "hunter2" not in rows[-1].body and "[REDACTED]" in rows[-1].body
    finally:
        rt.stop(1)
        _reset_for_tests()
