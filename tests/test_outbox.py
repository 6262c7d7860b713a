"""Outbox batching: frame sizes adapt to the brain's ack rate; acks delete, resends keep text."""

from __future__ import annotations

import json

import pytest

from z4j_bare.buffer import BufferStore
from z4j_bare.outbox import MIN_BATCH_EVENTS, Outbox
from z4j_bare.protocol import SessionBinding, Signer

KEY = b"k" * 32
BINDING = SessionBinding("a", "p", "s")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def buffer(tmp_path):
    store = BufferStore(tmp_path / "b.sqlite")
    store.append_many([("event", json.dumps({"id": str(i), "kind": "task.received"}), "celery") for i in range(20000)])
    yield store
    store.close()


def _wire(signer, sent):
    """The transport's send, reduced to what these tests read: the signed bytes."""
    return lambda frame: sent.append(frame.sign(signer))


def _frames(sent):
    return [json.loads(raw) for raw in sent]


@pytest.mark.parametrize("rate, expected", [(100.0, 1000), (20.0, 200), (5.0, MIN_BATCH_EVENTS), (100_000.0, 5000)])
def test_batch_size_follows_ack_rate(buffer, rate, expected):
    clock, sent = Clock(), []
    outbox = Outbox(buffer, max_inflight=1, clock=clock)
    signer = Signer(KEY, BINDING)
    for _ in range(8):
        outbox.pump(_wire(signer, sent))
        frame = _frames(sent)[-1]
        clock.now += len(frame["payload"]["events"]) / rate
        outbox.on_ack(frame["id"])
    assert outbox.batch_target == pytest.approx(expected, rel=0.05)


def test_resend_keeps_event_text_and_waits_for_head_of_line(buffer):
    clock, sent = Clock(), []
    outbox = Outbox(buffer, max_inflight=2, resend_after=90, clock=clock)
    signer = Signer(KEY, BINDING)
    outbox.pump(_wire(signer, sent))
    first, second = _frames(sent)
    clock.now = 60
    outbox.on_ack(first["id"])  # second becomes head at t=60
    clock.now = 140
    assert outbox.resend_due(_wire(signer, sent)) == 0
    clock.now = 151
    assert outbox.resend_due(_wire(signer, sent)) == len(second["payload"]["events"])
    again = _frames(sent)[-1]
    assert again["id"] == second["id"] and again["payload"] == second["payload"] and again["seq"] > second["seq"]


def test_ack_deletes_exactly_the_batch(buffer):
    sent = []
    outbox = Outbox(buffer, max_inflight=1)
    outbox.pump(_wire(Signer(KEY, BINDING), sent))
    n = len(_frames(sent)[0]["payload"]["events"])
    assert outbox.on_ack(_frames(sent)[0]["id"]) == n
    assert buffer.depth() == 20000 - n
    assert outbox.on_ack("ev_unknown") == 0


def test_withheld_ack_is_resent_even_while_later_batches_are_acked(buffer):
    clock, sent = Clock(), []
    outbox = Outbox(buffer, max_inflight=3, resend_after=90, clock=clock)
    signer = Signer(KEY, BINDING)
    outbox.pump(_wire(signer, sent))
    first, second, third = _frames(sent)
    for t, frame in ((30, second), (60, third)):  # the brain withholds the first ack only
        clock.now = t
        outbox.on_ack(frame["id"])
    clock.now = 89
    assert outbox.resend_due(_wire(signer, sent)) == 0
    clock.now = 91
    assert outbox.resend_due(_wire(signer, sent)) == len(first["payload"]["events"])
    assert _frames(sent)[-1]["id"] == first["id"]


def test_partial_batches_linger_but_full_batches_and_drain_do_not(tmp_path):
    store = BufferStore(tmp_path / "l.sqlite")
    clock, sent = Clock(), []
    outbox = Outbox(store, max_inflight=4, clock=clock)
    signer = Signer(KEY, BINDING)
    store.append("event", json.dumps({"id": "a"}), "celery")
    clock.now = 10.0
    assert outbox.pump(_wire(signer, sent)) == 1  # after a quiet spell: at once
    store.append("event", json.dumps({"id": "b"}), "celery")
    clock.now = 10.01
    assert outbox.pump(_wire(signer, sent)) == 0  # a partial batch waits for company
    clock.now = 10.06
    assert outbox.pump(_wire(signer, sent)) == 1  # ... but not longer than the linger
    store.append("event", json.dumps({"id": "c"}), "celery")
    clock.now = 10.07
    assert outbox.pump(_wire(signer, sent), linger=False) == 1  # the final drain never waits
    store.close()


def _framed_outbox(tmp_path, rows, inflight):
    """``rows`` events of ~230 bytes, 64 KiB frames, a batch target larger than a frame holds."""
    store = BufferStore(tmp_path / "w.sqlite")
    store.append_many([("event", json.dumps({"id": str(i), "pad": "x" * 200}), "celery") for i in range(rows)])
    clock = Clock()
    outbox = Outbox(store, max_inflight=inflight, clock=clock)
    outbox.reset(64 * 1024)
    outbox.batch_target = 5000
    clock.now = 10.0
    return store, outbox, clock


def test_frames_cut_by_the_max_frame_size_still_fill_the_window(tmp_path):
    # Each frame is "full" at the frame size: the window must fill with them instead of waiting
    # out the linger after every frame.
    store, outbox, clock = _framed_outbox(tmp_path, 5000, inflight=4)
    signer, sent = Signer(KEY, BINDING), []
    outbox.pump(_wire(signer, sent))
    clock.now = 10.001  # a moment after the first frame: still inside the linger
    outbox.pump(_wire(signer, sent))
    assert outbox.inflight == 4 and len(sent) == 4
    assert all(len(raw) <= 64 * 1024 for raw in sent)
    store.close()


def test_a_full_frame_waiting_goes_out_inside_the_linger(tmp_path):
    store, outbox, clock = _framed_outbox(tmp_path, 3000, inflight=2)
    signer, sent = Signer(KEY, BINDING), []
    outbox.pump(_wire(signer, sent))
    for frame in _frames(sent):
        outbox.on_ack(frame["id"])
    clock.now = 10.001  # inside the linger after those sends
    assert outbox.pump(_wire(signer, sent)) > 0, "full frames were held back as if partial"
    store.close()


def test_a_partial_frame_lingers_without_reading_the_buffer(tmp_path):
    """After a frame with less than a batch, the outbox does not even look at the buffer (a look
    is an ingest pass) until LINGER_SECONDS passed; a backlog is sent frame after frame at once."""
    from z4j_bare.outbox import LINGER_SECONDS

    store = BufferStore(tmp_path / "b.sqlite")
    reads = []
    real_read = store.read
    store.read = lambda **kw: reads.append(kw) or real_read(**kw)
    clock, sent = Clock(), []
    outbox = Outbox(store, max_inflight=4, clock=clock)
    signer = Signer(KEY, BINDING)
    try:
        store.append("event", json.dumps({"id": "one", "kind": "task.received"}), engine="celery")
        assert outbox.pump(_wire(signer, sent)) == 1  # nothing sent for a while: at once
        store.append("event", json.dumps({"id": "two", "kind": "task.received"}), engine="celery")
        reads.clear()
        clock.now += LINGER_SECONDS / 2
        assert outbox.pump(_wire(signer, sent)) == 0 and reads == []
        clock.now += LINGER_SECONDS
        assert outbox.pump(_wire(signer, sent)) == 1 and len(sent) == 2
        # a burst met after the linger: full frames go out back to back, the tail waits again
        store.append_many([("event", json.dumps({"id": str(i), "kind": "task.received"}), "celery")
                           for i in range(3 * outbox.batch_target + 10)])
        clock.now += LINGER_SECONDS * 1.5
        frames = len(sent)
        assert outbox.pump(_wire(signer, sent)) >= 2 * outbox.batch_target and len(sent) >= frames + 2
    finally:
        store.close()
