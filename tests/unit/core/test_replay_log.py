"""The replay log's promises, without Postgres: what it keeps, what it drops, what it holds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.core.changes import Lsn, format_position, parse_position, parse_stream_position, seq_before
from relay.core.replay_log import ENTRY_OVERHEAD, ReplayLog
from relay.core.stream import StreamIdentity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seq(lsn: int, index: int = 0) -> int:
    return (lsn << 32) | index


def test_positions_round_trip_and_order() -> None:
    s = seq(0x16B3748, 3)
    text = format_position(s)
    assert text == "00000000016B3748:00000003"
    assert parse_position(text) == s
    assert parse_position(text.lower()) == s
    assert format_position(seq(1, 0xFFFFFFFF)) < format_position(seq(2, 0))
    assert format_position(-1) == "0000000000000000:00000000"


@pytest.mark.parametrize(
    "bad", ["", "0/16B3748", "00000000016B3748", "x" * 25, 42, None, "00000000016B3748:0000000G"]
)
def test_bad_positions_are_clear_errors(bad: object) -> None:
    with pytest.raises(ValueError, match="16 hex digits, a colon and 8 hex digits"):
        parse_position(bad)


def test_positions_carry_their_stream_and_order_within_it() -> None:
    sid = StreamIdentity("7716215630931067960", 1, 16384, "relay").id
    a, b = format_position(seq(1, 0xFFFFFFFF), sid), format_position(seq(2, 0), sid)
    assert a == f"{sid}/0000000000000001:FFFFFFFF" and a < b
    assert parse_stream_position(b) == (sid, seq(2, 0))
    assert parse_stream_position(b.lower()) == (sid, seq(2, 0))  # ids compare upper-case
    # the legacy form (no stream id) still parses, with an empty stream: the server refuses it
    assert parse_stream_position("00000000016B3748:00000003") == ("", seq(0x16B3748, 3))
    bad_ones = ("/00000000016B3748:00000003", "ABC/00000000016B3748:00000003", f"{sid}:00000001:00000000")
    for bad in bad_ones:
        with pytest.raises(ValueError, match="stream id"):
            parse_stream_position(bad)


def test_stream_id_changes_with_every_part_of_the_identity() -> None:
    base = StreamIdentity("7716215630931067960", 1, 16384, "relay")
    others = [
        StreamIdentity("7716215630931067961", 1, 16384, "relay"),  # another cluster
        StreamIdentity("7716215630931067960", 2, 16384, "relay"),  # failover / PITR
        StreamIdentity("7716215630931067960", 1, 16385, "relay"),  # database re-created
        StreamIdentity("7716215630931067960", 1, 16384, "relay2"),  # another slot
    ]
    assert len({base.id, *(o.id for o in others)}) == 5
    assert base.id == StreamIdentity("7716215630931067960", 1, 16384, "relay").id  # stable
    assert len(base.id) == 16 and base.id == base.id.upper()


def test_restart_forgets_everything_even_for_a_lower_floor() -> None:
    """Another stream's positions may be lower than the old head: reset() would keep the old
    (higher) floor and head, and append() would then ignore every change of the new stream."""
    log = ReplayLog(clock=Clock())
    log.append(seq(500), "", b"x")
    log.restart(seq_before(100))
    assert len(log) == 0 and log.bytes == 0
    assert log.retained_from == log.head == seq_before(100)
    log.append(seq(120), "", b"y")
    assert [e[0] for e in log.after(seq_before(100), 10)] == [seq(120)]


def test_seq_before_is_just_before_a_transaction() -> None:
    assert seq_before(100) < seq(100, 0)
    assert seq_before(100) >= seq(99, 0xFFFFFFFF)
    assert seq_before(0) == -1


def test_after_returns_changes_past_a_position_in_order() -> None:
    log = ReplayLog(clock=Clock())
    for lsn in (10, 20):
        for i in range(3):
            log.append(seq(lsn, i), "ts", b"x")
    assert [e[0] for e in log.after(seq(10, 1), 10)] == [seq(10, 2), seq(20, 0), seq(20, 1), seq(20, 2)]
    assert [e[0] for e in log.after(seq(10, 1), 2)] == [seq(10, 2), seq(20, 0)]
    assert log.after(seq(20, 2), 10) == []
    assert log.after(-1, 1)[0][0] == seq(10, 0)
    assert log.head == seq(20, 2)


def test_replayed_appends_are_ignored() -> None:
    log = ReplayLog(clock=Clock())
    log.append(seq(10), "ts", b"a")
    log.append(seq(10), "ts", b"a")
    log.append(seq(5), "ts", b"a")
    assert len(log) == 1


def test_size_bound_evicts_oldest_and_moves_the_promise() -> None:
    log = ReplayLog(max_bytes=3 * (ENTRY_OVERHEAD + 10), clock=Clock())
    for i in range(5):
        log.append(seq(10 + i), "ts", b"0123456789")
    assert len(log) == 3
    assert log.bytes == 3 * (ENTRY_OVERHEAD + 10)
    assert log.retained_from == seq(11)
    assert not log.covers(seq(10))
    assert log.covers(seq(11))  # everything after 11 is held
    assert log.hold_lsn() == Lsn(11)  # a restart decodes from the last change let go
    assert log.evicted == 2


def test_time_window_evicts_on_evict() -> None:
    clock = Clock()
    log = ReplayLog(window_s=60, clock=clock)
    log.append(seq(10), "ts", b"a")
    clock.now += 30
    log.append(seq(20), "ts", b"b")
    clock.now += 31
    assert log.evict() == 1
    assert log.hold_lsn() == Lsn(10)
    clock.now += 30
    assert log.evict() == 1
    assert len(log) == 0 and log.bytes == 0
    assert log.hold_lsn() is None  # nothing held: the slot may be confirmed to the end
    assert log.covers(seq(20)) and not log.covers(seq(10))


def test_disabled_retention_keeps_nothing_but_tracks_the_head() -> None:
    log = ReplayLog(window_s=0, clock=Clock())
    log.append(seq(10), "ts", b"a")
    assert len(log) == 0 and log.head == seq(10)
    assert log.covers(seq(10)) and not log.covers(seq(9))
    assert log.hold_lsn() is None


def test_reset_after_a_lost_slot() -> None:
    log = ReplayLog(clock=Clock())
    for i in range(3):
        log.append(seq(10 + i), "ts", b"a")
    log.reset(seq_before(12))
    assert [e[0] for e in log.after(-1, 10)] == [seq(12)]
    assert not log.covers(seq(10))
    log.reset(seq_before(50))
    assert len(log) == 0 and log.head == seq_before(50)


def test_compaction_keeps_order_over_many_evictions() -> None:
    log = ReplayLog(max_bytes=100 * (ENTRY_OVERHEAD + 1), clock=Clock())
    for i in range(20_000):
        log.append(seq(1 + i), "ts", b"a")
    assert len(log) == 100
    assert [e[0] for e in log.after(seq(19_950), 100)] == [seq(1 + i) for i in range(19_950, 20_000)]
    assert log.stats()["changes"] == 100
    # evicted entries do not linger in the list (they would keep their bytes alive)
    assert len(log._entries) < len(log) + 1024


def test_a_fresh_window_holds_its_floor_so_restarts_keep_join_positions() -> None:
    clock = Clock()
    log = ReplayLog(window_s=60, clock=clock)
    log.reset(seq_before(100))  # the slot's confirmed position at startup
    assert log.hold_lsn() == Lsn(99)  # i.e. do not move the slot yet
    log.append(seq(120), "ts", b"a")
    assert log.hold_lsn() == Lsn(99)
    clock.now += 61
    log.evict()
    assert log.hold_lsn() is None  # everything is older than the window: let the slot go


def test_age_comes_from_the_commit_time_so_a_restart_does_not_renew_it() -> None:
    clock = Clock()
    wall = [1_800_000_000.0]
    log = ReplayLog(window_s=60, clock=clock, wall=lambda: wall[0])
    old = datetime.fromtimestamp(wall[0] - 50, tz=UTC).isoformat().replace("+00:00", "Z")
    new = datetime.fromtimestamp(wall[0] - 1, tz=UTC).isoformat().replace("+00:00", "Z")
    log.append(seq(10), old, b"a")  # decoded again after a restart: committed 50 s ago
    log.append(seq(11), new, b"b")
    clock.now += 11
    wall[0] += 11
    assert log.evict() == 1
    assert [e[0] for e in log.after(-1, 10)] == [seq(11)]
