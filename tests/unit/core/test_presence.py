"""Presence state and diffs (Phoenix.Presence semantics) and rooms, without sockets."""

from __future__ import annotations

import orjson
import pytest

from relay.core.presence import Presence, PresenceError, repair_metas
from relay.core.rooms import Rooms


def test_track_join_diff_and_state() -> None:
    p: Presence[str] = Presence()
    diff = p.track("a", "alice", {"status": "online"})
    assert diff["leaves"] == {}
    (meta,) = diff["joins"]["alice"]["metas"]
    assert meta["status"] == "online" and isinstance(meta["phx_ref"], str)
    assert p.state() == {"alice": {"metas": [meta]}}


def test_same_key_from_two_members_is_two_metas() -> None:
    p: Presence[str] = Presence()
    p.track("tab1", "alice", {"t": 1})
    p.track("tab2", "alice", {"t": 2})
    metas = p.state()["alice"]["metas"]
    assert [m["t"] for m in metas] == [1, 2]
    assert metas[0]["phx_ref"] != metas[1]["phx_ref"]
    diff = p.untrack("tab1")
    assert diff is not None and diff["leaves"]["alice"]["metas"][0]["t"] == 1
    assert [m["t"] for m in p.state()["alice"]["metas"]] == [2]


def test_retrack_is_an_update_with_phx_ref_prev() -> None:
    p: Presence[str] = Presence()
    first = p.track("a", "alice", {"s": "online"})["joins"]["alice"]["metas"][0]
    diff = p.track("a", "alice", {"s": "away"})
    assert diff["leaves"] == {"alice": {"metas": [first]}}
    new = diff["joins"]["alice"]["metas"][0]
    assert new["s"] == "away" and new["phx_ref_prev"] == first["phx_ref"]
    assert new["phx_ref"] != first["phx_ref"]
    assert p.state() == {"alice": {"metas": [new]}}


def test_client_cannot_forge_refs() -> None:
    p: Presence[str] = Presence()
    meta = p.track("a", "k", {"phx_ref": "forged", "phx_ref_prev": "x", "v": 1})["joins"]["k"]["metas"][0]
    assert meta["phx_ref"] != "forged" and "phx_ref_prev" not in meta and meta["v"] == 1


def test_untrack_unknown_is_none_and_non_object_refused() -> None:
    p: Presence[str] = Presence()
    assert p.untrack("nobody") is None
    with pytest.raises(PresenceError, match="object"):
        p.track("a", "k", ["not", "an", "object"])
    assert len(p) == 0


def test_rooms_private_and_public_are_distinct_and_vanish_when_empty() -> None:
    rooms: Rooms[str] = Rooms()
    pub = rooms.join("lobby", False, "a")
    priv = rooms.join("lobby", True, "b")
    assert pub is not priv and len(rooms) == 2
    assert rooms.join("lobby", False, "c") is pub
    assert list(pub.members) == ["a", "c"]
    pub.presence.track("a", "alice", {})
    rooms.leave(pub, "a")
    assert len(pub.presence) == 0 and list(pub.members) == ["c"]
    rooms.leave(pub, "c")
    assert rooms.get("lobby", False) is None and rooms.get("lobby", True) is priv


def test_room_bound_refuses_new_presences_but_not_updates() -> None:
    p: Presence[str] = Presence()
    p.track("a", "alice", {}, max_entries=2)
    p.track("b", "bob", {}, max_entries=2)
    with pytest.raises(PresenceError) as exc:
        p.track("c", "carol", {}, max_entries=2)
    assert exc.value.code == "room_presence_full" and len(p) == 2
    p.track("a", "alice", {"s": "away"}, size=7, max_entries=2)  # an update is not a new presence
    assert p.size_of("a") == 7 and p.size_of("c") is None


def test_unencodable_metas_are_replaced_not_fatal() -> None:
    p: Presence[str] = Presence()
    p.track("ok", "fine", {"v": 1})
    bad = p.track("bad", "deep", orjson.loads('{"x":' + "[" * 300 + "]" * 300 + "}"))  # unwritable
    with pytest.raises(TypeError):
        orjson.dumps(p.state())
    joins = bad["joins"]
    assert repair_metas(joins) == 1
    ref = joins["deep"]["metas"][0]["phx_ref"]
    assert joins["deep"]["metas"][0] == {"phx_ref": ref, "error": "presence_unencodable"}
    assert p.repair() == 1 and p.repair() == 0
    state = orjson.loads(orjson.dumps(p.state()))
    assert state["deep"]["metas"] == [{"phx_ref": ref, "error": "presence_unencodable"}]
    assert state["fine"]["metas"][0]["v"] == 1
