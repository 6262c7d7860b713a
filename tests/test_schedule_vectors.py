"""Every vector of schedule-vectors.json that the pure protocol layer can reproduce.

The adapter vectors (static beat mapping, rq-scheduler rows) are checked in the adapter tests;
this file covers canonical JSON, digests, normalization, projections, snapshot framing, control
and the mutation request digest.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import pytest

from z4j_bare.protocol.schedules import (
    ExternalScheduleProtocolError,
    canonical_external_json,
    control_event,
    control_result_matches,
    external_digest,
    external_schedule_configuration,
    normalize_external_schedule,
    projection_body,
    snapshot_event,
    snapshot_frames,
    source_scope,
)

HERE = Path(__file__).parent
V = json.loads((HERE / "schedule_vectors.json").read_text("utf-8"))
SHARED = next((p for p in (HERE.parents[1] / "shared/spec/schedule-vectors.json",
                           Path("/work/shared/spec/schedule-vectors.json")) if p.exists()), None)


@pytest.mark.skipif(SHARED is None, reason="shared/spec is not beside this checkout")
def test_schedule_vectors_copy_matches_shared_spec():
    assert (HERE / "schedule_vectors.json").read_bytes() == SHARED.read_bytes(), \
        "refresh tests/schedule_vectors.json from shared/spec/schedule-vectors.json"


@pytest.mark.parametrize("case", V["source_scope"], ids=lambda c: c["owner"])
def test_source_scope(case):
    assert source_scope(case["owner"]) == case["source_scope"]


@pytest.mark.parametrize("case", V["source_scope_errors"], ids=lambda c: repr(c["owner"]))
def test_source_scope_errors(case):
    with pytest.raises(ExternalScheduleProtocolError, match=case["error"]):
        source_scope(case["owner"])


@pytest.mark.parametrize("case", V["canonical_external_json"], ids=lambda c: c["label"])
def test_canonical_external_json(case):
    text = canonical_external_json(case["input"])
    assert text.decode("utf-8") == case["canonical"]
    assert external_digest(case["input"]) == case["sha256"]


ERROR_INPUTS = {
    "NaN": {"x": math.nan},
    "Infinity": {"x": math.inf},
    "non-string key": {1: "a"},
    "set value": {"x": {1, 2}},
    "datetime value": {"x": datetime(2026, 1, 1)},
    "bytes value": {"x": b"x"},
}


@pytest.mark.parametrize("case", V["canonical_external_json_errors"], ids=lambda c: c["label"])
def test_canonical_external_json_errors(case):
    assert case["error_type"] == "ExternalScheduleProtocolError"
    with pytest.raises(ExternalScheduleProtocolError) as info:
        canonical_external_json(ERROR_INPUTS[case["label"]])
    assert str(info.value) == case["error"]


def test_canonical_tuple_note():
    note = V["canonical_external_json_tuple_note"]
    assert note["input_python"] == "{'t': (1, 2)}"
    assert canonical_external_json({"t": (1, 2)}).decode() == note["canonical"]


@pytest.mark.parametrize("case", V["normalize_external_schedule"], ids=lambda c: c["label"])
def test_normalize(case):
    row = normalize_external_schedule(case["input"], case["owner"])
    assert row == case["output"]
    assert list(row) == sorted(row) and len(row) == 20
    assert canonical_external_json(row).decode("utf-8") == case["canonical"]
    assert external_digest(row) == case["sha256"]


def _error_input(case):
    if isinstance(case["input"], str):  # a Python literal with a NaN that JSON cannot hold
        assert case["label"] == "NaN inside kwargs"
        return {"name": "a", "task_name": "t", "kwargs": {"x": math.nan}}
    return case["input"]


@pytest.mark.parametrize("case", V["normalize_external_schedule_errors"], ids=lambda c: c["label"])
def test_normalize_errors(case):
    with pytest.raises(ExternalScheduleProtocolError) as info:
        normalize_external_schedule(_error_input(case), case["owner"])
    assert str(info.value) == case["error"]


def test_configuration():
    case = V["external_schedule_configuration"]
    assert external_schedule_configuration(case["input"]) == case["output"]


@pytest.mark.parametrize("case", V["control_result_matches_desired"], ids=lambda c: c["label"])
def test_control_result_matches(case):
    assert control_result_matches(case["desired"], case["observed"]) is case["matches"]


def _snapshot(limit=None):
    snap = V["snapshot"]
    kwargs = {} if limit is None else {"limit": limit}
    return snapshot_frames(authority=snap["authority"], sequence=snap["sequence"], snapshot_id=snap["snapshot_id"],
                           schedules=snap["schedules_input"], **kwargs)


def test_snapshot_projection_and_frames():
    snap = V["snapshot"]
    a = snap["authority"]
    body = projection_body(stream_id=a["stream_id"], epoch_uuid=a["epoch_uuid"], epoch_number=a["epoch_number"],
                           sequence=snap["sequence"], kind="snapshot", owner=a["owner"], source_scope=a["source_scope"],
                           adapter_instance_id=a["adapter_instance_id"], complete=True, stable_source=True,
                           operation_id=None, schedules=snap["schedules_input"])
    assert body == snap["projection_body"]
    assert canonical_external_json(body).decode("utf-8") == snap["projection_canonical"]
    digest, frames = _snapshot()
    assert digest == snap["snapshot_digest"]
    assert len(frames) == len(snap["frames"])
    for (frame_body, frame_digest), want in zip(frames, snap["frames"], strict=True):
        assert frame_body == want["body"]
        assert canonical_external_json(frame_body).decode("utf-8") == want["canonical"]
        assert frame_digest == want["frame_digest"]
        event = snapshot_event(frame_body, frame_digest, snap["reason"], event_id="x", occurred_at="t")
        assert {k: v for k, v in event.items() if k not in ("id", "occurred_at")} == want["event"]


def test_snapshot_split_demo():
    demo = V["snapshot_split_demo"]
    digest, frames = _snapshot(limit=demo["row_payload_limit"])
    assert digest == V["snapshot"]["snapshot_digest"]
    assert [len(b["schedules"]) for b, _ in frames[:-1]] == demo["chunk_sizes"]
    sizes = [len(canonical_external_json({"schedules": b["schedules"]})) for b, _ in frames]
    assert sizes == demo["chunk_canonical_bytes"]
    assert [(b, d) for b, d in frames] == [(f["body"], f["frame_digest"]) for f in demo["frames"]]


def test_one_row_over_the_limit_fails_the_observation():
    with pytest.raises(ExternalScheduleProtocolError, match="exceeds the stable snapshot frame limit"):
        _snapshot(limit=500)


def test_control_projection_and_digests():
    c = V["control"]
    a = c["authority"]
    assert external_digest(c["prior_projection"]) == c["expected_projection_digest"]
    assert external_digest(c["desired_projection"]) == c["desired_projection_digest"]
    observed = normalize_external_schedule(c["observed_projection"], a["owner"])
    assert control_result_matches(c["desired_projection"], observed)
    body = projection_body(stream_id=a["stream_id"], epoch_uuid=a["epoch_uuid"], epoch_number=a["epoch_number"],
                           sequence=c["reserved_sequence"], kind="control", owner=a["owner"],
                           source_scope=a["source_scope"], adapter_instance_id=a["adapter_instance_id"], complete=False,
                           stable_source=True, operation_id=c["operation_id"], schedules=[observed])
    assert body == c["projection_body"]
    assert canonical_external_json(body).decode("utf-8") == c["projection_canonical"]
    assert external_digest(body) == c["payload_digest"]
    event = control_event(body, event_id="x", occurred_at="t")
    assert {k: v for k, v in event.items() if k not in ("id", "occurred_at")} == c["event"]


def test_mutation_request_digest_and_configuration():
    m = V["mutation_request"]
    assert external_digest(m["parameters"]) == m["request_digest"]
    expected = normalize_external_schedule(m["parameters"]["expected"], m["parameters"]["owner"])
    assert external_schedule_configuration(expected) == m["expected_configuration"]
    assert m["receipt"]["observed_configuration"] == m["expected_configuration"]


def test_rq_source_hash_inputs():
    for row in V["rqscheduler_rows"]["rows"]:
        assert canonical_external_json(row["source_hash_input"]).decode() == row["source_hash_input_canonical"]
        assert external_digest(row["source_hash_input"]) == row["schedule_fields"]["source_hash"]
        assert normalize_external_schedule(row["schedule_fields"], "rq-scheduler") == row["normalized"]
