"""The in-memory history behind ``config.broadcast.replay`` (pure: times are passed in)."""

from __future__ import annotations

from relay.core.broadcast import Broadcast
from relay.core.broadcast_history import REPLAY_LIMIT, BroadcastHistory

HOUR = 3600 * 1000


def _msg(i: int) -> Broadcast:
    return Broadcast("e", {"i": i}, meta={"id": f"id-{i}"})


def _vals(msgs: list[Broadcast]) -> list[int]:
    return [m.value["i"] for m in msgs]


def test_since_and_limit_give_the_newest_oldest_first() -> None:
    h = BroadcastHistory()
    h.start(1000)
    for i in range(5):
        h.record("room", 2000 + i, _msg(i))
    r = h.since("room", 2002, 25, 3000)
    assert _vals(r.messages) == [2, 3, 4] and r.complete
    r = h.since("room", 0, 2, 3000)
    assert _vals(r.messages) == [3, 4] and r.complete  # two asked, two given
    r = h.since("room", 0, 25, 3000)
    assert _vals(r.messages) == [0, 1, 2, 3, 4]
    assert not r.complete and r.complete_from == 1000  # before the relay started: unknown
    assert h.since("other", 1500, 25, 3000).complete  # nothing sent there since the start
    assert not h.since("other", 0, 25, 3000).complete


def test_only_the_last_25_per_topic_are_kept_and_the_gap_is_reported() -> None:
    h = BroadcastHistory()
    h.start(0)
    for i in range(REPLAY_LIMIT + 5):
        h.record("room", 100 + i, _msg(i))
    r = h.since("room", 0, REPLAY_LIMIT, 1000)
    assert _vals(r.messages) == list(range(5, REPLAY_LIMIT + 5)) and r.complete
    r = h.since("room", 102, 10, 1000)
    assert len(r.messages) == 10 and r.complete
    r = h.since("room", 130, 10, 1000)  # after everything: complete and empty
    assert r.messages == [] and r.complete
    r2 = BroadcastHistory()
    r2.start(0)
    for i in range(30):
        r2.record("room", 100 + i, _msg(i))
    # 26 would be needed to be sure none is missing since 100, but only 25 may be asked for
    assert r2.since("room", 100, 25, 1000).complete


def test_age_limit_and_byte_bound() -> None:
    h = BroadcastHistory(max_age=1.0, max_bytes=10_000)
    h.start(0)
    h.record("a", 100, _msg(1))
    r = h.since("a", 0, 25, 5000)  # aged out: forgotten, and never promised
    assert r.messages == [] and r.complete
    big = Broadcast("e", None, b"x" * 3000, 0)
    for i in range(10):
        h.record(f"t{i}", 6000 + i, big)
    assert h.bytes <= 10_000
    assert h.stats()["topics"] < 10  # the least recently written topics went first
    assert h.since("t9", 0, 25, 7000).messages == [big]
    gone = h.since("t0", 5999, 25, 7000)  # forgotten whole: said, not silently empty
    assert gone.messages == [] and not gone.complete
    assert h.since("t0", 7000, 25, 7000).complete


def test_replayed_marks_meta_and_keeps_the_id() -> None:
    m = _msg(1).replayed()
    assert m.meta == {"id": "id-1", "replayed": True}
    assert m.text_payload()["meta"] == {"id": "id-1", "replayed": True}
    b = Broadcast("e", None, b"\x00", 0, {"id": "x"}).replayed()
    assert b.text_payload()["meta"] == {"id": "x", "replayed": True, "encoding": "base64"}
