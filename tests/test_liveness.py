"""The liveness judgement of a session (transport/liveness.py) on an injected clock."""

from __future__ import annotations

import pytest

from z4j_bare.transport.liveness import CEILING_SECONDS, FACTOR, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def _liveness(base: float = 30.0, **options) -> tuple[Liveness, Clock]:
    clock = Clock()
    return Liveness(base, clock=clock, **options), clock


def test_an_answered_ping_keeps_the_session_alive_and_silence_after_one_ends_it():
    live, clock = _liveness(30.0)
    assert live.ping_every == 5.0
    assert not live.ping_due()
    clock.advance(5.0)
    assert live.ping_due() and not live.ping_due()  # once per interval
    live.sent("a ping")
    live.heard(clock.advance(0.002))  # the pong
    assert live.verdict(clock.advance(60)) is None  # nothing owed: an idle brain is not a dead one
    live.sent("a ping")
    assert live.verdict(clock.advance(29.9)) is None
    reason = live.verdict(clock.advance(0.1))
    assert reason is not None and "after a ping" in reason and "limit 30.0 s" in reason


def test_only_the_first_unanswered_send_starts_the_wait():
    live, clock = _liveness(10.0)
    live.sent("an event batch")
    clock.advance(6)
    live.sent("a ping")  # still owed since the batch
    reason = live.verdict(clock.advance(4))
    assert reason is not None and "after an event batch" in reason and "10.0 s" in reason


def test_what_was_heard_before_the_send_does_not_answer_it():
    live, clock = _liveness(10.0)
    heard_at = clock.advance(1)
    live.sent("an event batch", clock.advance(1))
    live.heard(heard_at)  # read late, but it arrived before the batch went out
    assert live.verdict(clock.advance(10)) is not None


def test_the_limit_grows_with_the_slowest_answer_the_session_has_shown():
    live, clock = _liveness(5.0)
    live.sent("an event batch")
    live.heard(clock.advance(4.0))  # a busy brain: 4 s for an ack
    assert live.longest_answer == pytest.approx(4.0)
    assert live.limit == pytest.approx(FACTOR * 4.0)
    live.sent("an event batch")
    assert live.verdict(clock.advance(11.0)) is None  # past the base, within what this brain has shown
    assert live.verdict(clock.advance(1.0)) is not None


def test_the_limit_never_undercuts_the_outbox_expectation_and_is_capped():
    expected = [None]
    live, clock = _liveness(5.0, expected=lambda: expected[0])
    assert live.limit == 5.0
    expected[0] = 8.0  # the oldest batch holds 8 s of work at the ack rate the brain has shown
    assert live.limit == pytest.approx(24.0)
    expected[0] = 1000.0
    assert live.limit == CEILING_SECONDS


def test_a_transport_quiet_by_design_adds_its_quiet_time():
    live, _ = _liveness(30.0, quiet_seconds=40.0)
    assert live.limit == pytest.approx(70.0)


def test_small_limits_ping_more_often_and_bad_limits_are_refused():
    live, _ = _liveness(3.0)
    assert live.ping_every == pytest.approx(0.5)
    with pytest.raises(ValueError, match="base_limit"):
        Liveness(0)


def test_snapshot_for_health():
    live, clock = _liveness(30.0)
    live.sent("a ping")
    clock.advance(2.5)
    snap = live.snapshot()
    assert snap == {"heard_seconds_ago": 2.5, "answer_owed_seconds": 2.5, "limit_seconds": 30.0,
                    "longest_answer_seconds": 0.0}
