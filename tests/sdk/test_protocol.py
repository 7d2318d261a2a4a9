"""Phoenix vsn 1.0.0 encode/decode and the interpretation of the relay's frames, without a network.

The sample payloads are the relay's, as documented in docs/protocol.md.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from relay_client.protocol import (
    ChannelClosedByServer,
    Frame,
    OtherSystem,
    ProtocolError,
    Refusal,
    Resumed,
    Subscribed,
    access_token_frame,
    binding_ids,
    decode,
    encode,
    heartbeat_frame,
    join_frame,
    leave_frame,
    parse_change,
    parse_reply,
    parse_system,
    socket_url,
)
from relay_client.types import Binding, ResyncNeeded

POS = "000000000150AFE0:00000002"


def test_encode_has_all_five_keys_and_decode_reads_server_frames() -> None:
    f = Frame("realtime:x", "phx_join", {"a": 1}, "3", "2")
    assert orjson.loads(encode(f)) == {
        "topic": "realtime:x",
        "event": "phx_join",
        "payload": {"a": 1},
        "ref": "3",
        "join_ref": "2",
    }
    # server frames carry no join_ref; refs may be numbers; payload may be null
    got = decode(b'{"topic":"phoenix","event":"phx_reply","payload":null,"ref":7}')
    assert got == Frame("phoenix", "phx_reply", {}, "7", None)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1,2,3,4,5]",
        '{"event":"x"}',
        '{"topic":"t","event":3}',
        '{"topic":"t","event":"e","ref":true}',
    ],
)
def test_decode_rejects_malformed_frames(raw: str) -> None:
    with pytest.raises(ProtocolError):
        decode(raw)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://h:4000/realtime/v1", "ws://h:4000/realtime/v1/websocket"),
        ("http://h:4000/realtime/v1/", "ws://h:4000/realtime/v1/websocket"),
        ("https://h/realtime/v1/websocket", "wss://h/realtime/v1/websocket"),
        ("WSS://h/socket", "wss://h/socket/websocket"),
    ],
)
def test_socket_url_accepts_what_the_official_client_accepts(given: str, expected: str) -> None:
    assert socket_url(given) == expected


@pytest.mark.parametrize("bad", ["h:4000", "ftp://h/x", "ws:///nohost"])
def test_socket_url_rejects_other_urls(bad: str) -> None:
    with pytest.raises(ValueError):
        socket_url(bad)


def test_client_frames() -> None:
    assert heartbeat_frame("9") == Frame("phoenix", "heartbeat", {}, "9")
    b = [Binding("INSERT", "public", "alerts", "branch_id=eq.1"), Binding()]
    j = join_frame("realtime:a", "4", "3", b, "tok", POS)
    assert j.event == "phx_join" and (j.ref, j.join_ref) == ("4", "3")
    cfg = j.payload["config"]
    assert cfg["postgres_changes"] == [
        {"event": "INSERT", "schema": "public", "table": "alerts", "filter": "branch_id=eq.1"},
        {"event": "*", "schema": "public"},
    ]
    assert cfg["resume_from"] == POS and cfg["private"] is False
    assert j.payload["access_token"] == "tok"
    fresh = join_frame("realtime:a", "1", "1", b, None, None)
    assert "resume_from" not in fresh.payload["config"] and "access_token" not in fresh.payload
    assert leave_frame("realtime:a", "5", "3") == Frame("realtime:a", "phx_leave", {}, "5", "3")
    assert access_token_frame("realtime:a", "6", "3", "t2").payload == {"access_token": "t2"}


def test_replies_and_binding_ids() -> None:
    ok, resp = parse_reply({"status": "ok", "response": {"postgres_changes": [{"id": 11}, {"id": 12}]}})
    assert ok and binding_ids(resp, 2) == [11, 12]
    assert binding_ids(resp, 3) == [11, 12, None]
    assert binding_ids({}, 1) == [None]
    assert parse_reply({"status": "error", "response": {"reason": "InvalidBinding: x"}}) == (
        False,
        Refusal("InvalidBinding: x", None),
    )
    refused = {
        "status": "error",
        "response": {"reason": "Unable to subscribe ...", "code": "table_not_enabled"},
    }
    assert parse_reply(refused) == (False, Refusal("Unable to subscribe ...", "table_not_enabled"))
    assert parse_reply({"status": "ok"}) == (True, {})
    with pytest.raises(ProtocolError):
        parse_reply([])


def _change(**data: Any) -> dict[str, Any]:
    base = {
        "schema": "public",
        "table": "alerts",
        "commit_timestamp": "2026-11-19T00:22:40.877Z",
        "type": "INSERT",
        "columns": [{"name": "id", "type": "int8"}],
        "record": {"id": 1},
        "errors": None,
        "position": POS,
    }
    base.update(data)
    return {"ids": [11], "data": base}


def test_changes_are_typed_with_empty_rows_instead_of_none() -> None:
    c = parse_change("dash", _change())
    assert (c.channel, c.type, c.schema, c.table, c.position) == ("dash", "INSERT", "public", "alerts", POS)
    assert c.record == {"id": 1} and c.old_record == {} and c.ids == (11,) and not c.moved_out
    assert c.columns == ({"name": "id", "type": "int8"},) and c.errors == ()
    d = parse_change("dash", _change(type="DELETE", record=None, old_record={"id": 1}))
    assert d.record == {} and d.old_record == {"id": 1}
    u = parse_change("dash", _change(type="UPDATE", old_record={"id": 1}, moved_out=True, errors=["e"]))
    assert u.moved_out and u.errors == ("e",)


@pytest.mark.parametrize(
    "payload",
    [{}, {"data": None}, _change(type="TRUNCATE"), _change(position=None), []],
)
def test_bad_changes_raise(payload: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_change("dash", payload)


def test_system_events() -> None:
    sub = {
        "channel": "d",
        "extension": "postgres_changes",
        "status": "ok",
        "message": "Subscribed to PostgreSQL",
    }
    assert parse_system("d", {**sub, "position": POS}) == Subscribed(POS)
    assert parse_system("d", sub) == Subscribed(None)  # relay not streaming yet: no position
    resumed = {**sub, "message": "Resumed: 3", "resumed_from": "A", "replayed": 3, "position": POS}
    assert parse_system("d", resumed) == Resumed(POS, "A", 3)
    resync = {
        "channel": "d",
        "extension": "postgres_changes",
        "status": "error",
        "code": "resync_needed",
        "message": "resync needed: ...",
        "resume_from": "A",
        "retained_from": "B",
        "position": POS,
    }
    assert parse_system("d", resync) == ResyncNeeded("d", "resync needed: ...", POS, "A", "B")
    expired = {
        "channel": "d",
        "extension": "system",
        "status": "error",
        "message": "Token has expired 3 seconds ago",
    }
    # (no code: an older relay; the text decides)
    assert parse_system("d", expired) == ChannelClosedByServer("Token has expired 3 seconds ago", token=True)


def test_channel_closed_by_server_is_judged_by_code_not_text() -> None:
    """With a ``code`` the message text is never read: a token code is a token error whatever it
    says, and a topic policy's refusal mentioning "token" is not one."""
    base = {"channel": "d", "extension": "system", "status": "error"}
    for code in ("InvalidJWTToken", "MalformedJWT", "JwtSignatureError", "MissingJWT"):
        event = parse_system("d", {**base, "message": "Channel closed", "code": code})
        assert event == ChannelClosedByServer("Channel closed", token=True, code=code)
    policy = "Unauthorized: You do not have permissions to read from this Channel topic: token-room"
    assert parse_system("d", {**base, "message": policy, "code": "Unauthorized"}) == ChannelClosedByServer(
        policy, token=False, code="Unauthorized"
    )
    # a text that the old guess took for a token error, with a code that says otherwise
    odd = "access token quota: too many channels"
    assert parse_system("d", {**base, "message": odd, "code": "too_many_channels"}) == ChannelClosedByServer(
        odd, token=False, code="too_many_channels"
    )
    assert isinstance(parse_system("d", {"status": "ok", "extension": "presence"}), OtherSystem)
    with pytest.raises(ProtocolError):
        parse_system("d", "x")


def test_parse_system_token_expiring() -> None:
    from relay_client.protocol import TokenExpiring

    ev = parse_system(
        "c",
        {
            "channel": "c",
            "extension": "system",
            "status": "ok",
            "code": "token_expiring",
            "message": "Token expires in 30 seconds",
            "expires_at": 1_800_000_030,
        },
    )
    assert ev == TokenExpiring("Token expires in 30 seconds", 1_800_000_030.0)
    odd = parse_system(
        "c", {"extension": "system", "status": "ok", "code": "token_expiring", "expires_at": True}
    )
    assert isinstance(odd, TokenExpiring) and odd.expires_at is None


def test_channel_errors_decide_by_code() -> None:
    from relay_client.errors import ChannelError, JoinError, SendError

    policy = "Unauthorized: You do not have permissions to write to this Channel topic: r"
    assert SendError("r", "track", policy, code="Unauthorized").unauthorized
    # the code wins over a text that looks like a policy refusal
    assert not JoinError("r", "Unauthorized: but really a quota", code="too_many_channels").unauthorized
    assert not ChannelError("r", "x", code="InvalidJWTToken").unauthorized
    # no code (an older relay): the text fallback
    assert ChannelError("r", policy).unauthorized and not ChannelError("r", "nope").unauthorized
    assert JoinError("r", "Realtime was unable to connect", code="UnableToConnectToProject").retryable
    assert not JoinError("r", "UnableToConnectToProject: x").retryable  # text is never read
