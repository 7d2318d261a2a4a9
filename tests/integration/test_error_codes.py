"""Every error the relay sends over a real socket carries a documented ``code``.

A representative refusal of each path (handshake, join, push, malformed frames, binary frames,
presence, token revocation) is triggered; every ``phx_reply`` error and every ``system`` error
seen must carry the expected code, and that code must be in docs/protocol.md's table.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.support.relay import PhoenixClient, running_relay, token
from tests.unit.server.test_error_codes import documented_codes

pytestmark = pytest.mark.pg

BOOKINGS = {"event": "*", "schema": "public", "table": "bookings"}


def _is_error(m: dict[str, Any]) -> bool:
    p = m.get("payload")
    if not isinstance(p, dict):
        return False
    return (m["event"] == "phx_reply" and p.get("status") == "error") or (
        m["event"] == "system" and p.get("status") == "error"
    )


def _code(m: dict[str, Any]) -> str:
    p = m["payload"]
    return str(p["response"]["code"] if m["event"] == "phx_reply" else p["code"])


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_every_error_reply_has_a_documented_code(pg_dsn: str, vsn: str) -> None:
    documented = set(documented_codes())
    user = token(role="authenticated", sub="u1")
    async with (
        running_relay(pg_dsn, max_frame_bytes=4096) as relay,
        PhoenixClient.connect(relay, vsn=vsn) as c,
    ):
        seen: list[str] = []

        async def expect(ref: str | None, code: str) -> None:
            m = await c.recv_until(lambda m: m.get("ref") == ref and m["event"] == "phx_reply")
            assert _is_error(m), m
            assert _code(m) == code, m
            seen.append(code)

        async def join(topic: str, config: dict[str, Any], code: str, tok: str | None = None) -> None:
            payload: dict[str, Any] = {"config": config}
            if tok is not None:
                payload["access_token"] = tok
            await expect(await c.send(topic, "phx_join", payload, join_ref="j"), code)

        await join("nope", {}, "UnknownTopic")
        await join(
            "realtime:a", {"postgres_changes": [{**BOOKINGS, "filter": "nope=eq.1"}]}, "InvalidBinding"
        )
        await join(
            "realtime:a", {"postgres_changes": [{**BOOKINGS, "table": "no_such"}]}, "table_not_enabled"
        )
        await join("realtime:a", {"resume_from": "0/16B3748"}, "InvalidResume")
        await join("realtime:a", {"broadcast": {"replay": {"since": 1}}}, "InvalidReplay")
        await join("realtime:a", {}, "InvalidJWTToken", tok=token(ttl=-120))
        await join("realtime:a", {}, "MalformedJWT", tok="not-a-jwt")
        await join("realtime:secret", {"private": True}, "Unauthorized", tok=user)
        await expect(
            await c.send("realtime:never", "broadcast", {"event": "x", "payload": {}}), "unmatched_topic"
        )

        ok = await c.join("b", [], access_token=user)
        assert ok["payload"]["status"] == "ok", ok
        await expect(await c.send("realtime:b", "bogus", {}), "unknown_event")
        await expect(await c.send("realtime:b", "broadcast", {"payload": {}}), "invalid_broadcast")
        await expect(await c.send("realtime:b", "presence", {"event": "wave"}), "presence_invalid")
        await expect(
            await c.send("realtime:b", "broadcast", {"event": "x", "payload": {"a": "x" * 5000}}),
            "frame_too_large",
        )
        await c.send_raw("{not json")
        await expect(None, "invalid_message")
        await c.ws.send_bytes(b"\x09garbage")
        if vsn == "1.0.0":
            await expect(None, "binary_not_supported")
        else:
            await expect(None, "invalid_binary_frame")

        # an access_token push with a bad token ends the channel with a coded system error
        await c.send("realtime:b", "access_token", {"access_token": "not-a-jwt"}, join_ref="j")
        m = await c.recv_until(lambda m: m["event"] == "system")
        assert _is_error(m) and _code(m) == "MalformedJWT", m
        seen.append(_code(m))

        # nothing else the relay sent was an error without a code
        for m in c.inbox:
            if _is_error(m):
                assert _code(m) in documented, m
        assert set(seen) <= documented

        # handshake refusals are HTTP errors with a code as well
        url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
        async with aiohttp.ClientSession() as session:
            for params, code in (
                ({"vsn": vsn}, "MissingJWT"),
                ({"vsn": "9", "apikey": user}, "unsupported_vsn"),
                ({"vsn": vsn, "apikey": "x"}, "MalformedJWT"),
            ):
                async with session.get(url, params=params) as resp:
                    assert resp.status in (400, 403)
                    body = await resp.json()
                    assert body["code"] == code and body["code"] in documented, body
        await asyncio.sleep(0)
