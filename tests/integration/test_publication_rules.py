"""What a publication says beyond its tables, applied although wal2json ignores it.

A DBA's column list (``FOR TABLE people (id, name)``) must keep the other columns inside the
database on every path out of the relay (live, replay, snapshot, filters, select); a row filter
(``WHERE (active)``) cannot be applied, so that table is not streamed and joins naming it are
told why; ``WITH (publish = 'insert')`` means no UPDATE or DELETE leaves.  Real Postgres 15 +
wal2json: wal2json itself would send all of it (checked at the end, so the test proves the relay
does the work).
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
import pytest

from relay.config import Config
from relay.postgres.preflight import run_preflight
from tests.support.relay import PhoenixClient, running_relay

pytestmark = pytest.mark.pg

PUB = Config().publication


def sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _people(dsn: str) -> None:
    sql(
        dsn,
        "create table people (id int primary key, name text, ssn text, active bool)",
        # a column list must cover the replica identity when updates are published: the key
        f"alter publication {PUB} add table people (id, name, active)",
        "create table flagged (id int primary key, secret text, active bool)",
        "alter table flagged replica identity full",
        f"alter publication {PUB} add table flagged where (active)",
    )


async def test_column_lists_and_row_filters_are_honoured_on_every_path(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "relay")
    async with running_relay(pg_dsn) as relay:
        await asyncio.to_thread(_people, pg_dsn)
        await asyncio.to_thread(sql, pg_dsn, "insert into people values (1, 'Ann', '111-11', true)")
        people = {"event": "*", "schema": "public", "table": "people"}
        async with PhoenixClient.connect(relay) as c:  # service_role: sees every row and column
            # the stream restarts for the new tables within the poll interval
            deadline = time.monotonic() + 15
            while True:
                reply = await c.join(f"p{time.monotonic_ns()}", [{**people, "snapshot": True}])
                if reply["payload"]["status"] == "ok" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert reply["payload"]["status"] == "ok", reply
            snap = await c.recv_until(
                lambda m: m["event"] == "postgres_changes" and m["payload"]["data"]["type"] == "SNAPSHOT"
            )
            assert snap["payload"]["data"]["record"] == {"id": 1, "name": "Ann", "active": True}
            assert [col["name"] for col in snap["payload"]["data"]["columns"]] == ["id", "name", "active"]
            await c.recv_until(lambda m: m["payload"].get("code") == "snapshot_complete")

            await asyncio.to_thread(
                sql,
                pg_dsn,
                "insert into people values (2, 'Bo', '222-22', false)",
                "update people set ssn = '333-33', name = 'Bob' where id = 2",
                "delete from people where id = 1",
            )
            got = await c.changes(3)
            assert [d["type"] for d in got] == ["INSERT", "UPDATE", "DELETE"]
            assert got[0]["record"] == {"id": 2, "name": "Bo", "active": False}
            assert got[1]["record"] == {"id": 2, "name": "Bob", "active": False}
            assert got[2]["old_record"] == {"id": 1}
            for d in got:
                assert "ssn" not in str(d) and "111-11" not in str(d) and "222-22" not in str(d)
            first = got[0]["position"]

            # a filter or select naming the unpublished column is refused like an unknown column
            bad = await c.join("f", [{**people, "filter": "ssn=eq.333-33"}])
            assert bad["payload"]["status"] == "error"
            assert 'column "ssn" does not exist' in bad["payload"]["response"]["reason"]
            bad = await c.join("s", [{**people, "select": ["id", "ssn"]}])
            assert 'column "ssn" does not exist' in bad["payload"]["response"]["reason"]

            # the row-filtered table: refused with its reason, never streamed
            flagged = {"event": "*", "schema": "public", "table": "flagged"}
            refused = await c.join("fl", [flagged])
            assert refused["payload"]["status"] == "error", refused
            assert refused["payload"]["response"]["code"] == "publication_row_filter"
            wide = await c.join("wide", [{"event": "*", "schema": "public"}])
            assert wide["payload"]["status"] == "ok"
            await asyncio.to_thread(
                sql,
                pg_dsn,
                "insert into flagged values (1, 'hidden', false), (2, 'shown?', true)",
                "insert into people values (3, 'Cy', '444-44', true)",
            )
            wide_got = await c.changes(2)  # the people insert, on both channels
            assert {d["table"] for d in wide_got} == {"people"}
            assert not [m for m in await c.collect(0.5) if m["event"] == "postgres_changes"]

        # replay: what the window holds is stripped too (it keeps the received bytes)
        async with PhoenixClient.connect(relay) as r:
            reply = await r.join("again", [people], resume_from=first)
            assert reply["payload"]["status"] == "ok", reply
            replayed = await r.changes(3)
            assert [d["type"] for d in replayed] == ["UPDATE", "DELETE", "INSERT"]
            assert all("ssn" not in d.get("record", {}) for d in replayed)
            assert "444-44" not in str(replayed)

    warned = [r.getMessage() for r in caplog.records if "flagged" in r.getMessage()]
    assert warned and "row filter" in warned[0] and "not streamed" in warned[0]
    report = await asyncio.to_thread(run_preflight, pg_dsn, publication=PUB, slot="realtime_relay")
    rules = [c for c in report.checks if c.name == "publication rules"]
    assert {c.status for c in rules} == {"warn", "ok"}
    assert any("public.flagged WHERE active" in c.message for c in rules)
    # and wal2json alone would have sent the column and the filtered row
    raw = await asyncio.to_thread(_wal2json_alone, pg_dsn)
    assert "555-55" in raw and "never" in raw


def _wal2json_alone(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot('pubrules_probe', 'wal2json')")
        try:
            conn.execute("insert into people values (5, 'Eve', '555-55', true)")
            conn.execute("insert into flagged values (5, 'never', false)")
            rows = conn.execute(
                "select data from pg_logical_slot_get_changes('pubrules_probe', null, null, "
                "'format-version', '2', 'add-tables', 'public.people,public.flagged')"
            ).fetchall()
        finally:
            conn.execute("select pg_drop_replication_slot('pubrules_probe')")
    return "\n".join(str(r[0]) for r in rows)


async def test_a_publication_of_inserts_only_sends_no_updates_or_deletes(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        alerts = {"event": "*", "schema": "public", "table": "alerts"}
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join("a", [alerts])
            assert reply["payload"]["status"] == "ok"
            await asyncio.to_thread(sql, pg_dsn, f"alter publication {PUB} set (publish = 'insert')")
            await asyncio.sleep(1.5)  # the poll sees the change and restarts the stream
            await asyncio.to_thread(
                sql,
                pg_dsn,
                "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'x', 'one')",
                "update alerts set title = 'changed'",
                "delete from alerts",
                "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'x', 'two')",
            )
            got = await c.changes(2)
            assert [(d["type"], d["record"]["title"]) for d in got] == [("INSERT", "one"), ("INSERT", "two")]
            assert not [m for m in await c.collect(0.7) if m["event"] == "postgres_changes"]
            # the relay's own messages still flow (wal2json's actions do not filter them): a
            # table enabled now is streamed from its enabling commit
            await asyncio.to_thread(
                sql,
                pg_dsn,
                "create table later (id int primary key)",
                "select realtime.enable_table('public.later')",
                "insert into later values (1)",
            )
            deadline = time.monotonic() + 15
            while True:
                reply = await c.join(
                    f"l{time.monotonic_ns()}", [{"event": "*", "schema": "public", "table": "later"}]
                )
                if reply["payload"]["status"] == "ok" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            assert reply["payload"]["status"] == "ok"
            await asyncio.to_thread(sql, pg_dsn, "insert into later values (2)")
            m = await c.recv_until(
                lambda m: m["event"] == "postgres_changes" and m["payload"]["data"]["record"] == {"id": 2}
            )
            assert m["payload"]["data"]["table"] == "later"
