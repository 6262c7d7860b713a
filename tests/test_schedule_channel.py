"""The schedule channel at the frame level, against the local brain's schedule logic."""

from __future__ import annotations

import pytest
from schedule_harness import FakeSession, MemoryAdapter, make_link

from z4j_bare.protocol.schedules import RUNTIME_FEATURE, external_digest
from z4j_bare.redaction import Redactor
from z4j_bare.schedules.store import ScheduleStore
from z4j_bare.testing.schedules import BrainSchedules


@pytest.fixture
def memory():
    adapter = MemoryAdapter()
    adapter.add("mem-1", name="memory-nightly", args=["memory"])
    adapter.add("mem-2", name="memory-hourly", kind="interval", expression="3600")
    return adapter


@pytest.fixture
def link(tmp_path, memory):
    lk = make_link(tmp_path, [memory])
    yield lk
    lk.channel.stop()


def test_hello_advertises_schedulers_capabilities_and_the_feature(link):
    hello = link.channel.hello_fields()
    assert hello["schedulers"] == ["bars-memory"]
    assert hello["capabilities"]["bars-memory"] == sorted(hello["capabilities"]["bars-memory"])
    assert "external_schedule_stable_snapshot_v1" in hello["capabilities"]["bars-memory"]
    assert hello["runtime_features"] == [RUNTIME_FEATURE]


def test_nothing_is_sent_before_activation(link, memory):
    link.channel.session_changed(FakeSession("s1", 1_048_576))
    memory.sink("created", None)
    assert link.channel.execute("schedule.resync", {}, {"type": "project", "id": "default"}) == {"schedulers_drained": 1}
    assert link.pump() == 0 and link.batches == []


def test_activation_snapshot_is_accepted_and_lists_the_rows(link):
    [(status, result, error)] = link.open_session()
    assert status == "success", error
    stream = link.stream("bars-memory")
    assert result == {"scheduler": "bars-memory", "stream_id": stream.stream_id, "epoch_uuid": stream.epoch_uuid,
                      "epoch_number": stream.epoch_number, "sequence": 1,
                      "adapter_instance_id": stream.adapter_instance_id, "schedule_count": 2, "frame_count": 2}
    assert stream.phase == "ACTIVE" and stream.accepted == 1
    assert {r["name"] for r in link.rows()} == {"memory-nightly", "memory-hourly"}
    assert link.dispositions == ["staged", "applied"] and not link.withheld


def test_resync_and_signals_take_the_next_sequences(link, memory):
    link.open_session()
    status, result, _ = link.command("schedule.resync", {}, {"type": "project", "id": "default"})
    assert (status, result) == ("success", {"schedulers_drained": 1})
    memory.add("mem-3", name="memory-weekly")
    summary = link.channel.snapshot("bars-memory", "signal:created", only_if_changed=True)
    assert summary["sequence"] == 3
    assert link.channel.snapshot("bars-memory", "signal:updated", only_if_changed=True) is None  # nothing changed
    link.pump()
    assert link.stream("bars-memory").accepted == 3
    assert "memory-weekly" in {r["name"] for r in link.rows()}


def test_control_disable_applies_through_the_projection(link, memory):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_enable("default", row["id"], False)
    assert action == "schedule.external.control"
    status, result, error = link.command(action, params, target)
    assert status == "success", error
    assert result == {"operation_id": params["operation_id"], "sequence": 2, "projection_buffered": True,
                      "deduplicated": False}
    assert memory.rows["mem-1"].is_enabled is False
    assert link.row("memory-nightly")["is_enabled"] is False
    assert link.brain.control_status(params["operation_id"]) == "APPLIED"
    # a re-delivery of the same operation is answered from the store, no second projection
    again = link.channel.execute(action, params, target)
    assert again["deduplicated"] is True and link.stream("bars-memory").accepted == 2


def test_control_against_a_stale_sequence_fails_before_any_effect(link, memory):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_enable("default", row["id"], False)
    link.channel.snapshot("bars-memory", "periodic")  # sequence 2 reserved before the control arrives
    status, _, error = link.command(action, params, target)
    assert status == "failed" and "expected sequence is stale" in error
    assert memory.rows["mem-1"].is_enabled is True  # never touched


def test_control_refuses_foreign_fields(link):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_enable("default", row["id"], False)
    with pytest.raises(Exception, match="closed protocol vocabulary"):
        link.channel.execute(action, {**params, "extra": 1}, target)


def test_trigger_mutation_is_journaled_and_confirmed(link, memory):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_trigger("default", row["id"])
    status, receipt, error = link.command(action, params, target)
    assert status == "success", error
    assert memory.triggered == ["mem-1"]
    assert receipt["sequence"] == 2 and receipt["source_key"] == "mem-1"
    assert receipt["trigger_result"]["status"] == "success"
    assert link.brain.mutation_status(link.last_command_id, "completed", receipt) == "APPLIED"
    # the same request again: the stored receipt, no second trigger
    assert link.channel.execute(action, params, target) == receipt
    assert memory.triggered == ["mem-1"]
    with pytest.raises(Exception, match="uncertain prior attempt"):
        link.channel.execute(action, {**params, "expected_accepted_sequence": 9}, target)


def test_trigger_refuses_when_the_row_changed(link, memory):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_trigger("default", row["id"])
    memory.rows["mem-1"].args = ["changed"]
    status, result, error = link.command(action, params, target)
    assert status == "failed" and "changed before trigger" in error
    assert result == {"indeterminate": False, "operation": "trigger"} and memory.triggered == []


def test_a_bad_row_is_left_out_and_the_stream_keeps_going(link, memory):
    memory.add("mem-bad", name="x" * 300)
    memory.add("mem-dup", name="memory-nightly")
    [(status, result, _)] = link.open_session()
    assert status == "success" and result["schedule_count"] == 2
    assert link.channel.health_fields()["schedulers"]["bars-memory"]["rows_left_out"] == 2
    link.command("schedule.resync", {}, {"type": "project", "id": "default"})
    assert link.stream("bars-memory").accepted == 2


def test_an_unreadable_inventory_fails_activation_and_burns_no_sequence(link, memory):
    memory.fail_list = True
    [(status, _, error)] = link.open_session()
    assert status == "failed" and "not durably buffered" in error
    assert link.batches == []


def test_a_new_session_gets_a_new_epoch_and_starts_at_one(link):
    link.open_session()
    link.command("schedule.resync", {}, {"type": "project", "id": "default"})
    first = link.stream("bars-memory").epoch_number
    link.close_session()
    assert link.channel.snapshot("bars-memory", "periodic") is None  # the authority died with the session
    [(status, result, _)] = link.open_session()
    assert status == "success" and result["sequence"] == 1 and result["epoch_number"] > first
    assert link.stream("bars-memory").accepted == 1 and link.stream("bars-memory").phase == "ACTIVE"


def test_split_snapshot_frames_are_assembled(tmp_path):
    adapter = MemoryAdapter()
    for i in range(40):
        adapter.add(f"k{i:02d}", name=f"row-{i:02d}", kwargs={"pad": "p" * 200})
    lk = make_link(tmp_path, [adapter])
    try:
        [(status, result, _)] = lk.open_session(max_frame=8192)
        assert status == "success" and result["frame_count"] > 2
        assert len(lk.rows()) == 40 and lk.stream("bars-memory").accepted == 1
        assert all(len(b["events"]) >= 1 for b in lk.batches)
    finally:
        lk.channel.stop()


def test_schedule_args_are_redacted_and_trigger_still_matches(tmp_path):
    adapter = MemoryAdapter()
    adapter.add("mem-s", name="with-secret", kwargs={"password": "hunter2", "dsn": "postgres://u:pw@db/x"},
                args=["token=abcdef1234567890"])
    lk = make_link(tmp_path, [adapter], redactor=Redactor())
    try:
        lk.open_session()
        row = lk.row("with-secret")
        assert "hunter2" not in str(row) and "pw@db" not in str(row)
        action, target, params = lk.brain.plan_trigger("default", row["id"])
        status, receipt, error = lk.command(action, params, target)
        assert status == "success", error
        assert lk.brain.mutation_status(lk.last_command_id, "completed", receipt) == "APPLIED"
        assert "hunter2" not in str(receipt)
    finally:
        lk.channel.stop()


def test_restart_keeps_the_store_and_a_crash_after_reserving_leaves_no_gap(tmp_path, memory):
    brain = BrainSchedules()
    lk = make_link(tmp_path, [memory], brain=brain)
    lk.open_session()
    stream_id = lk.stream("bars-memory").stream_id
    lk.channel.snapshot("bars-memory", "periodic")  # sequence 2 reserved and written, never sent: "crash"
    store = ScheduleStore(tmp_path / "s.sqlite")
    assert store.authority("bars-memory", _scope()).last_sequence == 2
    assert {f.sequence for f in store.pending("bars-memory", lk.stream("bars-memory").epoch_uuid)} == {2}
    store.close()
    lk.brain.on_session_closed(lk.session_id)  # the process died: the brain fences the session
    lk2 = make_link(tmp_path, [memory], brain=brain)  # same file, new process generation
    [(status, result, error)] = lk2.open_session()
    assert status == "success", error
    assert result["sequence"] == 1 and result["stream_id"] == stream_id
    assert lk2.stream("bars-memory").accepted == 1 and not lk2.withheld
    assert lk2.channel.store.pending_count() == 0  # the older epoch's frame is gone
    lk2.channel.stop()


def test_legacy_trigger_now_calls_the_adapter(link, memory):
    link.open_session()
    status, result, _ = link.command("schedule.trigger_now", {"schedule_id": "mem-2", "scheduler": "bars-memory"},
                                     {"type": "schedule", "id": "x", "scheduler": "bars-memory"})
    assert status == "success" and memory.triggered == ["mem-2"] and result["schedule_id"] == "mem-2"
    status, _, error = link.command("schedule.nope", {}, {})
    assert status == "failed" and "unrecognized schedule action" in error


def _scope():
    from z4j_bare.protocol.schedules import source_scope

    return source_scope("bars-memory")


def test_digest_helper_is_stable():
    assert external_digest({"a": 1}) == external_digest({"a": 1})


def test_a_polled_scheduler_sends_a_snapshot_only_when_its_rows_change(tmp_path):
    import time

    adapter = MemoryAdapter()
    adapter.poll_seconds = 0.05
    adapter.add("a", name="first")
    lk = make_link(tmp_path, [adapter])
    try:
        lk.open_session()
        time.sleep(0.4)
        lk.pump()
        assert lk.stream("bars-memory").accepted == 1  # polled, unchanged: nothing sent
        adapter.add("b", name="second")
        deadline = time.monotonic() + 10
        while lk.stream("bars-memory").accepted < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            lk.pump()
        assert lk.stream("bars-memory").accepted == 2 and len(lk.rows()) == 2
    finally:
        lk.channel.stop()


def test_periodic_resync_and_coalesced_signals(tmp_path):
    import time

    adapter = MemoryAdapter()
    adapter.add("a", name="first")
    lk = make_link(tmp_path, [adapter], store_name="p.sqlite", periodic_seconds=0.3)
    try:
        lk.open_session()
        deadline = time.monotonic() + 10
        while lk.stream("bars-memory").accepted < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            lk.pump()
        assert lk.stream("bars-memory").accepted >= 3  # unchanged rows, still re-sent every period
        reasons = [e["data"]["reason"] for b in lk.batches for e in b["events"]]
        assert reasons[0] == "activation" and "periodic" in reasons
    finally:
        lk.channel.stop()


def test_a_burst_of_signals_coalesces_into_one_observation(link, memory):
    import time

    link.open_session()
    for i in range(5):
        memory.add(f"s{i}", name=f"signalled-{i}")
    with link.channel.streams.states["bars-memory"].lock:  # a running observation: the burst piles up behind it
        for _ in range(5):
            memory.sink("created", None)
    deadline = time.monotonic() + 10
    while link.stream("bars-memory").accepted < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        link.pump()
    time.sleep(0.3)  # nothing else may follow: the rows did not change again
    link.pump()
    reasons = [e["data"]["reason"] for b in link.batches for e in b["events"]
               if e["data"]["external_snapshot_frame"]["frame_kind"] == "terminal"]
    assert reasons[0] == "activation" and len(reasons) == 2 and len(link.rows()) == 7
    assert reasons[1] in ("signal:coalesced", "signal:created")


def test_an_unacked_snapshot_is_sent_again(tmp_path, memory):
    from z4j_bare.schedules.outbound import RESEND_AFTER_SECONDS

    now = [0.0]
    lk = make_link(tmp_path, [memory], clock=lambda: now[0])
    try:
        lk.open_session()
        sent = []
        lk.channel.snapshot("bars-memory", "periodic")
        lk.controls.pump(sent.append)  # "lost": the brain never sees it
        assert len(sent) == 1 and lk.controls.pump(sent.append) == 0
        now[0] = RESEND_AFTER_SECONDS + 1  # sooner than the runtime's default for other frames
        assert lk.controls.pump(sent.append) == 1 and sent[1] == sent[0]
        assert lk.brain.stream("default", "bars-memory").accepted == 1
        lk.pump()  # nothing left queued: the resend is still awaiting its ack
        assert lk.stream("bars-memory").accepted == 1 and lk.channel.store.pending_count() == 2  # rows + terminal
        now[0] = 2 * RESEND_AFTER_SECONDS + 2
        lk.pump()  # sent again and acked this time: the store's copy is gone
        assert lk.stream("bars-memory").accepted == 2 and lk.channel.store.pending_count() == 0
    finally:
        lk.channel.stop()


def test_legacy_enable_disable_change_the_scheduler_and_resnapshot(link, memory):
    link.open_session()
    target = {"type": "schedule", "id": "x", "scheduler": "bars-memory"}
    status, _, error = link.command("schedule.disable", {"schedule_id": "mem-1"}, target)
    assert status == "success", error
    assert memory.rows["mem-1"].is_enabled is False and link.row("memory-nightly")["is_enabled"] is False
    status, _, error = link.command("schedule.enable", {}, {**target, "schedule_id": "mem-1"})
    assert status == "success" and link.row("memory-nightly")["is_enabled"] is True
    status, _, error = link.command("schedule.disable", {}, {"type": "schedule", "scheduler": "bars-memory"})
    assert status == "failed" and error == "target.schedule_id required"
    status, _, error = link.command("schedule.disable", {"schedule_id": "nope"}, target)
    assert status == "failed" and "not found" in error


def test_a_control_for_an_authority_that_ended_with_its_session_touches_nothing(link, memory):
    link.open_session()
    row = link.row("memory-nightly")
    action, target, params = link.brain.plan_enable("default", row["id"], False)
    link.close_session()  # the session ends between the control's delivery and its execution
    with pytest.raises(Exception, match="holds none .*session that granted it has ended"):
        link.channel.execute(action, params, target)
    link.open_session()  # a new epoch: the old control names the one before it
    with pytest.raises(Exception, match=r"names epoch 1, bars-memory holds epoch 2"):
        link.channel.execute(action, params, target)
    assert memory.rows["mem-1"].is_enabled is True
