"""RQ adapter parts that need no worker: inert decoding, descriptions, config errors."""

from __future__ import annotations

import pickle

import pytest

from z4j_bare.engines import rq_jobinfo as info
from z4j_rq import RqEngineAdapter


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/z4j-should-never-exist",))


def test_decode_call_never_runs_or_imports_job_code(tmp_path, monkeypatch):
    data = pickle.dumps(("app.jobs.send", None, (1, "x", _Boom()), {"token": "t", "n": {1, 2}}), protocol=5)
    name, args, kwargs = info.decode_call(data)
    assert name == "app.jobs.send" and args[:2] == [1, "x"]
    assert repr(args[2]) == "<posix.system>"  # a placeholder, os.system was never called
    assert kwargs["n"] == {1, 2}
    assert info.func_name_from_data(data) == "app.jobs.send"
    import os
    assert not os.path.exists("/tmp/z4j-should-never-exist")


def test_func_name_from_truncated_and_json_data():
    data = pickle.dumps(("a.b.c", None, ("y" * 10_000,), {}), protocol=5)
    assert info.func_name_from_data(data[:64]) == "a.b.c"
    assert info.decode_call(b'["m.f", null, [1], {"k": 2}]') == ("m.f", [1], {"k": 2})
    assert info.decode_call(b"\x80garbage") == (None, None, None)


def test_call_description_hides_keyword_values():
    assert info.call_description("m.f", [1, "a"], {"password": "p", "x": 1}, "m.f(1, 'a', password='p', x=1)") == \
        "m.f(1, 'a', password=[REDACTED], x=[REDACTED])"
    assert info.call_description("m.f", None, None, "nightly report") == "nightly report"
    assert info.call_description("m.f", None, None, "m.f(secret='s')") == "m.f(…)"


def test_exception_summary_and_times():
    tb = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: boom 7\n"
    assert info.exception_summary(tb) == "ValueError: boom 7"
    assert info.to_epoch(b"2026-01-01T00:00:00.500000Z") == 1767225600.5
    assert info.stream_id_epoch(b"1767225600500-0") == 1767225600.5


def test_adapter_configuration_errors_are_clear(monkeypatch):
    monkeypatch.delenv("Z4J_RQ_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="redis_url"):
        RqEngineAdapter()
    with pytest.raises(ValueError, match="not a valid Redis URL"):
        RqEngineAdapter(redis_url="http://nope")
    adapter = RqEngineAdapter(redis_url="redis://:s3cret-pass@127.0.0.1:6379/11")
    assert "s3cret" not in repr(adapter)
    assert adapter.name == "rq" and adapter.safe_retry_by_reference
    assert "retry_by_reference_v1" in adapter.advertised_capabilities()


def test_health_reports_broken_broker_without_raising():
    adapter = RqEngineAdapter(redis_url="redis://127.0.0.1:1/0", queues=["q"])
    health = adapter.health()
    assert health["broker_connected"] is False and health["broker_error"]
    assert adapter.queue_depth("q") is None
