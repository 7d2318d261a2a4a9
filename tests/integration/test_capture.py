"""Capture semantics against a real Postgres: live table changes, reconnects, no gap after join."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _changes(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["payload"]["data"] for m in frames if m["event"] == "postgres_changes"]


async def _wait_for(pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_table_enabled_while_running_streams_within_5s(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await asyncio.to_thread(_exec, pg_dsn, "create table public.gadgets (id int primary key, name text)")
        # Enable, join and write in the same breath: the first row after enable_table must arrive
        # too.  (A table not enabled yet cannot be joined: see test_hostile_clients.py.)
        t0 = time.monotonic()
        await asyncio.to_thread(_exec, pg_dsn, "select realtime.enable_table('public.gadgets')")
        r = await c.join("g", [{"event": "*", "schema": "public", "table": "gadgets"}])
        assert r["payload"]["status"] == "ok"
        await asyncio.to_thread(_exec, pg_dsn, "insert into public.gadgets values (1, 'first')")
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=5)
        assert m["payload"]["data"]["record"] == {"id": 1, "name": "first"}
        assert time.monotonic() - t0 < 5
        # Disable: changes stop within 5 s.
        await asyncio.to_thread(_exec, pg_dsn, "select realtime.disable_table('public.gadgets')")
        await _wait_for(lambda: "public.gadgets" not in relay.server.status.get("tables", []), 5)
        await asyncio.to_thread(_exec, pg_dsn, "insert into public.gadgets values (2, 'after disable')")
        assert _changes(await c.collect(1.0)) == []


async def test_raw_alter_publication_is_picked_up(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await asyncio.to_thread(_exec, pg_dsn, "create table public.widgets (id int primary key)")
        await asyncio.to_thread(_exec, pg_dsn, "alter table public.widgets replica identity full")
        # Write in the very next transaction: the event trigger's message makes this lossless.
        await asyncio.to_thread(_exec, pg_dsn, "alter publication supabase_realtime add table public.widgets")
        r = await c.join("w", [{"event": "INSERT", "schema": "public", "table": "widgets"}])
        assert r["payload"]["status"] == "ok"
        await asyncio.to_thread(_exec, pg_dsn, "insert into public.widgets values (7)")
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=5)
        assert m["payload"]["data"]["record"] == {"id": 7}


async def test_replication_connection_drop_loses_nothing(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, slot="drop_test") as relay, PhoenixClient.connect(relay) as c:
        await c.join("a", [{"event": "INSERT", "schema": "public", "table": "alerts"}])
        ids: list[int] = []

        def write(n: int) -> None:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                for _ in range(n):
                    row = conn.execute(
                        "insert into alerts (branch_id, severity, kind, title) "
                        "values (1, 'info', 'system', 't') returning id"
                    ).fetchone()
                    assert row is not None
                    ids.append(int(row[0]))

        await asyncio.to_thread(write, 5)
        # Kill the walsender: the relay must reconnect and resume from the slot.
        await asyncio.to_thread(
            _exec,
            pg_dsn,
            "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = 'drop_test'",
        )
        await asyncio.to_thread(write, 5)  # written while the relay is (re)connecting
        got: list[int] = []
        deadline = time.monotonic() + 20
        while len(got) < 10 and time.monotonic() < deadline:
            try:
                m = await c.recv(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            if m["event"] == "postgres_changes":
                got.append(m["payload"]["data"]["record"]["id"])
        assert got == ids  # every row, in commit order, exactly once
        assert relay.pipeline.stats.restarts >= 0
        assert _changes(await c.collect(0.5)) == []


async def test_change_committed_after_subscribed_is_never_missed(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        for i in range(15):
            async with PhoenixClient.connect(relay) as c:
                r = await c.join(f"n{i}", [{"event": "INSERT", "schema": "public", "table": "tasks"}])
                assert r["payload"]["status"] == "ok"
                rows = await asyncio.to_thread(
                    _exec,
                    pg_dsn,
                    "insert into tasks (branch_id, title, owner_id) values (1, %s, gen_random_uuid()) "
                    "returning id",
                    (f"t{i}",),
                )
                m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=5)
                assert m["payload"]["data"]["record"]["id"] == rows[0][0]


async def test_token_expiry_closes_channel(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        r = await c.join(
            "exp", [{"event": "*", "schema": "public", "table": "tasks"}], access_token=token(ttl=2)
        )
        assert r["payload"]["status"] == "ok"
        t0 = time.monotonic()
        sysmsg = await c.recv_until(
            lambda m: m["event"] == "system" and m["payload"]["status"] == "error", timeout=5
        )
        assert "Token has expired" in sysmsg["payload"]["message"]
        assert sysmsg["payload"]["extension"] == "system"
        close = await c.recv_until(lambda m: m["event"] == "phx_close", timeout=2)
        assert close["topic"] == "realtime:exp"
        assert time.monotonic() - t0 < 3.5
        # a refreshed token keeps a channel alive; an invalid one closes it
        r = await c.join("exp2", [], access_token=token(ttl=60))
        await c.send("realtime:exp2", "access_token", {"access_token": "not-a-jwt"})
        sysmsg = await c.recv_until(lambda m: m["event"] == "system", timeout=3)
        assert sysmsg["payload"]["status"] == "error"
        await c.recv_until(lambda m: m["event"] == "phx_close", timeout=2)


async def test_leave_and_rejoin(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay, vsn="2.0.0") as c:
        r = await c.join("l", [{"event": "*", "schema": "public", "table": "tasks"}])
        join_ref = r["join_ref"]
        ref = await c.send("realtime:l", "phx_leave", {}, join_ref=join_ref)
        rep = await c.recv_until(lambda m: m["ref"] == ref)
        assert rep["payload"] == {"status": "ok", "response": {}}
        close = await c.recv_until(lambda m: m["event"] == "phx_close")
        assert close["join_ref"] == join_ref
        assert len(relay.server.index) == 0
        # second join on the same topic replaces the first
        await c.join("l", [{"event": "*", "schema": "public", "table": "tasks"}])
        await c.join("l", [{"event": "*", "schema": "public", "table": "tasks"}])
        assert len(relay.server.index) == 1


async def test_raw_alter_publication_drop_stops_stream(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await c.join("t", [{"event": "INSERT", "schema": "public", "table": "tasks"}])
        await asyncio.to_thread(_exec, pg_dsn, "alter publication supabase_realtime drop table public.tasks")
        await _wait_for(lambda: "public.tasks" not in relay.server.status.get("tables", []), 5)
        await asyncio.to_thread(
            _exec, pg_dsn, "insert into tasks (branch_id, title, owner_id) values (1, 'x', gen_random_uuid())"
        )
        assert _changes(await c.collect(1.0)) == []


# Every character wal2json's add-tables parser or the replication grammar treats specially, plus
# quotes, uppercase and non-ASCII: none of them may stop the stream (issue 11, item 3).
ODD_SCHEMA = "Odd Sch.ema,\\ 'q' \"dq\" Ünï"
ODD_TABLE = "Order Items.v2,\\x 'it''s' \"T\" Ñandú\t*"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def test_odd_table_names_stream_and_do_not_stop_other_tables(pg_dsn: str) -> None:
    odd = f"{_ident(ODD_SCHEMA)}.{_ident(ODD_TABLE)}"
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await asyncio.to_thread(_exec, pg_dsn, "create table public.plain (id int primary key)")
        await asyncio.to_thread(_exec, pg_dsn, f"create schema {_ident(ODD_SCHEMA)}")
        await asyncio.to_thread(_exec, pg_dsn, f"create table {odd} (id int primary key, note text)")
        await asyncio.to_thread(_exec, pg_dsn, "select realtime.enable_table('public.plain')")
        await asyncio.to_thread(_exec, pg_dsn, "select realtime.enable_table(%s)", (odd,))
        await _wait_for(lambda: f"{ODD_SCHEMA}.{ODD_TABLE}" in relay.server.status.get("tables", []), 10)
        # only enabled tables can be joined (issue 12 item 2)
        r = await c.join(
            "odd",
            [
                {"event": "INSERT", "schema": "public", "table": "plain"},
                {"event": "INSERT", "schema": ODD_SCHEMA, "table": ODD_TABLE},
            ],
        )
        assert r["payload"]["status"] == "ok", r
        await asyncio.to_thread(_exec, pg_dsn, f"insert into {odd} values (1, 'odd')")
        await asyncio.to_thread(_exec, pg_dsn, "insert into public.plain values (2)")
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += _changes(await c.collect(0.5))
        assert [(d["schema"], d["table"], d["record"]["id"]) for d in got] == [
            (ODD_SCHEMA, ODD_TABLE, 1),
            ("public", "plain", 2),
        ]
        assert relay.server.status["streaming"] is True
        assert relay.server.status["last_error"] is None
