"""Hostile clients get a clear, early "no" (issue 12): expired tokens, catalog probing, claims
the relay cannot process, frames measured in bytes, and handshakes that never finish.

Each test drives a real relay over loopback against a real Postgres.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from jwt import decode as jwt_decode

from relay.core.subscriptions import TABLE_UNAVAILABLE_CODE, TABLE_UNAVAILABLE_REASON
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _client_text_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455), so that several can go out in one write."""
    data = text.encode()
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _push(topic: str, event: str, payload: Any, ref: str, join_ref: str | None = None) -> str:
    return orjson.dumps(
        {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
    ).decode()


# -- item 1: an expired connect token ----------------------------------------------------------


async def test_join_with_expired_connect_token_is_refused_before_anything(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as victim:
        reply = await victim.join("lobby", [], presence={"key": "victim", "enabled": True})
        assert reply["payload"]["status"] == "ok"
        await victim.send(
            "realtime:lobby", "presence", {"event": "track", "payload": {"email": "victim@example.com"}}
        )
        await victim.recv_until(lambda m: m["event"] == "presence_diff")

        short = token(role="anon", ttl=2)
        exp = jwt_decode(short, options={"verify_signature": False})["exp"]
        async with PhoenixClient.connect(relay, short) as attacker:
            await asyncio.sleep(max(0.0, exp - time.time()) + 0.3)
            join = {
                "config": {
                    "broadcast": {"self": False},
                    "presence": {"key": "attacker", "enabled": True},
                    "postgres_changes": [],
                }
            }
            bcast = {"type": "broadcast", "event": "steal", "payload": {"x": 1}}
            # the join and a broadcast in ONE write: nothing may be accepted for the channel
            writer = attacker.ws._writer
            assert writer is not None
            writer.transport.write(
                _client_text_frame(_push("realtime:lobby", "phx_join", join, "1", "1"))
                + _client_text_frame(_push("realtime:lobby", "broadcast", bcast, "2", "1"))
            )
            got = await attacker.collect(1.5)
            replies = {m["ref"]: m["payload"] for m in got if m["event"] == "phx_reply"}
            assert replies["1"]["status"] == "error"
            assert replies["1"]["response"]["reason"].startswith("InvalidJWTToken: Token has expired")
            unmatched = {"reason": "unmatched topic", "code": "unmatched_topic"}
            assert replies["2"] == {"status": "error", "response": unmatched}
            assert not [m for m in got if m["event"] in ("presence_state", "presence_diff", "broadcast")]
            assert "victim@example.com" not in orjson.dumps(got).decode()
        assert not [m for m in await victim.collect(0.5) if m["event"] == "broadcast"]


async def test_join_resending_the_connect_token_is_not_verified_again_but_still_expires(
    pg_dsn: str,
) -> None:
    """realtime-js sends its apikey again as every join's access_token: the relay reuses the
    socket's verified claims (one JWT verification per socket, not per join), but an expired
    token is still refused, and a different token is still verified."""
    short = token(role="anon", ttl=3)
    exp = jwt_decode(short, options={"verify_signature": False})["exp"]
    async with running_relay(pg_dsn) as relay:
        wrapper: Any = relay.server.verifier
        inner = wrapper._inner  # the verifier behind the counting wrapper
        calls: list[object] = []
        original = inner.verify

        def counting(tok: object, now: float | None = None) -> Any:
            calls.append(tok)
            return original(tok, now)

        inner.verify = counting
        async with PhoenixClient.connect(relay, short) as c:
            assert len(calls) == 1  # the upgrade
            assert (await c.join("a", [], access_token=short))["payload"]["status"] == "ok"
            assert (await c.join("b", [], access_token=short))["payload"]["status"] == "ok"
            assert len(calls) == 1  # the joins reused the socket's claims
            other = token(role="anon", ttl=60)
            assert (await c.join("c", [], access_token=other))["payload"]["status"] == "ok"
            assert calls[-1] == other  # a different token is verified
            await asyncio.sleep(max(0.0, exp - time.time()) + 0.3)
            late = await c.join("d", [], access_token=short)
            assert late["payload"]["status"] == "error"
            assert late["payload"]["response"]["reason"].startswith("InvalidJWTToken: Token has expired")


# -- item 2: catalog probing -------------------------------------------------------------------


async def test_bindings_outside_the_publication_get_one_uniform_refusal(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "create table public.unpublished (id int8 primary key, secret text); "
            "create view public.bookings_view as select * from public.bookings; "
            "create schema hidden; create table hidden.t (id int8 primary key)",
        )
        probes: list[dict[str, Any]] = [
            {"schema": "pg_catalog", "table": "pg_authid", "filter": "rolpassword=eq.x"},
            {"schema": "pg_catalog", "table": "pg_authid", "filter": "rolpasswordx=eq.x"},
            {"schema": "pg_catalog", "table": "pg_authid"},
            {"schema": "public", "table": "unpublished", "filter": "secret=eq.x"},
            {"schema": "public", "table": "unpublished", "filter": "nope=eq.x"},
            {"schema": "public", "table": "no_such_table"},
            {"schema": "public", "table": "bookings_view"},
            {"schema": "hidden", "table": "t"},
            {"schema": "pg_catalog", "table": "*"},
            {"schema": "hidden"},
            {"schema": "no_such_schema"},
        ]
        async with PhoenixClient.connect(relay, token(role="anon")) as c:
            for i, probe in enumerate(probes):
                r = await c.join(f"probe{i}", [{"event": "*", **probe}])
                assert r["payload"] == {
                    "status": "error",
                    "response": {"reason": TABLE_UNAVAILABLE_REASON, "code": TABLE_UNAVAILABLE_CODE},
                }, probe
            # inside the publication, column errors are still explained
            r = await c.join(
                "pub", [{"event": "*", "schema": "public", "table": "bookings", "filter": "x=eq.1"}]
            )
            assert 'column "x" does not exist in public.bookings' in r["payload"]["response"]["reason"]
            # and published tables, alone or schema-wide, still join
            r = await c.join(
                "ok", [{"event": "*", "schema": "public", "table": "bookings"}, {"schema": "public"}]
            )
            assert r["payload"]["status"] == "ok", r

        # a table enabled later can be joined (the refusal is not remembered for long)
        await asyncio.to_thread(_exec, pg_dsn, "select realtime.enable_table('public.unpublished')")
        deadline = time.monotonic() + 10  # asked again until the relay has seen it (not a fixed wait)
        async with PhoenixClient.connect(relay) as c:
            while True:
                r = await c.join("later", [{"event": "*", "schema": "public", "table": "unpublished"}])
                if r["payload"]["status"] == "ok" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert r["payload"]["status"] == "ok", r


# -- item 3: claims the relay cannot process ---------------------------------------------------


async def test_unusable_claims_are_refused_everywhere_never_an_internal_error(pg_dsn: str) -> None:
    huge = 2**70
    async with running_relay(pg_dsn) as relay, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
        for bad, reason in [
            (token(role="anon", branch_id=huge), "InvalidJWTToken: Claim `branch_id` holds an integer"),
            (token(role="anon", exp=huge), "InvalidJWTToken: Claim `exp` holds an integer"),
            (token(role="anon", nbf=str(int(time.time()))), "InvalidJWTToken: Field `nbf` must be"),
            (token(role="anon", iat="0"), "InvalidJWTToken: Field `iat` must be"),
        ]:
            async with s.get(url, params={"apikey": bad}) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"].startswith(reason)

        async with PhoenixClient.connect(relay, token(role="anon")) as c:
            bad = token(role="anon", branch_id=huge)
            # as a join's access_token: refused clearly
            r = await c.join("j", [{"event": "*", "schema": "public", "table": "bookings"}], access_token=bad)
            assert r["payload"]["response"]["reason"].startswith(
                "InvalidJWTToken: Claim `branch_id` holds an integer outside the 64-bit range"
            )
            # pushed as access_token: the channel is told and closed, not left half-alive
            r = await c.join("p", [{"event": "*", "schema": "public", "table": "bookings"}])
            assert r["payload"]["status"] == "ok"
            await c.send("realtime:p", "access_token", {"access_token": bad}, join_ref=r["ref"])
            got = await c.collect(1.0)
            events = [(m["event"], m["payload"].get("status")) for m in got if m["topic"] == "realtime:p"]
            assert ("system", "error") in events and ("phx_close", None) in events, got
            assert not [m for m in got if m["event"] == "phx_reply"], got
            # a far but representable exp is fine everywhere
            far = token(role="service_role", exp=2**62)
            r = await c.join(
                "far", [{"event": "*", "schema": "public", "table": "bookings"}], access_token=far
            )
            assert r["payload"]["status"] == "ok", r
            await c.send("realtime:far", "access_token", {"access_token": far})
            later = [m for m in await c.collect(0.5) if m["topic"] == "realtime:far"]
            assert not [m for m in later if m["event"] in ("phx_reply", "phx_close") or "error" in str(m)]


# -- item 6: frame size counts bytes -----------------------------------------------------------


async def test_frame_limit_counts_utf8_bytes(pg_dsn: str) -> None:
    limit = 262_144
    async with running_relay(pg_dsn, max_frame_bytes=limit) as relay, PhoenixClient.connect(relay) as c:
        r = await c.join("f", [])
        assert r["payload"]["status"] == "ok"
        big = "€" * 209_864  # 209,864 characters, 629,592 bytes of UTF-8
        ref = await c.send(
            "realtime:f", "broadcast", {"type": "broadcast", "event": "e", "payload": {"t": big}}
        )
        m = await c.recv_until(lambda m: m["ref"] == ref)
        assert m["payload"] == {
            "status": "error",
            "response": {"reason": f"frame too large: limit is {limit} bytes", "code": "frame_too_large"},
        }
        fits = "€" * 80_000  # 240,000 bytes: under the limit
        ref = await c.send(
            "realtime:f",
            "broadcast",
            {"type": "broadcast", "event": "e", "payload": {"t": fits}},
        )
        assert not [m for m in await c.collect(0.5) if m["ref"] == ref]  # accepted (no ack asked)
        ref = await c.send("phoenix", "heartbeat", {})
        assert (await c.recv_until(lambda m: m["ref"] == ref))["payload"]["status"] == "ok"


# -- item 7: slow handshakes -------------------------------------------------------------------


async def test_trickled_handshake_is_closed_within_the_timeout(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, handshake_timeout=1.0) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        t0 = time.monotonic()
        writer.write(
            f"GET /realtime/v1/websocket?apikey={token()}&vsn=1.0.0 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{relay.port}\r\n".encode()
        )
        closed_after: float | None = None
        for i in range(12):  # a header line every 0.4 s, never the blank line that ends them
            try:
                writer.write(f"X-Slow-{i}: {'a' * 10}\r\n".encode())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 0.4)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if data == b"" or reader.at_eof():
                closed_after = time.monotonic() - t0
                break
        writer.close()
        assert closed_after is not None, "the half-sent handshake was never closed"
        assert closed_after < 2.5

        # an upgraded WebSocket lives past the handshake timeout
        async with PhoenixClient.connect(relay) as c:
            await asyncio.sleep(1.5)
            ref = await c.send("phoenix", "heartbeat", {})
            assert (await c.recv_until(lambda m: m["ref"] == ref))["payload"]["status"] == "ok"
