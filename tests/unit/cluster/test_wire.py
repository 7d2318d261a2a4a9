"""What nodes publish to each other and store in Redis: encoded once, decoded back exactly."""

from __future__ import annotations

import orjson

from relay.cluster.presence import encode_entry, parse_snapshot
from relay.cluster.rooms import (
    Bye,
    Hello,
    PresenceChange,
    RemoteBroadcast,
    decode,
    encode_broadcast,
    encode_control,
    encode_presence,
    key_prefix,
)
from relay.core.broadcast import Broadcast, BroadcastFrames, checked
from relay.core.payload_limits import PayloadLimits
from relay.core.protocol import BINARY_ENCODING
from relay.core.remote_presence import RemoteEntry


def test_a_json_broadcast_crosses_with_its_bytes_untouched() -> None:
    msg = checked(Broadcast("typing", {"b": 2, "a": [1, "\u00e9"]}), PayloadLimits())
    got = decode(encode_broadcast("n1/x", "room:1", True, msg))
    assert isinstance(got, RemoteBroadcast)
    assert (got.node, got.name, got.private) == ("n1/x", "room:1", True)
    assert got.msg.raw == msg.raw and got.msg.event == "typing"
    # every member form is what the sender's node would have sent
    for vsn, framed in (("1.0.0", False), ("2.0.0", False), ("2.0.0", True)):
        mine = BroadcastFrames("realtime:room:1", msg).get(vsn, framed)
        theirs = BroadcastFrames("realtime:room:1", got.msg).get(vsn, framed)
        assert mine == theirs


def test_a_binary_broadcast_with_meta_crosses_byte_for_byte() -> None:
    blob = bytes(range(256)) + b"\0\0"
    msg = Broadcast("blob", None, blob, BINARY_ENCODING, {"id": "u"})
    got = decode(encode_broadcast("n", "t", False, msg))
    assert isinstance(got, RemoteBroadcast)
    assert got.msg.raw == blob and got.msg.encoding == BINARY_ENCODING and got.msg.meta == {"id": "u"}


def test_presence_changes_and_control_messages_round_trip() -> None:
    joins = [RemoteEntry(("lobby", False), "alice", {"x": [1], "phx_ref": "r1"})]
    got = decode(encode_presence("n", 4, joins, ["r0"]))
    assert got == PresenceChange("n", 4, joins, ["r0"])
    assert decode(encode_presence("n", 5, [], [])) == PresenceChange("n", 5, [], [])
    assert decode(encode_control("h", "n", 9)) == Hello("n", 9)
    assert decode(encode_control("x", "n")) == Bye("n")


def test_foreign_or_malformed_messages_are_ignored() -> None:
    assert decode(b"hello") is None
    assert decode(b"{not json}\0") is None
    assert decode(b'{"k":"b","n":"x"}\0') is None  # a broadcast without its fields
    assert decode(b'{"k":"?","n":"x"}\0') is None


def test_a_snapshot_skips_what_it_cannot_read() -> None:
    good = RemoteEntry(("r", True), "k", {"phx_ref": "p1", "a": 1})
    fields = {
        b"s": b"12",
        b"p:p1": encode_entry(good),
        b"p:p2": b"[1,2]",
        b"p:p3": orjson.dumps(["r", True, "k", {"no": "ref"}]),
    }
    assert parse_snapshot(fields) == (12, {"p1": good})
    assert parse_snapshot({}) == (0, {})


def test_keys_of_one_cluster_share_a_hash_slot() -> None:
    assert key_prefix("realtime_relay") == "relay:{realtime_relay}:"
