"""Payload depth and size limits (relay/core/payload_limits.py) and their use by broadcasts."""

from __future__ import annotations

import sys

import orjson
import pytest

from relay.core.broadcast import Broadcast, BroadcastFrames, checked, from_binary, from_push
from relay.core.payload_limits import PayloadLimits, PayloadRejected, check_json, nesting_depth
from relay.core.protocol import BINARY_ENCODING, parse_binary
from tests.support.binary import kind3


def deep(levels: int, leaf: object = 1) -> object:
    """``levels`` nested containers, alternating objects and arrays, built without recursion."""
    value = leaf
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize(
    ("value", "depth"),
    [(1, 0), ("s", 0), (None, 0), ({}, 1), ([], 1), ([1, 2], 1), ({"a": [1, {"b": 2}]}, 3), ([[], [[]]], 3)],
)
def test_nesting_depth(value: object, depth: int) -> None:
    assert nesting_depth(value) == depth


def test_nesting_depth_is_not_recursive_and_stops_early() -> None:
    value = orjson.loads("[" * 1000 + "]" * 1000)  # what orjson reads; beyond what it writes
    assert nesting_depth(value) == 1000
    very = deep(sys.getrecursionlimit() * 3)  # Python recursion would fail here
    assert nesting_depth(very) == sys.getrecursionlimit() * 3
    assert nesting_depth(very, stop_after=64) == 65


def test_check_json_depth_size_and_encoding() -> None:
    limits = PayloadLimits(max_depth=4, max_bytes=20)
    assert check_json(deep(4), limits) == orjson.dumps(deep(4))
    with pytest.raises(PayloadRejected) as too_deep:
        check_json(deep(5), limits)
    assert too_deep.value.code == "payload_too_deep" and "4 levels" in str(too_deep.value)
    with pytest.raises(PayloadRejected) as too_large:
        check_json({"s": "x" * 20}, limits)
    assert too_large.value.code == "payload_too_large" and "20 bytes" in str(too_large.value)
    with pytest.raises(PayloadRejected) as invalid:
        check_json({"s": object()}, limits)
    assert invalid.value.code == "payload_invalid"


def test_checked_broadcast_carries_its_encoding() -> None:
    limits = PayloadLimits(max_depth=8, max_bytes=100)
    msg = checked(from_push({"event": "e", "payload": {"b": 2, "a": 1}}), limits)
    assert msg.raw == b'{"b":2,"a":1}'  # encoded once, here; every form is built from it
    assert BroadcastFrames("realtime:t", msg).get("1.0.0", False) == (
        '{"topic":"realtime:t","event":"broadcast","ref":null,'
        '"payload":{"type":"broadcast","event":"e","payload":{"b":2,"a":1}}}'
    )
    with pytest.raises(PayloadRejected, match="8 levels"):
        checked(from_push({"event": "e", "payload": deep(9)}), limits)
    # bytes that arrived as bytes are measured as they are, and JSON ones checked for depth
    raw = orjson.dumps(deep(9))
    kind3_msg = from_binary(parse_binary(kind3("", "1", "realtime:t", "e", raw, 1, "")))
    with pytest.raises(PayloadRejected) as exc:
        checked(kind3_msg, limits)
    assert exc.value.code == "payload_too_deep"
    assert checked(Broadcast("e", None, b"\0" * 100, BINARY_ENCODING), limits).raw == b"\0" * 100
    with pytest.raises(PayloadRejected) as big:
        checked(Broadcast("e", None, b"\0" * 101, BINARY_ENCODING), limits)
    assert big.value.code == "payload_too_large"
