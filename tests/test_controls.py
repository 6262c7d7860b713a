"""Control frames on their own: durable first, sent ahead, removed only once delivered."""

from __future__ import annotations

import json

import pytest

from z4j_bare.buffer import BufferStore
from z4j_bare.controls import ControlFrames, control_row
from z4j_bare.outbox import Outbox


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def buffer(tmp_path):
    store = BufferStore(tmp_path / "b.sqlite")
    yield store
    store.close()


class Wire:
    def __init__(self):
        self.sent: list[tuple[str, str, dict]] = []

    def __call__(self, frame):
        self.sent.append((frame.type, frame.id, dict(frame.payload)))


def _control_rows(buffer):
    return [r for r in buffer.read(0, 100) if r.kind != "event"]


def test_emit_is_durable_then_sent_then_removed_on_delivery(buffer):
    controls, wire = ControlFrames(buffer), Wire()
    outbox = Outbox(buffer, on_control_row=controls.adopt)
    controls.emit("command_ack", "c1", {"delivery_claim_token": "t"})
    assert [r.kind for r in _control_rows(buffer)] == ["command_ack"]
    assert controls.pump(wire) == 1 and wire.sent == [("command_ack", "c1", {"delivery_claim_token": "t"})]
    assert not controls.idle  # sent, not yet confirmed
    outbox.pump(lambda frame: None, linger=False)
    assert controls.pump(wire) == 0  # the row met by the outbox is the same frame: not sent again
    assert controls.settle(("command_ack", "c1")) is True
    assert controls.idle and _control_rows(buffer) == []


def test_delivered_before_the_outbox_met_its_row_is_deleted_when_met(buffer):
    controls, wire = ControlFrames(buffer), Wire()
    controls.emit("command_result", "c1", {"status": "success"})
    controls.pump(wire)
    controls.settle(("command_result", "c1"))
    [row] = _control_rows(buffer)
    controls.adopt(row)
    assert _control_rows(buffer) == [] and controls.pump(wire) == 0 and len(wire.sent) == 1


def test_rows_left_by_a_previous_process_are_sent(buffer):
    buffer.append("command_result", control_row("command_result", "old", {"status": "failed"}))
    buffer.append("command_ack", json.dumps({"id": "older-format", "payload": {"delivery_claim_token": None}}))
    controls, wire = ControlFrames(buffer), Wire()
    for row in _control_rows(buffer):
        controls.adopt(row)
    controls.pump(wire)
    assert [(t, i) for t, i, _ in wire.sent] == [("command_result", "old"), ("command_ack", "older-format")]
    controls.settle(("command_result", "old"))
    controls.settle(("command_ack", "older-format"))
    assert _control_rows(buffer) == []


def test_unconfirmed_frames_go_out_first_in_the_next_session(buffer):
    controls, wire = ControlFrames(buffer), Wire()
    for i in range(3):
        controls.emit("event_batch", f"ev_{i}", {"events": []}, row_kind="schedule")
    controls.pump(wire)
    controls.settle(("event_batch", "ev_1"))
    controls.emit("command_ack", "later", {})
    controls.reset()
    wire.sent.clear()
    controls.pump(wire)
    assert [i for _, i, _ in wire.sent] == ["ev_0", "ev_2", "later"]


def test_overdue_acks_are_resent_and_refused_frames_counted_as_loss(buffer):
    clock, wire = Clock(), Wire()
    controls = ControlFrames(buffer, resend_after=90, clock=clock)
    controls.emit("event_batch", "ev_a", {"events": []})
    controls.pump(wire)
    clock.now = 89
    assert controls.pump(wire) == 0
    clock.now = 90
    assert controls.pump(wire) == 1 and len(wire.sent) == 2
    controls.settle(("event_batch", "ev_a"), delivered=False, reason="415 from the brain")
    assert buffer.telemetry_loss()["content_rejected_frames"] == 1
    assert controls.idle and controls.rejected == 1


def test_unreadable_row_is_dropped_and_counted(buffer):
    buffer.append("command_result", "{not json")
    controls = ControlFrames(buffer)
    [row] = _control_rows(buffer)
    controls.adopt(row)
    assert _control_rows(buffer) == [] and buffer.telemetry_loss()["content_rejected_frames"] == 1


def test_a_frame_emitted_twice_is_sent_once(buffer):
    controls, wire = ControlFrames(buffer), Wire()
    controls.emit("command_ack", "c1", {})
    controls.emit("command_ack", "c1", {})
    controls.pump(wire)
    assert len(wire.sent) == 1


class Frames(Wire):
    """Keeps the Outgoing frames themselves (their events texts too)."""

    def __call__(self, frame):
        super().__call__(frame)
        self.frames.append(frame)

    def __init__(self):
        super().__init__()
        self.frames = []


def test_a_frame_its_producer_keeps_writes_no_row_and_calls_back_once_delivered(buffer):
    controls, wire, receipts = ControlFrames(buffer), Frames(), []
    controls.emit("command_ack", "c1", {})
    texts = ['{"id":"e1","kind":"schedule.snapshot"}', '{"id":"e2","kind":"schedule.snapshot"}']
    controls.emit("event_batch", "ev_kept", events=texts, settled=receipts.append)
    controls.emit("command_result", "c1", {"status": "success"})
    assert [r.kind for r in _control_rows(buffer)] == ["command_ack", "command_result"]  # no row for the kept frame
    assert controls.pump(wire) == 3
    assert [f.id for f in wire.frames] == ["c1", "ev_kept", "c1"]  # one FIFO: the result after the frame before it
    assert wire.frames[1].events == tuple(texts)  # spliced as they are, never re-encoded
    assert not controls.idle and controls.pending == 3
    controls.settle(("command_ack", "c1"))
    controls.settle(("command_result", "c1"))
    assert receipts == [] and not controls.idle
    controls.settle(("event_batch", "ev_kept"))
    assert receipts == [True] and controls.idle and controls.delivered == 3


def test_a_kept_frame_belongs_to_its_session(buffer):
    controls, wire, receipts = ControlFrames(buffer), Wire(), []
    controls.emit("event_batch", "ev_sent", events=["{}"], settled=receipts.append)
    controls.pump(wire)
    controls.emit("event_batch", "ev_queued", events=["{}"], settled=receipts.append)
    controls.emit("command_ack", "c1", {})
    controls.reset()  # a new session: the brain fenced whatever the kept frames were bound to
    wire.sent.clear()
    controls.pump(wire)
    assert [i for _, i, _ in wire.sent] == ["c1"] and receipts == []  # forgotten, not called back
    assert controls.settle(("event_batch", "ev_sent")) is False  # a late receipt is not ours any more
    controls.emit("event_batch", "ev_sent", events=["{}"], settled=receipts.append)  # its producer may send it again
    assert controls.pump(wire) == 1


def test_a_kept_frame_has_its_own_resend_time_and_a_refusal_is_reported_to_its_producer(buffer):
    clock, wire, receipts = Clock(), Wire(), []
    controls = ControlFrames(buffer, resend_after=90, clock=clock)
    controls.emit("event_batch", "ev_k", events=["{}"], settled=receipts.append, resend_after=20)
    controls.emit("event_batch", "ev_b", {"events": []})
    controls.pump(wire)
    clock.now = 20
    assert controls.pump(wire) == 1 and wire.sent[-1][1] == "ev_k"
    controls.settle(("event_batch", "ev_k"), delivered=False, reason="signed frame over the brain's limit")
    assert receipts == [False] and controls.rejected == 1
    assert buffer.telemetry_loss()["content_rejected_frames"] == 1


def test_a_failing_callback_is_logged_not_raised(buffer):
    controls, wire = ControlFrames(buffer), Wire()

    def broken(_delivered):
        raise RuntimeError("producer bug")

    controls.emit("event_batch", "ev_x", events=["{}"], settled=broken)
    controls.pump(wire)
    assert controls.settle(("event_batch", "ev_x")) is True and controls.idle


def test_an_event_batch_given_as_texts_is_durable_as_its_events(buffer):
    controls, wire = ControlFrames(buffer), Frames()
    controls.emit("event_batch", "ev_t", events=['{"id":"e1"}'])
    [row] = _control_rows(buffer)
    assert json.loads(row.body)["payload"] == {"events": [{"id": "e1"}]}  # a later process can send it
    controls.pump(wire)
    assert wire.frames[0].events == ('{"id":"e1"}',)
