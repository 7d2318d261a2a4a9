"""End to end over a real WebSocket against a real Postgres: join, receive, filters, errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

BOOKINGS = {"event": "*", "schema": "public", "table": "bookings"}


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _new_booking(dsn: str, branch: int = 1, status: str = "pending") -> int:
    rows = _exec(
        dsn,
        "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
        "select %s, (select id from clients order by id limit 1), 'haircut', %s, "
        "now(), now() + interval '1 hour', 42.50 returning id",
        (branch, status),
    )
    return int(rows[0][0])


def _is_change(m: dict[str, Any]) -> bool:
    return bool(m["event"] == "postgres_changes")


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_insert_update_delete_flow(pg_dsn: str, vsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, vsn=vsn) as c:
        reply = await c.join("dash", [BOOKINGS])
        assert reply["payload"]["status"] == "ok", reply
        (binding,) = reply["payload"]["response"]["postgres_changes"]
        assert binding["table"] == "bookings" and isinstance(binding["id"], int) and binding["id"] != 0
        sysmsg = await c.recv_until(lambda m: m["event"] == "system")
        start = sysmsg["payload"].pop("position")  # where a later resume may start from
        assert sysmsg["payload"] == {
            "channel": "dash",
            "extension": "postgres_changes",
            "status": "ok",
            "message": "Subscribed to PostgreSQL",
        }
        t0 = time.monotonic()
        bid = await asyncio.to_thread(_new_booking, pg_dsn)
        ins = await c.recv_until(_is_change)
        latency = time.monotonic() - t0
        data = ins["payload"]["data"]
        assert ins["payload"]["ids"] == [binding["id"]]
        assert ins["ref"] is None
        assert data["type"] == "INSERT" and data["table"] == "bookings" and data["schema"] == "public"
        assert data["record"]["id"] == bid and data["record"]["price"] == 42.5
        assert data["commit_timestamp"].endswith("Z") and "T" in data["commit_timestamp"]
        types = {col["name"]: col["type"] for col in data["columns"]}
        assert types["id"] == "int8" and types["price"] == "numeric" and types["starts_at"] == "timestamptz"
        assert data["record"]["starts_at"].endswith("+00:00")
        assert "old_record" not in data and data["errors"] is None
        assert data["position"] > start  # every change after the join's position
        assert latency < 2.0

        await asyncio.to_thread(
            _exec, pg_dsn, "update bookings set status = 'confirmed' where id = %s", (bid,)
        )
        upd = (await c.recv_until(_is_change))["payload"]["data"]
        assert upd["type"] == "UPDATE" and upd["record"]["status"] == "confirmed"
        assert upd["old_record"]["status"] == "pending"

        await asyncio.to_thread(_exec, pg_dsn, "delete from bookings where id = %s", (bid,))
        dele = (await c.recv_until(_is_change))["payload"]["data"]
        assert dele["type"] == "DELETE" and dele["old_record"]["id"] == bid and "record" not in dele
        # every change carries its place in the commit order
        assert data["position"] < upd["position"] < dele["position"]


async def test_filters_and_event_types(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        reply = await c.join(
            "f",
            [
                {"event": "INSERT", "schema": "public", "table": "bookings", "filter": "branch_id=eq.2"},
                {"event": "DELETE", "schema": "public", "table": "bookings", "filter": "branch_id=in.(1,3)"},
            ],
        )
        assert reply["payload"]["status"] == "ok"
        ids = [b["id"] for b in reply["payload"]["response"]["postgres_changes"]]
        assert (
            len(set(ids)) == 2
            and reply["payload"]["response"]["postgres_changes"][0]["filter"] == "branch_id=eq.2"
        )
        b1 = await asyncio.to_thread(_new_booking, pg_dsn, 1)  # not delivered (INSERT only for branch 2)
        b2 = await asyncio.to_thread(_new_booking, pg_dsn, 2)  # delivered
        await asyncio.to_thread(_exec, pg_dsn, "delete from bookings where id in (%s, %s)", (b1, b2))
        got = [m for m in await c.collect_n(_is_change, 2) if _is_change(m)]
        seen = [
            (
                m["payload"]["data"]["type"],
                (m["payload"]["data"].get("record") or m["payload"]["data"]["old_record"])["id"],
                m["payload"]["ids"],
            )
            for m in got
        ]
        assert seen == [("INSERT", b2, [ids[0]]), ("DELETE", b1, [ids[1]])]


async def test_non_service_role_receives_no_rows(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, token(role="authenticated")) as c:
        reply = await c.join("dash", [BOOKINGS])
        assert reply["payload"]["status"] == "ok"
        await asyncio.to_thread(_new_booking, pg_dsn)
        assert [m for m in await c.collect(1.5) if _is_change(m)] == []


async def test_bad_input_gets_errors_and_socket_survives(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await c.send_raw("{not json")
        err = await c.recv()
        assert (
            err["payload"]["status"] == "error" and "malformed JSON" in err["payload"]["response"]["reason"]
        )
        r = await c.join(
            "x", [{"event": "*", "schema": "public", "table": "bookings", "filter": "branch_id=zz.1"}]
        )
        assert r["payload"]["status"] == "error" and "unknown operator" in r["payload"]["response"]["reason"]
        r = await c.join(
            "x", [{"event": "*", "schema": "public", "table": "bookings", "filter": "nope=eq.1"}]
        )
        assert "does not exist" in r["payload"]["response"]["reason"]
        r = await c.join("x", [{"event": "*", "schema": "public", "table": "no_such_table"}])
        assert r["payload"]["status"] == "error"
        r = await c.join("x", [BOOKINGS], access_token=token(ttl=-120))
        assert r["payload"]["response"]["reason"].startswith("InvalidJWTToken: Token has expired")
        ref = await c.send("realtime:never", "access_token", {"access_token": token()})
        m = await c.recv_until(lambda m: m["ref"] == ref)
        response = {"reason": "unmatched topic", "code": "unmatched_topic"}
        assert m["payload"] == {"status": "error", "response": response}
        ref = await c.send("realtime:x", "phx_join", {"config": {}})
        assert (await c.recv_until(lambda m: m["ref"] == ref))["payload"]["status"] == "ok"
        ref = await c.send("realtime:x", "bogus_event", {})
        assert (
            "unknown event"
            in (await c.recv_until(lambda m: m["ref"] == ref))["payload"]["response"]["reason"]
        )
        big = "x" * (relay.server.config.max_frame_bytes + 10)
        ref = await c.send("realtime:x", "broadcast", {"payload": big})
        m = await c.recv_until(lambda m: m["ref"] == ref)
        assert "too large" in m["payload"]["response"]["reason"]
        ref = await c.send("phoenix", "heartbeat", {})
        assert (await c.recv_until(lambda m: m["ref"] == ref))["payload"] == {"status": "ok", "response": {}}


async def test_bad_connect_token_refused(pg_dsn: str) -> None:
    import aiohttp

    async with running_relay(pg_dsn) as relay, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
        async with s.get(url, params={"apikey": "garbage", "vsn": "1.0.0"}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"].startswith("MalformedJWT")
        async with s.get(url, params={"apikey": token(ttl=-5)}) as resp:
            assert resp.status == 403
            assert "Token has expired" in (await resp.json())["error"]
