"""Reading a join without a socket: what it asks for, and what in it is refused (as fields)."""

from __future__ import annotations

from typing import Any

from relay.core.errors import Code
from relay.core.protocol import Frame
from relay.server.session import read_join

BOOKINGS = {"event": "*", "schema": "public", "table": "bookings"}
POSITION = "9F0C2A1B3D4E5F60/00000000016B3748:00000002"


def _join(config: Any, **payload: Any) -> Frame:
    return Frame("realtime:room", "phx_join", {"config": config, **payload}, "1", "1")


def test_a_plain_join() -> None:
    req = read_join(_join({"postgres_changes": [BOOKINGS]}, access_token="t"))
    assert req.token == "t" and not req.private and req.resume is None and req.replay is None
    assert [s.table for s in req.specs] == ["bookings"] and req.bindings_error is None
    assert not req.tx_end and not req.bcast_self and not req.bcast_ack and not req.replication_ready
    assert req.presence_key and not req.presence_enabled  # an empty key gets a fresh one


def test_booleans_arrive_as_json_or_strings() -> None:
    cfg = {
        "private": "true",
        "broadcast": {"self": True, "ack": "true", "replication_ready": "TRUE"},
        "presence": {"key": "me", "enabled": "true"},
        "tx_end": True,
    }
    req = read_join(_join(cfg))
    assert req.private and req.bcast_self and req.bcast_ack and req.replication_ready and req.tx_end
    assert (req.presence_key, req.presence_enabled) == ("me", True)


def test_resume_from_the_bindings_takes_the_earliest() -> None:
    later = POSITION[:-1] + "9"
    cfg = {"postgres_changes": [{**BOOKINGS, "resume_from": later}, {**BOOKINGS, "resume_from": POSITION}]}
    req = read_join(_join(cfg))
    assert req.resume is not None and req.resume[2] == POSITION and req.resume[0] == POSITION[:16]


def test_refusals_are_kept_with_their_codes_and_texts() -> None:
    req = read_join(_join({"resume_from": "0/16B3748", "broadcast": {"replay": {"since": 1}}}))
    assert req.resume_error is not None and req.resume_error.code is Code.INVALID_RESUME
    assert req.resume_error.reason.startswith("InvalidResume: invalid position '0/16B3748'")
    assert req.replay_error is not None and req.replay_error.code is Code.INVALID_REPLAY
    assert req.replay_error.reason == "InvalidReplay: broadcast replay is only available on private channels"
    bad = read_join(_join({"postgres_changes": "bookings"}))
    assert bad.bindings_error is not None and bad.bindings_error.code is Code.INVALID_BINDING
    assert bad.bindings_error.reason == "InvalidBinding: config.postgres_changes must be a list"


def test_a_payload_that_is_not_an_object_is_an_empty_join() -> None:
    req = read_join(Frame("realtime:room", "phx_join", ["x"], "1", "1"))
    assert req.token is None and req.specs == [] and req.resume is None
