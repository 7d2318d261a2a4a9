"""Contract between the relay's frame encoders and the SDK's decoder, without a socket.

Why: the relay and the SDK each have their own protocol module (the SDK is a separate
distribution and imports nothing from the relay).  Each is tested on its own, so a field renamed
on one side would pass both suites.  Here every frame kind the relay's pure encoders produce
(relay.core.protocol, FrameCache, BroadcastFrames, relay.core.presence) is decoded by
relay_client.protocol, and the test asserts the typed event and fields the SDK hands to an
application.  The ``system`` messages, ``tx_end`` and ``phx_close`` are built by the server
itself; tests/integration/test_contract_frames.py records them from a running relay.

vsn 2.0.0 (arrays, binary kind 4) is not what the SDK speaks; those forms are decoded by the
shared test client's decoder (tests/support/relay.py) and must yield the same typed
:class:`relay_client.types.Broadcast` as the vsn 1.0.0 text form.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson
import pytest
from relay_client import codes as sdk_codes
from relay_client.presence import Presences
from relay_client.protocol import (
    Refusal,
    binding_ids,
    decode,
    parse_broadcast,
    parse_change,
    parse_reply,
)
from relay_client.types import Broadcast as SdkBroadcast
from relay_client.types import Change, PresenceJoin, PresenceLeave, PresenceSync

from relay.core import protocol as relay_protocol
from relay.core.authorize import Denied
from relay.core.broadcast import Broadcast, BroadcastFrames, from_push
from relay.core.changes import Action, Column, Lsn, RowChange
from relay.core.presence import Presence
from relay.core.protocol import BINARY_ENCODING, JSON_ENCODING, Frame, encode, reply
from relay.core.quotas import CHANGE_TOO_LARGE_ERROR
from relay.core.subscriptions import ERROR, MOVED_IN, MOVED_OUT, FrameCache
from tests.support.relay import decode_frame

TOPIC = "realtime:room"
STREAM = "0123456789ABCDEF"


def _sdk(text: str | bytes) -> tuple[str, str, Any, str | None]:
    f = decode(text)
    return f.topic, f.event, f.payload, f.ref


# -- phx_reply --------------------------------------------------------------------------------
def test_join_reply_ok_carries_binding_ids() -> None:
    bindings = [{"event": "*", "schema": "public", "table": "t", "id": 7}, {"event": "INSERT", "id": 9}]
    text = encode(reply(TOPIC, "3", "3", "ok", {"postgres_changes": bindings}), "1.0.0")
    topic, event, payload, ref = _sdk(text)
    assert (topic, event, ref) == (TOPIC, "phx_reply", "3")
    ok, response = parse_reply(payload)
    assert ok and binding_ids(response, 2) == [7, 9]


@pytest.mark.parametrize("code", [c.value for c in sdk_codes.Code])
def test_error_reply_carries_its_code_to_the_sdk(code: str) -> None:
    """Every documented code reaches the SDK's Refusal beside the reason, untouched."""
    text = encode(reply(TOPIC, "4", None, "error", {"reason": f"why {code}", "code": code}), "1.0.0")
    _, event, payload, _ = _sdk(text)
    assert event == "phx_reply"
    assert parse_reply(payload) == (False, Refusal(f"why {code}", code))


def test_sdk_codes_are_the_relays() -> None:
    """The SDK mirrors the relay's code list (relay.core.errors, once the server has it)."""
    errors = pytest.importorskip("relay.core.errors")
    assert {c.value for c in errors.Code} == {c.value for c in sdk_codes.Code}


# -- postgres_changes ---------------------------------------------------------------------------
def _change(action: Action, record: dict[str, Any] | None, old: dict[str, Any] | None) -> RowChange:
    return RowChange(
        schema="public",
        table="bookings",
        action=action,
        columns=(Column("id", "int8"), Column("amount", "numeric"), Column("note", "text")),
        record=record,
        old_record=old,
        commit_timestamp="2026-11-03T09:32:55Z",
        commit_lsn=Lsn(0x16B3748),
        index=2,
        pk=("id",),
        stream=STREAM,
    )


def _sdk_change(cache: FrameCache, ids: tuple[int, ...] = (7, 9)) -> Change:
    topic, event, payload, ref = _sdk(cache.frame(TOPIC, ids, "1.0.0"))
    assert (topic, event, ref) == (TOPIC, "postgres_changes", None)
    # the prebuilt WebSocket frame carries the same text
    assert cache.wire(TOPIC, ids, "1.0.0").endswith(cache.frame(TOPIC, ids, "1.0.0").encode())
    return parse_change("room", payload)


def test_insert_update_delete() -> None:
    row = {"id": 1, "amount": Decimal("12345678901234567890.5"), "note": "a"}
    ins = _sdk_change(FrameCache(_change(Action.INSERT, row, None)))
    assert ins.type == "INSERT" and ins.channel == "room" and ins.table == "bookings"
    assert ins.schema == "public" and ins.commit_timestamp == "2026-11-03T09:32:55Z"
    assert ins.position == f"{STREAM}/00000000016B3748:00000002"
    # the relay writes the digits Postgres printed; the SDK parses JSON numbers as floats
    assert ins.record["amount"] == float("12345678901234567890.5")
    assert dict(ins.old_record) == {} and ins.ids == (7, 9) and not ins.moved_out
    assert ins.columns == (
        {"name": "id", "type": "int8"},
        {"name": "amount", "type": "numeric"},
        {
            "name": "note",
            "type": "text",
        },
    )
    upd = _sdk_change(FrameCache(_change(Action.UPDATE, {**row, "note": "b"}, row)))
    assert upd.type == "UPDATE" and upd.record["note"] == "b" and upd.old_record["note"] == "a"
    dele = _sdk_change(FrameCache(_change(Action.DELETE, None, row)), ids=(9,))
    assert (
        dele.type == "DELETE" and dict(dele.record) == {} and dele.old_record["id"] == 1 and dele.ids == (9,)
    )


def test_moved_out_moved_in_error_and_select_variants() -> None:
    old = {"id": 1, "amount": 5, "note": "mine"}
    new = {"id": 1, "amount": 5, "note": "yours"}
    cache = FrameCache(_change(Action.UPDATE, new, old))
    out = _sdk_change(cache.variant(MOVED_OUT))
    assert (
        out.type == "DELETE" and out.moved_out and dict(out.record) == {} and out.old_record["note"] == "mine"
    )
    moved_in = _sdk_change(cache.variant(MOVED_IN))
    assert moved_in.type == "UPDATE" and not moved_in.moved_out
    assert dict(moved_in.old_record) == {"id": 1} and moved_in.record["note"] == "yours"
    denied = Denied("42P01", 'relation "x" does not exist', "branch members")
    err = _sdk_change(cache.variant(ERROR, denied))
    assert (
        err.type == "UPDATE" and dict(err.record) == {} and dict(err.old_record) == {} and err.columns == ()
    )
    assert err.errors == ('PolicyError 42P01: relation "x" does not exist (policy branch members)',)
    sel = _sdk_change(cache.variant("change", select=("note",)))
    assert dict(sel.record) == {"id": 1, "note": "yours"} and dict(sel.old_record) == {
        "id": 1,
        "note": "mine",
    }
    assert sel.columns == ({"name": "id", "type": "int8"}, {"name": "note", "type": "text"})


def test_trimmed_change_says_so_in_errors() -> None:
    row = {"id": 1, "amount": 5, "note": "x" * 5000}
    change = _sdk_change(FrameCache(_change(Action.INSERT, row, None), max_data_bytes=1000))
    assert (
        CHANGE_TOO_LARGE_ERROR in change.errors and "note" not in change.record and change.record["id"] == 1
    )


# -- broadcast ----------------------------------------------------------------------------------
def _forms(msg: Broadcast) -> list[SdkBroadcast]:
    """The SDK's view of one broadcast in each wire form the relay sends."""
    frames = BroadcastFrames(TOPIC, msg)
    out = []
    text1 = frames.get("1.0.0", framed=False)
    assert isinstance(text1, str)
    topic, event, payload, _ = _sdk(text1)
    assert (topic, event) == (TOPIC, "broadcast")
    out.append(parse_broadcast("room", payload))
    v2 = frames.get("2.0.0", framed=False)  # text array, or binary kind 4
    m = decode_frame(v2, "2.0.0")
    assert (m["topic"], m["event"]) == (TOPIC, "broadcast")
    out.append(parse_broadcast("room", m["payload"]))
    return out


def test_text_broadcast_in_every_form() -> None:
    msg = from_push({"type": "broadcast", "event": "cursor", "payload": {"x": 1, "y": [2, 3]}})
    for got in _forms(msg):
        assert got == SdkBroadcast("room", "cursor", {"x": 1, "y": [2, 3]}, {})


def test_json_bytes_broadcast_kind4_and_text() -> None:
    raw = b'{"b":2,  "a":1}'
    msg = Broadcast("j", orjson.loads(raw), raw, JSON_ENCODING)
    for got in _forms(msg):
        assert got.event == "j" and got.payload == {"b": 2, "a": 1} and not got.is_binary


def test_binary_broadcast_with_meta() -> None:
    """Binary: vsn 1.0.0 gets base64 with ``meta.encoding``, vsn 2.0.0 the bytes; both give bytes."""
    blob = bytes(range(256))
    msg = Broadcast("blob", None, blob, BINARY_ENCODING, meta={"id": "5f0c", "replayed": True})
    v1, v2 = _forms(msg)
    assert (
        v1.payload == blob
        and v1.is_binary
        and v1.meta == {"id": "5f0c", "replayed": True, "encoding": "base64"}
    )
    assert v2.payload == blob and v2.meta == {"id": "5f0c", "replayed": True}
    # the text form is what realtime-js also gets: {"base64": ...}
    text = BroadcastFrames(TOPIC, msg).get("1.0.0", framed=False)
    assert isinstance(text, str)
    assert orjson.loads(text)["payload"]["payload"] == {"base64": base64.b64encode(blob).decode()}


def test_database_broadcast_meta_id() -> None:
    msg = Broadcast("db", {"n": 1}, None, JSON_ENCODING, meta={"id": "0b5f"})
    for got in _forms(msg):
        assert got.payload == {"n": 1} and got.meta == {"id": "0b5f"}


# -- presence -----------------------------------------------------------------------------------
def test_presence_state_and_diff() -> None:
    room: Presence[str] = Presence()
    sdk = Presences("room")
    first = room.track("sock-a", "alice", {"status": "online"})
    state = encode(Frame(TOPIC, "presence_state", room.state()), "1.0.0")
    _, event, payload, _ = _sdk(state)
    assert event == "presence_state"
    events = sdk.on_state(payload)
    assert any(isinstance(e, PresenceJoin) and e.key == "alice" for e in events)
    assert isinstance(events[-1], PresenceSync)
    (meta,) = sdk.snapshot()["alice"]
    assert meta["status"] == "online" and meta["presence_ref"]

    join = encode(Frame(TOPIC, "presence_diff", room.track("sock-b", "bob", {"status": "away"})), "1.0.0")
    _, event, payload, _ = _sdk(join)
    assert event == "presence_diff"
    assert any(isinstance(e, PresenceJoin) and e.key == "bob" for e in sdk.on_diff(payload))
    assert set(sdk.snapshot()) == {"alice", "bob"}

    leave_diff = room.untrack("sock-a")
    assert leave_diff is not None and first
    _, _, payload, _ = _sdk(encode(Frame(TOPIC, "presence_diff", leave_diff), "1.0.0"))
    assert any(isinstance(e, PresenceLeave) and e.key == "alice" for e in sdk.on_diff(payload))
    assert set(sdk.snapshot()) == {"bob"}


def test_vsn2_array_frames_decode_like_vsn1() -> None:
    """The shared test client reads vsn 2.0.0 arrays into the same five fields."""
    f = reply(TOPIC, "8", "2", "error", {"reason": "r", "code": "too_many_joins"})
    m = decode_frame(relay_protocol.encode(f, "2.0.0"), "2.0.0")
    assert (m["topic"], m["event"], m["ref"], m["join_ref"]) == (TOPIC, "phx_reply", "8", "2")
    assert parse_reply(m["payload"]) == (False, Refusal("r", "too_many_joins"))
