"""The reconnect schedule, without a network: full jitter under a doubling cap, reset when stable."""

from __future__ import annotations

import random

import pytest
from relay_client.backoff import Backoff, BackoffPolicy


def test_cap_doubles_from_initial_up_to_the_maximum() -> None:
    b = Backoff(BackoffPolicy(initial=0.5, maximum=6.0))
    assert [b.cap(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    assert b.cap(10_000) == 6.0  # no overflow however long we have been offline


def test_delays_are_full_jitter_within_the_cap() -> None:
    b = Backoff(BackoffPolicy(initial=0.1, maximum=2.0), rng=random.Random(7))
    for attempt in range(1, 40):
        d = b.next_delay()
        assert b.attempt == attempt
        assert 0.0 <= d <= b.cap(attempt)
    # full jitter: the draws spread over the whole window, not clustered at the cap
    b = Backoff(BackoffPolicy(initial=1.0, maximum=1.0), rng=random.Random(1))
    draws = [b.next_delay() for _ in range(2000)]
    assert min(draws) < 0.05 and max(draws) > 0.95
    assert 0.45 < sum(draws) / len(draws) < 0.55


def test_schedule_is_deterministic_for_a_seeded_rng() -> None:
    a = Backoff(BackoffPolicy(), rng=random.Random(42))
    b = Backoff(BackoffPolicy(), rng=random.Random(42))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_reset_only_after_a_stable_connection() -> None:
    b = Backoff(BackoffPolicy(initial=0.5, maximum=8.0, stable_after=10.0), rng=random.Random(0))
    for _ in range(4):
        b.next_delay()
    b.connection_ended(connected_for=0.3)  # flapping: keeps backing off
    assert b.attempt == 4
    b.connection_ended(connected_for=10.0)
    assert b.attempt == 0
    assert b.next_delay() <= 0.5  # the first retry after a stable connection is prompt


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"stable_after": -1}, {"initial": -1}]
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)
