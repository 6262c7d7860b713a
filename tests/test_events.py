"""Event stamping: ids the brain accepts for dedupe, occurred_at identical to isoformat()."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from z4j_bare.events import build_event, encode_event, new_event_id, occurred_at_text


def test_event_ids_are_uuid4():
    for _ in range(2000):
        parsed = uuid.UUID(new_event_id())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("ts", [0.0, 1795899890.643607, 1795899890.9999996, 1795899890.0000004, 1_700_000_000.5, 4102444800.000001])
def test_occurred_at_matches_isoformat(ts):
    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
    assert occurred_at_text(ts) == expected
    assert datetime.fromisoformat(occurred_at_text(ts)).timestamp() == pytest.approx(ts, abs=1e-6)


def test_encoded_event_is_canonical_and_complete():
    text = encode_event(build_event("task.started", "celery", "abc", {"b": 1, "a": "Zoë"}, 1795899890.5))
    event = json.loads(text)
    assert list(event) == sorted(event) and set(event) == {"id", "kind", "engine", "task_id", "occurred_at", "data"}
    assert json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text


def test_forked_children_do_not_repeat_parent_ids():
    import os

    new_event_id()  # fill this thread's pool
    read, write = os.pipe()
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.write(write, (new_event_id() + "\n").encode())
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(write)
    child_ids = os.read(read, 4096).decode().split()
    parent_next = new_event_id()
    assert len(set(child_ids + [parent_next])) == 3


@pytest.mark.parametrize("task_id", ["abc", None, 'q"uote', "ünï"])
def test_event_text_fast_path_equals_canonical_encoding(task_id):
    from z4j_bare.events import event_text

    data = {"b": [1, 2.5, None], "a": {"z": "Zoë", "y": True}, "task_name": "x.y"}
    text = event_text("task.started", "celery", task_id, data, 1795899890.643607)
    event = json.loads(text)
    assert text == encode_event(event)  # canonical: sorted keys, compact, UTF-8 kept
    expected = build_event("task.started", "celery", task_id, data, 1795899890.643607)
    assert {k: v for k, v in event.items() if k != "id"} == {k: v for k, v in expected.items() if k != "id"}


@pytest.mark.parametrize("value", [
    {"b": [1, 2.5, None, True], "a": {"z": "Zoë \u2028 \"q\"", "y": -0.0}, "c": 10**30},
    [], {}, "plain", 1e-7, ["\ud800x"],
])
def test_canonical_tree_text_is_canonical_text(value):
    from z4j_bare.protocol import canonical_text
    from z4j_bare.protocol.canonical import canonical_tree_text, json_string

    assert canonical_tree_text(value) == canonical_text(value)
    if isinstance(value, str):
        assert json_string(value) == canonical_text(value)


def test_canonical_tree_text_refuses_what_canonical_text_refuses():
    from z4j_bare.protocol.canonical import canonical_tree_text

    with pytest.raises(ValueError):
        canonical_tree_text({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_tree_text({"x": object()})
