"""flatdata: the remembered-pieces encoder gives exactly what the redactor + canonical encoder give."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from z4j_bare.flatdata import FlatDataEncoder
from z4j_bare.protocol.canonical import canonical_tree_text
from z4j_bare.redaction import Redactor

KEYS = ["task_name", "queue", "worker", "pid", "result", "runtime_ms", "retries", "reason", "password", "api_key",
        "token", "exception_message", "traceback", "description", "note", "a", "b", "Authorization", "é", "x" * 300]
STRINGS = ["None", "42", "bench.count", "celery@host-1", "pf-ours-1a2b3c4d", "user@example.com", "sk_live_" + "a" * 30,
           "4111 1111 1111 1111", "redis://user:secret@host:6379/0", "password=hunter2", "Zoë \u2028 \"q\" \\", "\ud800",
           "", "x" * 5000, "AKIA" + "B" * 16, "a:b", "-"]
values = st.one_of(st.sampled_from(STRINGS), st.text(max_size=40), st.integers(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                   st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none())
flat = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), values, max_size=8)
REDACTORS = [Redactor(), Redactor(extra_key_patterns=["pid", "que.*"], extra_value_patterns=["bench"]),
             Redactor(max_event_bytes=1024, max_value_bytes=128)]


@pytest.mark.parametrize("redactor", REDACTORS, ids=["default", "extra-patterns", "small-caps"])
@settings(max_examples=400, deadline=None)
@given(data=flat)
def test_flat_text_is_the_redacted_canonical_text(redactor, data):
    enc = FlatDataEncoder(redactor)
    want = canonical_tree_text(redactor.scrub_data(data))
    for _ in range(2):  # the second time from remembered pieces
        got = enc.text(data)
        assert got is None or got == want


def test_typical_worker_events_take_the_fast_path_and_stay_redacted():
    enc = FlatDataEncoder(Redactor())
    started = {"task_name": "bench.count", "queue": "q", "worker": "celery@h", "pid": 123}
    succeeded = {"task_name": "bench.count", "queue": "q", "worker": "celery@h", "result": "None", "runtime_ms": 0.25}
    secret = {"task_name": "t", "queue": "q", "worker": "w", "result": "sk_live_" + "a" * 30, "runtime_ms": 1.5}
    for data in (started, succeeded, secret, started, succeeded, secret):
        assert enc.text(data) == canonical_tree_text(Redactor().scrub_data(data))
    assert "sk_live" not in enc.text(secret)
    assert enc.text({"args": [1]}) is None  # not flat: the general path


def test_remembered_pieces_are_bounded():
    from z4j_bare import flatdata

    enc = FlatDataEncoder(Redactor())
    for i in range(flatdata.MAX_REMEMBERED + 10):
        enc.text({"queue": f"q{i}"})
    assert len(enc._strings) <= flatdata.MAX_REMEMBERED
