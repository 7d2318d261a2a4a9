"""Contract, part two: the frames only the server builds, recorded from a running relay and
decoded by the SDK's protocol module.

tests/unit/test_contract.py covers what the relay's pure encoders build.  The ``system``
messages (Subscribed, Resumed, resync_needed, token_expiring, the token-expired error,
replication ready, broadcast_replay_incomplete), ``tx_end``, ``phx_close`` and coded join
refusals are put together by the server, so they are taken here from the wire, exactly as sent,
and fed to ``relay_client.protocol``: the SDK must turn each into the right typed event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from relay_client.protocol import (
    ChannelClosedByServer,
    OtherSystem,
    Refusal,
    Resumed,
    Subscribed,
    TokenExpiring,
    decode,
    parse_change,
    parse_reply,
    parse_system,
)
from relay_client.types import ResyncNeeded

from tests.interop.helpers import insert_booking
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

BOOKINGS = [{"event": "INSERT", "schema": "public", "table": "bookings"}]


def _wire(c: PhoenixClient, m: dict[str, Any]) -> str:
    """The exact text of a frame the client received (vsn 1.0.0)."""
    text = c.wire[c.inbox.index(m)]
    assert isinstance(text, str)
    return text


async def _system(c: PhoenixClient, timeout: float = 10.0) -> tuple[str, Any]:
    m = await c.recv_until(lambda m: m["event"] == "system", timeout)
    f = decode(_wire(c, m))
    assert f.event == "system"
    return f.topic, parse_system(f.topic.removeprefix("realtime:"), f.payload)


async def _after_subscribed(c: PhoenixClient) -> Any:
    """The system event after a join's Subscribed (a resume is Subscribed, then its outcome)."""
    _, first = await _system(c)
    assert isinstance(first, Subscribed), first
    return (await _system(c))[1]


async def test_server_built_frames_decode_to_the_sdks_typed_events(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, token_expiry_warning=2.0) as relay:
        await asyncio.wait_for(relay.server.floors_ready.wait(), 20)
        async with PhoenixClient.connect(relay) as c:
            # join ok -> Subscribed, replication ready (an informational system message)
            reply = await c.join(
                "dash",
                BOOKINGS,
                tx_end=True,
                broadcast={"ack": False, "self": False, "replication_ready": True},
            )
            ok, _ = parse_reply(decode(_wire(c, reply)).payload)
            assert ok
            seen: list[Any] = [(await _system(c))[1], (await _system(c))[1]]
            subscribed = next(e for e in seen if isinstance(e, Subscribed))
            assert subscribed.position is not None and "/" in subscribed.position
            assert any(isinstance(e, OtherSystem) and e.payload["extension"] == "system" for e in seen)

            # a change and its transaction's end
            await insert_booking(pg_dsn)
            change = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            parsed = parse_change("dash", decode(_wire(c, change)).payload)
            assert (
                parsed.type == "INSERT"
                and parsed.table == "bookings"
                and parsed.position > subscribed.position
            )
            end = await c.recv_until(lambda m: m["event"] == "tx_end")
            f = decode(_wire(c, end))  # the SDK does not ask for tx_end; it must still read it
            assert f.topic == "realtime:dash" and isinstance(f.payload, dict) and f.payload

            # a refusal with a code: a table outside the publication
            refused = await c.join("nope", [{"event": "*", "schema": "pg_catalog", "table": "pg_authid"}])
            ok, refusal = parse_reply(decode(_wire(c, refused)).payload)
            assert not ok and isinstance(refusal, Refusal) and refusal.code == "table_not_enabled"

        async with PhoenixClient.connect(relay) as c:
            # resume from the Subscribed position: the change is replayed, then Resumed
            reply = await c.join("dash", BOOKINGS, resume_from=subscribed.position)
            assert reply["payload"]["status"] == "ok"
            resumed = await _after_subscribed(c)
            assert isinstance(resumed, Resumed) and resumed.replayed == 1
            assert resumed.resumed_from == subscribed.position
            # a position of another stream -> resync_needed
            foreign = "FEDCBA9876543210/" + subscribed.position.split("/", 1)[1]
            reply = await c.join("other", BOOKINGS, resume_from=foreign)
            assert reply["payload"]["status"] == "ok"
            resync = await _after_subscribed(c)
            assert isinstance(resync, ResyncNeeded) and resync.channel == "other" and resync.position

        async with PhoenixClient.connect(relay) as c:
            # token_expiring, then the channel is closed over its token: system error + phx_close
            t0 = time.time()
            reply = await c.join("exp", [], access_token=token(ttl=4))
            assert reply["payload"]["status"] == "ok"
            _, warning = await _system(c)
            assert isinstance(warning, TokenExpiring) and warning.expires_at is not None
            assert abs(warning.expires_at - (t0 + 4)) <= 2
            _, closed = await _system(c)
            assert isinstance(closed, ChannelClosedByServer) and closed.token
            assert closed.code in (None, "InvalidJWTToken")  # None: a relay without codes (text fallback)
            close = await c.recv_until(lambda m: m["event"] == "phx_close")
            f = decode(_wire(c, close))
            # the SDK matches a phx_close to its join by ref == join_ref
            assert f.topic == "realtime:exp" and f.ref == c.join_refs["realtime:exp"]

        # broadcast replay that cannot be complete: broadcast_replay_incomplete (informational)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("select realtime.send('{\"i\": 1}', 'note', 'room:r')")
        deadline = time.monotonic() + 10
        while not relay.server.topics.history.since("room:r", 0, 25, int(time.time() * 1000)).messages:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with PhoenixClient.connect(relay, token()) as c:
            reply = await c.join("room:r", [], private=True, broadcast={"replay": {"since": 0}})
            assert reply["payload"]["status"] == "ok", reply
            _, note = await _system(c)
            assert isinstance(note, OtherSystem) and note.payload["code"] == "broadcast_replay_incomplete"
