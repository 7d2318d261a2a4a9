"""Broadcast wire forms: kind 3 parsing, kind 4 encoding, text forms per vsn (no sockets)."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from relay.core.broadcast import (
    Broadcast,
    BroadcastError,
    BroadcastFrames,
    from_binary,
    from_db_message,
    from_push,
)
from relay.core.protocol import BINARY_ENCODING, JSON_ENCODING, ProtocolError, parse_binary
from tests.support.binary import kind3
from tests.support.binary import split_kind4 as decode_kind4


def test_parse_kind3_json() -> None:
    push = parse_binary(kind3("1", "7", "realtime:room", "cursor", b'{"x":1}'))
    assert (push.join_ref, push.ref, push.topic, push.event) == ("1", "7", "realtime:room", "cursor")
    assert push.encoding == JSON_ENCODING and push.value == {"x": 1} and push.meta == {}
    msg = from_binary(push)
    assert msg.raw == b'{"x":1}' and msg.value == {"x": 1}


def test_parse_kind3_binary_with_meta() -> None:
    push = parse_binary(kind3("", "", "realtime:r", "blob", b"\x00\xff\x10", BINARY_ENCODING, '{"a":1}'))
    assert push.ref is None and push.join_ref is None
    assert push.meta == {"a": 1}
    assert push.payload == b"\x00\xff\x10"
    assert from_binary(push).is_binary


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "too short"),
        (b"\x03\x00\x00", "too short"),
        (bytes((0, 0, 0, 1, 1, 0, 1)) + b"te", "kind 0"),
        (bytes((3, 0, 0, 9, 1, 0, 1)) + b"abc", "truncated"),
        (kind3("1", "2", "realtime:r", "e", b"{nope"), "not JSON"),
        (kind3("1", "2", "realtime:r", "e", b"{}", encoding=7), "encoding 7"),
        (kind3("1", "2", "realtime:r", "e", b"{}", meta="[1]"), "JSON object"),
        (kind3("1", "2", "realtime:r", "e", b"{}", meta="{x"), "not JSON"),
        (kind3("1", "2", "", "e", b"{}"), "no topic"),
        (kind3("1", "2", "realtime:r", "", b"{}"), "no event"),
        (bytes((3, 0, 0, 2, 1, 0, 1)) + b"\xff\xfee{}", "UTF-8"),
    ],
)
def test_parse_kind3_rejects(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        parse_binary(data)


def test_parse_kind3_error_carries_ref_for_the_reply() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_binary(kind3("3", "9", "realtime:r", "e", b"{bad"))
    assert (info.value.topic, info.value.ref, info.value.join_ref) == ("realtime:r", "9", "3")


def test_from_push_validation() -> None:
    assert from_push({"type": "broadcast", "event": "e", "payload": [1]}).value == [1]
    assert from_push({"event": "e"}).value == {}  # realtime-py omits nothing, but be lenient
    for bad, needle in [
        ([], "object"),
        ({"type": "presence", "event": "e"}, "type"),
        ({"event": ""}, "event"),
        ({"event": 5}, "event"),
        ({"event": "x" * 256}, "255"),
    ]:
        with pytest.raises(BroadcastError, match=needle):
            from_push(bad)


def test_frames_per_vsn() -> None:
    msg = from_push({"type": "broadcast", "event": "ping", "payload": {"n": 1}})
    frames = BroadcastFrames("realtime:room", msg)
    v1 = frames.get("1.0.0", False)
    assert isinstance(v1, str)
    assert orjson.loads(v1) == {
        "topic": "realtime:room",
        "event": "broadcast",
        "ref": None,
        "payload": {"type": "broadcast", "event": "ping", "payload": {"n": 1}},
    }
    v2 = frames.get("2.0.0", False)
    assert isinstance(v2, bytes)
    topic, event, meta, enc, payload = decode_kind4(v2)
    assert (topic, event, meta, enc) == ("realtime:room", "ping", "", JSON_ENCODING)
    assert orjson.loads(payload) == {"n": 1}
    assert frames.get("2.0.0", False) is v2  # encoded once


def test_framed_forms_are_websocket_frames() -> None:
    frames = BroadcastFrames("realtime:r", from_push({"event": "e", "payload": {}}))
    text = frames.get("1.0.0", True)
    assert isinstance(text, bytes) and text[0] == 0x81
    binary = frames.get("2.0.0", True)
    assert isinstance(binary, bytes) and binary[0] == 0x82
    assert binary[2:] == frames.get("2.0.0", False)


def test_json_bytes_pass_through_untouched() -> None:
    raw = b'{"b":2,  "a":1}'  # not how orjson would write it: proves it was not re-encoded
    msg = from_binary(parse_binary(kind3("1", "", "realtime:r", "e", raw)))
    *_, payload = decode_kind4(BroadcastFrames("realtime:r", msg).get("2.0.0", False))  # type: ignore[arg-type]
    assert payload == raw
    v1 = orjson.loads(BroadcastFrames("realtime:r", msg).get("1.0.0", False))
    assert v1["payload"]["payload"] == {"a": 1, "b": 2}


def test_binary_payload_to_text_clients_is_base64() -> None:
    msg = Broadcast("blob", None, b"\x00\x01\xfe", BINARY_ENCODING)
    v1 = orjson.loads(BroadcastFrames("realtime:r", msg).get("1.0.0", False))
    assert v1["payload"]["payload"] == {"base64": base64.b64encode(b"\x00\x01\xfe").decode()}
    assert v1["payload"]["meta"] == {"encoding": "base64"}
    _, _, _, enc, payload = decode_kind4(BroadcastFrames("realtime:r", msg).get("2.0.0", False))  # type: ignore[arg-type]
    assert enc == BINARY_ENCODING and payload == b"\x00\x01\xfe"


def test_long_topic_falls_back_to_text_for_vsn2() -> None:
    topic = "realtime:" + "t" * 250
    out = BroadcastFrames(topic, from_push({"event": "e", "payload": {"k": 1}})).get("2.0.0", False)
    assert isinstance(out, str)
    assert orjson.loads(out) == [
        None,
        None,
        topic,
        "broadcast",
        {"type": "broadcast", "event": "e", "payload": {"k": 1}},
    ]


def test_large_payload_uses_extended_length() -> None:
    big = {"s": "x" * 70_000}
    framed = BroadcastFrames("realtime:r", from_push({"event": "e", "payload": big})).get("2.0.0", True)
    assert isinstance(framed, bytes)
    assert framed[:2] == b"\x82\x7f"
    (n,) = struct.unpack(">Q", framed[2:10])
    assert n == len(framed) - 10


def test_db_message() -> None:
    name, private, msg = from_db_message(
        {"topic": "realtime:room", "event": "e", "payload": None, "private": False}
    )
    assert (name, private, msg.event, msg.value) == ("room", False, "e", {})
    assert from_db_message({"topic": "r", "event": "e"})[1] is True  # Supabase's default
    for bad in ({"event": "e"}, {"topic": "r"}, {"topic": "r", "event": "e", "private": "yes"}):
        with pytest.raises(BroadcastError):
            from_db_message(bad)
