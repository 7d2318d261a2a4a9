"""Each quota against a real relay: the documented refusal (reason + code, or close code),
counted in ``server.quota_hits`` and audited on ``relay.audit`` without the token."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import psycopg
import pytest

from relay.core.quotas import CHANGE_TOO_LARGE_ERROR
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

BOOKINGS = {"event": "INSERT", "schema": "public", "table": "bookings"}


def is_reply(ref: str | None) -> Any:
    return lambda m: m["event"] == "phx_reply" and m["ref"] == ref


async def refused_close(port: int, tok: str) -> tuple[int | None, str]:
    """Connect and expect the relay to close at once: its close code and reason."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"http://127.0.0.1:{port}/realtime/v1/websocket", params={"apikey": tok, "vsn": "1.0.0"}
        ) as ws,
    ):
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        return ws.close_code, str(msg.extra or "")


async def wait_for(pred: Any, what: str) -> None:
    for _ in range(100):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def test_concurrent_connections_global_and_per_sub(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.audit")
    async with running_relay(pg_dsn, max_connections=2, max_connections_per_sub=1) as relay:
        alice = token(sub="alice")
        async with PhoenixClient.connect(relay, alice):
            code, reason = await refused_close(relay.port, alice)  # a second socket for alice
            assert code == 1013
            assert reason.startswith("too_many_connections: ConnectionRateLimitReached")
            assert relay.server.quota_hits["connections_per_sub"] == 1
            async with PhoenixClient.connect(relay, token(sub="bob")) as bob:
                code, reason = await refused_close(relay.port, token(sub="carol"))
                assert code == 1013 and "Too many connected users" in reason
                assert relay.server.quota_hits["connections"] == 1
                # the refused sockets were never counted: bob still works
                assert (await bob.join("ok", []))["payload"]["status"] == "ok"
        # closed sockets give their places back
        await wait_for(lambda: relay.server.conn_counts.total == 0, "connections not released")
        async with PhoenixClient.connect(relay, alice) as again:
            assert (await again.join("ok", []))["payload"]["status"] == "ok"
    hits = _quota_audits(caplog)
    assert {getattr(r, "kind", None) for r in hits} == {"connections", "connections_per_sub"}
    assert all(r.levelno == logging.WARNING and "too_many_connections" in r.getMessage() for r in hits)
    assert not any(alice in r.getMessage() for r in hits)  # never a token in the audit log


async def test_connections_per_address(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, max_connections_per_address=1, max_connections_per_sub=0) as relay,
        PhoenixClient.connect(relay),
    ):
        code, reason = await refused_close(relay.port, token())
        assert code == 1013 and "from this address" in reason
        assert relay.server.quota_hits["connections_per_address"] == 1


async def test_channels_per_connection(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.audit")
    async with (
        running_relay(pg_dsn, max_channels_per_connection=2) as relay,
        PhoenixClient.connect(relay) as c,
    ):
        assert (await c.join("a", []))["payload"]["status"] == "ok"
        assert (await c.join("b", []))["payload"]["status"] == "ok"
        third = await c.join("c", [])
        assert third["payload"] == {
            "status": "error",
            "response": {"reason": "ChannelRateLimitReached: Too many channels", "code": "too_many_channels"},
        }
        assert (await c.join("a", []))["payload"]["status"] == "ok"  # a rejoin replaces, never counts twice
        ref = await c.send("realtime:b", "phx_leave", {})
        await c.recv_until(is_reply(ref))
        assert (await c.join("c", []))["payload"]["status"] == "ok"  # leaving frees a place
        assert relay.server.quota_hits["channels"] == 1
    (hit,) = _quota_audits(caplog)
    assert "kind=channels" in hit.getMessage() and "topic=realtime:c" in hit.getMessage()


async def test_joins_per_second(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, max_joins_per_second=3) as relay, PhoenixClient.connect(relay) as c:
        # sent back to back (no waiting for replies), so no refill happens in between
        refs = [
            await c.send(f"realtime:j{i}", "phx_join", {"config": {}}, join_ref=f"jr{i}") for i in range(5)
        ]
        statuses = [(await c.recv_until(is_reply(r)))["payload"] for r in refs]
        assert [p["status"] for p in statuses] == ["ok"] * 3 + ["error"] * 2, statuses
        assert statuses[3]["response"] == {
            "reason": "ClientJoinRateLimitReached: Too many joins per second",
            "code": "too_many_joins",
        }
        assert relay.server.quota_hits["joins"] == 2
        await asyncio.sleep(0.5)  # the bucket refills: a paced client is served again
        assert (await c.join("later", []))["payload"]["status"] == "ok"


async def test_broadcast_messages_per_second(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, max_events_per_second=3) as relay,
        PhoenixClient.connect(relay) as sender,
        PhoenixClient.connect(relay) as reader,
    ):
        assert (await reader.join("room", []))["payload"]["status"] == "ok"
        cfg: dict[str, Any] = {"broadcast": {"ack": True, "self": False}}
        assert (await sender.join("room", [], **cfg))["payload"]["status"] == "ok"
        refs = [
            await sender.send(
                "realtime:room", "broadcast", {"type": "broadcast", "event": "m", "payload": {"i": i}}
            )
            for i in range(6)
        ]
        replies = [(await sender.recv_until(is_reply(r)))["payload"] for r in refs]
        assert [p["status"] for p in replies[:3]] == ["ok"] * 3
        refused = [p for p in replies if p["status"] == "error"]
        assert refused and all(p["response"]["code"] == "too_many_messages" for p in refused)
        assert "Too many messages per second" in refused[0]["response"]["reason"]
        got = await reader.collect(0.5)
        delivered = [m["payload"]["payload"]["i"] for m in got if m["event"] == "broadcast"]
        assert delivered == [i for i, p in enumerate(replies) if p["status"] == "ok"]  # refused = not sent
        assert relay.server.quota_hits["messages"] == len(refused)


async def test_presence_messages_per_second_and_keys(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn, max_presence_events_per_second=2, max_presence_keys=3) as relay,
        PhoenixClient.connect(relay) as c,
    ):
        assert (await c.join("p", [], presence={"key": "me", "enabled": True}))["payload"]["status"] == "ok"

        metas = [{"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 1, "b": 2, "c": 3}, {"a": 1}]
        # sent back to back (no waiting for replies), so no refill happens in between
        refs = [
            await c.send("realtime:p", "presence", {"type": "presence", "event": "track", "payload": m})
            for m in metas
        ]
        too_many, ok, fast = [(await c.recv_until(is_reply(r)))["payload"] for r in refs]
        assert too_many["status"] == "error"
        assert too_many["response"]["code"] == "too_many_presence_keys"
        assert ok["status"] == "ok"
        assert fast["response"] == {
            "reason": "PresenceRateLimitReached: Too many presence messages per second",
            "code": "too_many_presence_messages",
        }
        hits = relay.server.quota_hits
        assert hits["presence_keys"] == 1 and hits["presence_events"] == 1


def _insert_booking(dsn: str, service: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
            "select 1, (select id from clients order by id limit 1), %s, 'pending', "
            "now(), now() + interval '1 hour', 42.50 returning id",
            (service,),
        ).fetchone()
        assert row is not None
        return int(row[0])


async def test_postgres_change_payload_over_the_limit_drops_large_values(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, max_change_bytes=2000) as relay, PhoenixClient.connect(relay) as c:
        assert (await c.join("big", [BOOKINGS]))["payload"]["status"] == "ok"
        await c.recv_until(lambda m: m["event"] == "system")
        small = await asyncio.to_thread(_insert_booking, pg_dsn, "haircut")
        big = await asyncio.to_thread(_insert_booking, pg_dsn, "x" * 5000)
        changes = [
            (await c.recv_until(lambda m: m["event"] == "postgres_changes"))["payload"]["data"] for _ in "ab"
        ]
        assert changes[0]["record"]["id"] == small and changes[0]["record"]["service"] == "haircut"
        assert changes[0]["errors"] is None
        data = changes[1]
        assert data["record"]["id"] == big and "service" not in data["record"]
        assert data["record"]["status"] == "pending"  # small values are kept
        assert data["errors"] == [CHANGE_TOO_LARGE_ERROR]
        assert any(col["name"] == "service" for col in data["columns"])
        assert relay.server.quota_hits["postgres_change_too_large"] == 1


async def test_token_expiry_warning_then_refresh(pg_dsn: str) -> None:
    """A channel is warned before its token expires; a new access_token keeps it (and re-arms)."""
    async with running_relay(pg_dsn, token_expiry_warning=2.0) as relay, PhoenixClient.connect(relay) as c:
        short = token(ttl=6)
        t0 = time.time()
        assert (await c.join("exp", [], access_token=short))["payload"]["status"] == "ok"
        warn = await c.recv_until(lambda m: m["event"] == "system", timeout=8)
        p = warn["payload"]
        assert p["extension"] == "system" and p["status"] == "ok" and p["code"] == "token_expiring"
        assert p["channel"] == "exp" and abs(p["expires_at"] - (t0 + 6)) <= 2
        assert 3.0 <= time.time() - t0 <= 5.5  # ~2 s before exp, not at join and not at exp
        await c.send("realtime:exp", "access_token", {"access_token": token(ttl=3600)})
        # no expiry close, no second warning: the new token is an hour away
        assert not [m for m in await c.collect(4.0) if m["event"] in ("system", "phx_close")]
        assert "realtime:exp" in {
            ch.topic for conn in relay.server.connections for ch in conn.channels.values()
        }


async def test_short_token_is_warned_at_half_life_and_expires_without_refresh(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, token_expiry_warning=30.0) as relay, PhoenixClient.connect(relay) as c:
        t0 = time.monotonic()
        assert (await c.join("exp", [], access_token=token(ttl=4)))["payload"]["status"] == "ok"
        warn = await c.recv_until(lambda m: m["event"] == "system", timeout=6)
        assert warn["payload"]["code"] == "token_expiring"
        assert 1.0 <= time.monotonic() - t0 <= 3.5  # half of the 4 s left, not at once
        gone = await c.recv_until(lambda m: m["event"] == "system", timeout=6)
        assert gone["payload"]["status"] == "error" and "expired" in gone["payload"]["message"]
        assert relay.server.config.token_expiry_warning == 30.0


def _quota_audits(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ``quota_hit`` events of the audit log (a refused join also writes ``join_refused``)."""
    return [r for r in caplog.records if r.name == "relay.audit" and getattr(r, "event", None) == "quota_hit"]
