"""Row authorization end to end: policies in SQL, claims in JWTs, frames on real WebSockets."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

ALL_BOOKINGS = [{"event": "*", "schema": "public", "table": "bookings"}]
U1 = "00000000-0000-4000-8000-0000000000a1"
U2 = "00000000-0000-4000-8000-0000000000a2"


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _reset(dsn: str) -> None:
    """Drop the demo schema's policies on bookings: each test states its own."""
    for (name,) in _exec(dsn, "select name from realtime.policies where table_name = 'bookings'"):
        _exec(dsn, "select realtime.drop_policy('public.bookings', %s)", (name,))


def _policies(dsn: str) -> None:
    _reset(dsn)
    _exec(
        dsn,
        "select realtime.create_policy('public.bookings', 'branch members', "
        "$$branch_id = (claims->>'branch_id')::int$$)",
    )
    _exec(
        dsn, "select realtime.create_policy('public.bookings', 'admins', $$claims->>'user_role' = 'admin'$$)"
    )


def _booking(dsn: str, branch: int) -> int:
    rows = _exec(
        dsn,
        "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
        "select %s, (select min(id) from clients), 'cut', 'pending', now(), now() + interval '1 hour', 10 "
        "returning id",
        (branch,),
    )
    return int(rows[0][0])


def _is_change(m: dict[str, Any]) -> bool:
    return bool(m["event"] == "postgres_changes")


def _summary(frames: list[dict[str, Any]]) -> list[tuple[str, int, bool]]:
    out = []
    for m in frames:
        if m["event"] != "postgres_changes":
            continue
        d = m["payload"]["data"]
        row = d.get("record") if d["type"] != "DELETE" else d.get("old_record")
        out.append((d["type"], row["id"] if row else -1, bool(d.get("moved_out"))))
    return out


def _names(relay: Any) -> set[str]:
    return {cp.policy.name for cp in relay.server.authorizer.policies("public", "bookings")}


async def _settle(relay: Any, names: set[str] | None = None) -> None:
    want = {"branch members", "admins"} if names is None else names
    deadline = time.monotonic() + 5
    while _names(relay) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"policies not loaded: {_names(relay)}")
        await asyncio.sleep(0.05)


async def test_each_subscriber_sees_exactly_its_rows(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, AsyncExitStack() as stack:
        await asyncio.to_thread(_policies, pg_dsn)
        await _settle(relay)
        tokens = {
            "u1": token("authenticated", sub=U1, branch_id=1),
            "u2": token("authenticated", sub=U2, branch_id=2),
            "admin": token("authenticated", sub=U1, user_role="admin"),
            "anon": token("anon"),
        }
        clients = {}
        for name, tok in tokens.items():
            c = await stack.enter_async_context(PhoenixClient.connect(relay, tok))
            r = await c.join("dash", ALL_BOOKINGS)
            assert r["payload"]["status"] == "ok"
            clients[name] = c
        b1 = await asyncio.to_thread(_booking, pg_dsn, 1)
        b2 = await asyncio.to_thread(_booking, pg_dsn, 2)
        # b1 moves from branch 1 to branch 2: u1 loses it, u2 gains it
        await asyncio.to_thread(
            _exec, pg_dsn, "update bookings set branch_id = 2, status = 'confirmed' where id = %s", (b1,)
        )
        await asyncio.to_thread(_exec, pg_dsn, "delete from bookings where id = %s", (b1,))
        # every client listens over the same 1.5 s (one after another it was 6 s)
        frames = await asyncio.gather(*(c.collect(1.5) for c in clients.values()))
        got = dict(zip(clients, frames, strict=True))
        assert _summary(got["u1"]) == [("INSERT", b1, False), ("DELETE", b1, True)]
        assert _summary(got["u2"]) == [("INSERT", b2, False), ("UPDATE", b1, False), ("DELETE", b1, False)]
        assert _summary(got["admin"]) == [
            ("INSERT", b1, False),
            ("INSERT", b2, False),
            ("UPDATE", b1, False),
            ("DELETE", b1, False),
        ]
        assert _summary(got["anon"]) == []
        moved_out = [m for m in got["u1"] if m["event"] == "postgres_changes"][1]["payload"]["data"]
        assert moved_out["old_record"]["branch_id"] == 1 and "record" not in moved_out  # no new values leak
        moved_in = [m for m in got["u2"] if m["event"] == "postgres_changes"][1]["payload"]["data"]
        assert moved_in["record"]["branch_id"] == 2
        assert set(moved_in["old_record"]) == {"id"}  # u2 never saw the old row: only its key
        full = [m for m in got["admin"] if m["event"] == "postgres_changes"][2]["payload"]["data"]
        assert full["old_record"]["branch_id"] == 1 and full["old_record"]["status"] == "pending"


async def test_claims_are_per_channel_on_one_socket_and_one_name(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token("anon")) as c,
        PhoenixClient.connect(relay, token("authenticated", branch_id=2)) as other,
    ):
        await asyncio.to_thread(_policies, pg_dsn)
        await _settle(relay)
        # one socket, two channels with different tokens
        await c.join("a", ALL_BOOKINGS, access_token=token("authenticated", branch_id=1))
        await c.join("b", ALL_BOOKINGS, access_token=token("authenticated", branch_id=2))
        # another socket, same channel name "a", other claims
        await other.join("a", ALL_BOOKINGS)
        b1 = await asyncio.to_thread(_booking, pg_dsn, 1)
        b2 = await asyncio.to_thread(_booking, pg_dsn, 2)
        frames = await c.collect_n(_is_change, 2)
        by_topic: dict[str, list[int]] = {}
        for m in frames:
            if m["event"] == "postgres_changes":
                by_topic.setdefault(m["topic"], []).append(m["payload"]["data"]["record"]["id"])
        assert by_topic == {"realtime:a": [b1], "realtime:b": [b2]}
        assert [s[1] for s in _summary(await other.collect(0.5))] == [b2]
        # a token refresh switches the claims from then on
        await c.send("realtime:a", "access_token", {"access_token": token("authenticated", branch_id=2)})
        await asyncio.sleep(0.2)
        b3 = await asyncio.to_thread(_booking, pg_dsn, 2)
        ids = [
            (m["topic"], m["payload"]["data"]["record"]["id"])
            for m in await c.collect_n(_is_change, 2)
            if m["event"] == "postgres_changes"
        ]
        assert sorted(ids) == [("realtime:a", b3), ("realtime:b", b3)]


async def test_poisoned_subscriber_does_not_stop_others(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token("authenticated", branch_id="not-a-number")) as bad,
        PhoenixClient.connect(relay, token("authenticated", branch_id=1)) as good,
    ):
        await asyncio.to_thread(_policies, pg_dsn)
        await _settle(relay)
        await bad.join("dash", ALL_BOOKINGS)
        await good.join("dash", ALL_BOOKINGS)
        b1 = await asyncio.to_thread(_booking, pg_dsn, 1)
        b2 = await asyncio.to_thread(_booking, pg_dsn, 1)
        assert [s[1] for s in _summary(await good.collect_n(_is_change, 2))] == [b1, b2]
        errs = [m["payload"]["data"] for m in await bad.collect(0.5) if m["event"] == "postgres_changes"]
        assert len(errs) == 2
        for d in errs:
            assert d["record"] == {} and d["errors"] and "invalid_text_representation" in d["errors"][0]
        assert relay.server.policy_errors >= 2


async def test_policy_changes_apply_without_restart(pg_dsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token("authenticated", branch_id=3)) as c,
    ):
        await asyncio.to_thread(_reset, pg_dsn)
        await _settle(relay, set())
        await c.join("dash", ALL_BOOKINGS)
        await asyncio.to_thread(_booking, pg_dsn, 3)
        assert _summary(await c.collect(1.0)) == []  # default deny: no policy yet
        await asyncio.to_thread(_policies, pg_dsn)
        t0 = time.monotonic()
        await _settle(relay)
        assert time.monotonic() - t0 < 5
        b = await asyncio.to_thread(_booking, pg_dsn, 3)
        assert [s[1] for s in _summary(await c.collect_n(_is_change, 1))] == [b]
        await asyncio.to_thread(
            _exec, pg_dsn, "select realtime.drop_policy('public.bookings', 'branch members')"
        )
        await _settle(relay, {"admins"})
        await asyncio.to_thread(_booking, pg_dsn, 3)
        assert _summary(await c.collect(1.0)) == []


async def test_slow_path_policy_is_evaluated_in_postgres(pg_dsn: str) -> None:
    """An expression outside the in-process shapes is evaluated exactly by Postgres."""
    async with (
        running_relay(pg_dsn) as relay,
        PhoenixClient.connect(relay, token("authenticated", service_prefix="cu")) as c,
        PhoenixClient.connect(relay, token("authenticated", service_prefix="zz")) as d,
    ):
        await asyncio.to_thread(_reset, pg_dsn)
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "select realtime.create_policy('public.bookings', 'prefix', "
            "$$left(service, 2) = claims->>'service_prefix'$$)",
        )
        await _settle(relay, {"prefix"})
        assert relay.server.authorizer.policies("public", "bookings")[0].fast is None
        await c.join("dash", ALL_BOOKINGS)
        await d.join("dash", ALL_BOOKINGS)
        b = await asyncio.to_thread(_booking, pg_dsn, 1)  # service 'cut'
        assert [s[1] for s in _summary(await c.collect_n(_is_change, 1))] == [b]
        assert _summary(await d.collect(0.3)) == []
        assert relay.server.evaluator.queries >= 1
