"""The slot watchdog's judgement of one pg_replication_slots reading."""

from __future__ import annotations

from relay.core.slot_health import assess

GB = 1024**3


def test_under_the_threshold_is_healthy() -> None:
    h = assess("reserved", GB // 4, 100, GB, 0.5)
    assert h.share == 0.25 and not h.over and h.problem is None and not h.lost


def test_at_the_threshold_is_a_problem() -> None:
    h = assess("extended", GB // 2, 0, GB, 0.5)
    assert h.over and h.problem is not None and h.problem.startswith("slot_wal_retained:")
    assert "50%" in h.problem


def test_unlimited_keep_size_gives_no_share() -> None:
    h = assess("reserved", 50 * GB, 0, None, 0.5)
    assert h.share is None and not h.over and h.problem is None
    assert h.as_dict()["retained_share"] is None


def test_lost_and_unreserved_slots() -> None:
    lost = assess("lost", 0, 0, GB, 0.5)
    assert lost.lost and lost.problem is not None and lost.problem.startswith("slot_lost:")
    unreserved = assess("unreserved", GB // 10, 0, GB, 0.5)
    assert unreserved.over and unreserved.problem is not None
    assert unreserved.problem.startswith("slot_unreserved:")


def test_missing_slot_and_negative_numbers() -> None:
    h = assess(None, -5, -7, GB, 0.5)
    assert h.wal_status == "missing" and h.retained_bytes == 0 and h.lag_bytes == 0 and not h.over
