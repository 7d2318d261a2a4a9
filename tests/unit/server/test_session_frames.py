"""Every client frame kind and every refusal of the session, without a socket.

Why: the session decides what a frame means and which error code a bad one gets; the
connection only carries that out.  Each case here is one branch of that decision, with the
reason text and the code the interop and error-code tests see on the wire.
"""

from __future__ import annotations

import orjson

from relay.core.errors import Code
from relay.core.protocol import Frame, encode
from relay.server.session import (
    AccessToken,
    BroadcastPush,
    FrameError,
    Join,
    Leave,
    PresencePush,
    Refusal,
    Send,
    decide,
    read_binary,
    read_text,
)

JOINED = {"realtime:room"}
LIMIT = 1000


def _text(topic: str, event: str, payload: object, vsn: str = "2.0.0") -> str:
    return encode(Frame(topic, event, payload, "7", "1"), vsn)


def _frame(topic: str, event: str, payload: object = None) -> Frame:
    got = read_text(_text(topic, event, {} if payload is None else payload), "2.0.0", LIMIT)
    assert isinstance(got, Frame)
    return got


def _binary(topic: str = "realtime:room", event: str = "ping", payload: bytes = b'{"a":1}') -> bytes:
    join_ref, ref, meta = b"1", b"2", b""
    parts = [join_ref, ref, topic.encode(), event.encode(), meta]
    header = bytes([3, *(len(p) for p in parts), 1])  # kind 3, lengths, JSON encoding
    return header + b"".join(parts) + payload


def test_a_heartbeat_is_answered_ok_on_phoenix() -> None:
    got = decide(_frame("phoenix", "heartbeat"), JOINED)
    assert isinstance(got, Send)
    assert got.frame == Frame("phoenix", "phx_reply", {"status": "ok", "response": {}}, "7", None)


def test_a_join_of_a_realtime_topic_is_a_join_request() -> None:
    f = _frame("realtime:other", "phx_join", {"config": {}})
    assert decide(f, JOINED) == Join(f)


def test_a_join_of_another_topic_is_refused() -> None:
    got = decide(_frame("room", "phx_join"), JOINED)
    assert isinstance(got, Refusal) and got.code is Code.UNKNOWN_TOPIC
    assert got.reason == "UnknownTopic: topics are realtime:<channel name>"


def test_a_leave_answers_ok_then_closes() -> None:
    f = _frame("realtime:room", "phx_leave")
    got = decide(f, JOINED)
    assert isinstance(got, Leave) and got.frame is f
    assert got.reply == Frame("realtime:room", "phx_reply", {"status": "ok", "response": {}}, "7", "1")


def test_an_access_token_carries_the_token_or_none() -> None:
    assert decide(_frame("realtime:room", "access_token", {"access_token": "t"}), JOINED) == AccessToken(
        _frame("realtime:room", "access_token", {"access_token": "t"}), "t"
    )
    got = decide(_frame("realtime:room", "access_token", []), JOINED)
    assert isinstance(got, AccessToken) and got.token is None


def test_a_broadcast_is_read_or_refused() -> None:
    ok = decide(
        _frame("realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}), JOINED
    )
    assert isinstance(ok, BroadcastPush) and ok.message.event == "e"
    bad = decide(_frame("realtime:room", "broadcast", {"type": "broadcast"}), JOINED)
    assert isinstance(bad, Refusal) and bad.code is Code.INVALID_BROADCAST


def test_a_presence_push_goes_to_the_hub() -> None:
    f = _frame("realtime:room", "presence", {"type": "presence", "event": "track", "payload": {}})
    assert decide(f, JOINED) == PresencePush(f)


def test_frames_of_unjoined_topics_and_unknown_events_are_refused() -> None:
    for event in ("phx_leave", "access_token", "broadcast", "presence", "whatever"):
        got = decide(_frame("realtime:elsewhere", event), JOINED)
        assert isinstance(got, Refusal) and (got.reason, got.code) == (
            "unmatched topic",
            Code.UNMATCHED_TOPIC,
        )
    got = decide(_frame("realtime:room", "whatever"), JOINED)
    assert isinstance(got, Refusal) and (got.reason, got.code) == (
        "unknown event 'whatever'",
        Code.UNKNOWN_EVENT,
    )


def test_a_malformed_frame_is_refused_on_what_could_be_read() -> None:
    got = read_text("{nope", "1.0.0", LIMIT)
    assert isinstance(got, FrameError) and got.code is Code.INVALID_MESSAGE
    assert got.reason.startswith("invalid message: malformed JSON")
    assert got.reply().topic == "phoenix" and got.reply().payload["response"]["code"] == str(
        Code.INVALID_MESSAGE
    )
    no_event = read_text(orjson.dumps({"topic": "realtime:room", "ref": "3"}).decode(), "1.0.0", LIMIT)
    assert isinstance(no_event, FrameError) and (no_event.topic, no_event.ref) == ("realtime:room", "3")
    assert no_event.reply().topic == "realtime:room"


def test_a_frame_over_the_limit_is_refused_on_its_topic_when_it_parses() -> None:
    big = _text("realtime:room", "broadcast", {"x": "y" * LIMIT})
    got = read_text(big, "2.0.0", LIMIT)
    assert isinstance(got, Refusal) and got.frame.topic == "realtime:room"
    assert (got.reason, got.code) == (f"frame too large: limit is {LIMIT} bytes", Code.FRAME_TOO_LARGE)
    unparsed = read_text("[" * (LIMIT + 1), "2.0.0", LIMIT)
    assert isinstance(unparsed, FrameError) and unparsed.code is Code.FRAME_TOO_LARGE
    # The limit is in UTF-8 bytes: 300 four-byte characters are 1,200 bytes.
    wide = read_text(_text("realtime:room", "broadcast", {"x": "\U0001f600" * 300}), "2.0.0", LIMIT)
    assert isinstance(wide, Refusal) and wide.code is Code.FRAME_TOO_LARGE


def test_binary_frames() -> None:
    got = read_binary(_binary(), "2.0.0", LIMIT, JOINED)
    assert isinstance(got, BroadcastPush) and got.message.event == "ping" and got.frame.ref == "2"
    old = read_binary(_binary(), "1.0.0", LIMIT, JOINED)
    assert isinstance(old, FrameError) and old.code is Code.BINARY_NOT_SUPPORTED
    assert old.reason == "binary frames are only part of protocol vsn 2.0.0 (user broadcasts)"
    big = read_binary(_binary(payload=b'"' + b"x" * LIMIT + b'"'), "2.0.0", LIMIT, JOINED)
    assert isinstance(big, FrameError) and big.code is Code.FRAME_TOO_LARGE and big.topic is None
    short = read_binary(b"\x03\x00", "2.0.0", LIMIT, JOINED)
    assert isinstance(short, FrameError) and short.code is Code.INVALID_BINARY_FRAME
    assert short.reason.startswith("invalid binary frame: binary frame too short")
    elsewhere = read_binary(_binary("realtime:elsewhere"), "2.0.0", LIMIT, JOINED)
    assert isinstance(elsewhere, Refusal) and elsewhere.code is Code.UNMATCHED_TOPIC
    assert elsewhere.frame.event == "broadcast" and elsewhere.frame.topic == "realtime:elsewhere"
