"""Reconnect backoff: per-class growth, caps, jitter bounds, reset."""

from __future__ import annotations

import pytest

from z4j_bare.backoff import Backoff
from z4j_bare.protocol import BACKOFF_POLICIES, BackoffClass


@pytest.mark.parametrize("cls", list(BackoffClass))
def test_grows_to_cap_with_bounded_jitter(cls):
    policy = BACKOFF_POLICIES[cls]
    low, high = Backoff(rand=lambda: 0.0), Backoff(rand=lambda: 1.0)
    delays = [low.next_delay(cls) for _ in range(20)]
    assert delays[0] == policy.initial
    assert delays == sorted(delays) and delays[-1] == policy.maximum
    assert high.next_delay(cls) == pytest.approx(policy.initial * (1 + policy.jitter))


def test_classes_are_independent_and_reset():
    b = Backoff(rand=lambda: 0.0)
    for _ in range(5):
        b.next_delay(BackoffClass.AUTH)
    assert b.next_delay(BackoffClass.CONNECTION) == 1.0
    assert b.streaks[BackoffClass.AUTH] == 5
    b.reset()
    assert b.next_delay(BackoffClass.AUTH) == 10.0 and b.streaks[BackoffClass.CONNECTION] == 0


def test_caps_from_config_lower_the_maximum():
    b = Backoff({BackoffClass.AUTH: 20.0}, rand=lambda: 0.0)
    assert [b.next_delay(BackoffClass.AUTH) for _ in range(4)] == [10.0, 20.0, 20.0, 20.0]


def test_an_attempt_that_waited_out_a_timeout_paces_itself():
    """A brain that accepts connections but answers nothing: each attempt already waited its
    timeout, so the next comes after the initial delay; fast failures grow as before."""
    b = Backoff(rand=lambda: 0.0)
    assert [b.next_delay(BackoffClass.CONNECTION) for _ in range(3)] == [1.0, 2.0, 4.0]
    paced = [b.next_delay(BackoffClass.CONNECTION, paced=True) for _ in range(6)]
    assert paced == [1.0] * 6 and b.streaks[BackoffClass.CONNECTION] == 9
    assert b.next_delay(BackoffClass.CONNECTION) == 8.0
