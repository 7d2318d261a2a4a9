"""The mirror of other nodes' presences: ordering by change number, snapshots, dead nodes."""

from __future__ import annotations

from typing import Any

from relay.core.presence import Presence
from relay.core.remote_presence import RemoteEntry, RemotePresence, diff_entries

ROOM = ("lobby", False)
PRIV = ("lobby", True)


def entry(ref: str, key: str = "k", room: tuple[str, bool] = ROOM, **meta: Any) -> RemoteEntry:
    return RemoteEntry(room, key, {**meta, "phx_ref": ref})


def test_changes_apply_in_order_once_and_a_gap_asks_for_a_reload() -> None:
    mirror = RemotePresence()
    out = mirror.apply("n1", 1, [entry("r1", "alice", s=1)], [])
    assert out == {ROOM: {"joins": {"alice": {"metas": [{"s": 1, "phx_ref": "r1"}]}}, "leaves": {}}}
    assert mirror.apply("n1", 1, [entry("r1", "alice", s=1)], []) == {}  # a repeat: nothing new
    assert mirror.apply("n1", 3, [entry("r3")], []) is None  # change 2 was missed
    assert mirror.seq("n1") == 1 and mirror.count(ROOM) == 1
    out = mirror.apply("n1", 2, [entry("r2", "alice", s=2)], ["r1"])
    assert out is not None
    assert out[ROOM]["leaves"] == {"alice": {"metas": [{"s": 1, "phx_ref": "r1"}]}}
    assert out[ROOM]["joins"] == {"alice": {"metas": [{"s": 2, "phx_ref": "r2"}]}}
    assert mirror.state(ROOM) == {"alice": {"metas": [{"s": 2, "phx_ref": "r2"}]}}
    # a node that was never heard of starts at change 1; a later first change is a gap
    assert mirror.apply("n2", 5, [entry("x")], []) is None


def test_snapshot_replaces_a_node_and_sends_only_the_difference() -> None:
    mirror = RemotePresence()
    mirror.apply("n1", 1, [entry("a", "alice"), entry("b", "bob", room=PRIV)], [])
    out = mirror.replace("n1", 7, {"b": entry("b", "bob", room=PRIV), "c": entry("c", "carol")})
    assert out == {
        ROOM: {
            "joins": {"carol": {"metas": [{"phx_ref": "c"}]}},
            "leaves": {"alice": {"metas": [{"phx_ref": "a"}]}},
        }
    }
    assert mirror.seq("n1") == 7
    assert mirror.apply("n1", 6, [entry("old")], []) == {}  # already in the snapshot
    assert mirror.replace("n1", 5, {}) == {}  # an older snapshot changes nothing
    assert mirror.count(ROOM) == 1 and mirror.count(PRIV) == 1


def test_a_dropped_node_leaves_every_room_and_other_nodes_stay() -> None:
    mirror = RemotePresence()
    mirror.apply("n1", 1, [entry("a", "alice"), entry("b", "bob", room=PRIV)], [])
    mirror.apply("n2", 1, [entry("z", "zoe")], [])
    out = mirror.drop("n1")
    assert set(out) == {ROOM, PRIV}
    assert out[PRIV] == {"joins": {}, "leaves": {"bob": {"metas": [{"phx_ref": "b"}]}}}
    assert mirror.nodes() == ["n2"] and mirror.rooms() == {ROOM: 1}
    assert mirror.drop("n1") == {}
    assert mirror.total() == 1


def test_two_nodes_sharing_a_key_merge_their_metas() -> None:
    mirror = RemotePresence()
    mirror.apply("n1", 1, [entry("a", "ann", tab=1)], [])
    mirror.apply("n2", 1, [entry("b", "ann", tab=2)], [])
    assert mirror.state(ROOM) == {"ann": {"metas": [{"tab": 1, "phx_ref": "a"}, {"tab": 2, "phx_ref": "b"}]}}


def test_a_local_diff_becomes_joins_and_leaves_by_ref() -> None:
    p: Presence[str] = Presence()
    first = p.track("m", "alice", {"s": 1})
    update = p.track("m", "alice", {"s": 2})
    joins, leaves = diff_entries(ROOM, first)
    assert [(j.key, j.meta["s"]) for j in joins] == [("alice", 1)] and leaves == []
    joins, leaves = diff_entries(ROOM, update)
    old_ref = first["joins"]["alice"]["metas"][0]["phx_ref"]
    assert leaves == [old_ref] and joins[0].meta["phx_ref_prev"] == old_ref
