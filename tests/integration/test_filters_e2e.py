"""Filters over a real WebSocket: AND filters deliver only the rows in range, and operands are
refused (or accepted) as Postgres casts them, with Postgres' own message."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _new_booking(dsn: str, branch: int, status: str = "pending") -> int:
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


def _binding(filter_text: str) -> dict[str, Any]:
    return {"event": "INSERT", "schema": "public", "table": "bookings", "filter": filter_text}


async def test_and_filter_delivers_only_rows_in_range(pg_dsn: str) -> None:
    """Regression: the second condition used to be swallowed into the first one's operand."""
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        reply = await c.join(
            "range", [_binding('branch_id=gte.2,branch_id=lte.3,status=not.in.(cancelled,"no show")')]
        )
        assert reply["payload"]["status"] == "ok", reply
        rows = [(1, "pending"), (2, "pending"), (3, "cancelled"), (3, "pending"), (4, "confirmed")]
        for branch, status in rows:
            await asyncio.to_thread(_new_booking, pg_dsn, branch, status)
        got = [m for m in await c.collect_n(_is_change, 2) if _is_change(m)]
        seen = [
            (m["payload"]["data"]["record"]["branch_id"], m["payload"]["data"]["record"]["status"])
            for m in got
        ]
        assert seen == [(2, "pending"), (3, "pending")]


@pytest.mark.parametrize(
    ("filter_text", "reason"),
    [
        ("branch_id=eq.1_000", 'invalid input syntax for type integer: "1_000"'),
        ("price=eq.1e999999", "value overflows numeric format"),
        ("branch_id=in.(1,2,x)", 'invalid input syntax for type integer: "x"'),
        ("starts_at=eq.the day before", "invalid input syntax for type timestamp with time zone"),
        ("status=match.(a+)+", "not supported by the relay"),
        ("status=like.a%,branch_id=eq.1,", "empty condition after a comma"),
    ],
)
async def test_operands_refused_as_postgres_refuses_them(pg_dsn: str, filter_text: str, reason: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        reply = await c.join("bad", [_binding(filter_text)])
        assert reply["payload"]["status"] == "error"
        text = reply["payload"]["response"]["reason"]
        assert text.startswith(f'InvalidBinding: invalid filter "{filter_text}"') and reason in text, text


async def test_postgres_special_inputs_are_accepted(pg_dsn: str) -> None:
    """``yesterday`` is a timestamp to Postgres: evaluated once, when the channel joins."""
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        reply = await c.join(
            "ok", [_binding("starts_at=gt.yesterday,price=lt.Infinity,id=is.null,id=not.is.null")]
        )
        assert reply["payload"]["status"] == "ok", reply
        reply = await c.join("ok2", [_binding("starts_at=gt.yesterday,price=gte.1e1")])
        assert reply["payload"]["status"] == "ok", reply
        await asyncio.to_thread(_new_booking, pg_dsn, 1)
        got = [m for m in await c.collect_n(_is_change, 1) if _is_change(m)]
        assert [m["topic"] for m in got] == ["realtime:ok2"]  # "id is null and id is not null" never holds


async def test_select_restricts_the_payload(pg_dsn: str) -> None:
    """``select`` cuts record/old_record/columns to the chosen columns plus the primary key, while
    the filter still tests a column that is not selected; an unknown column fails the join."""
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        bad = await c.join("bad", [{**_binding("branch_id=eq.2"), "select": ["status", "nope"]}])
        assert bad["payload"]["status"] == "error"
        assert bad["payload"]["response"]["reason"] == (
            'InvalidBinding: select: column "nope" does not exist in public.bookings'
        )
        entry = {"event": "*", "schema": "public", "table": "bookings", "filter": "branch_id=eq.2"}
        reply = await c.join("sel", [{**entry, "select": ["status"]}])
        assert reply["payload"]["status"] == "ok", reply
        assert reply["payload"]["response"]["postgres_changes"][0]["select"] == ["status"]
        await asyncio.to_thread(_new_booking, pg_dsn, 1)
        bid = await asyncio.to_thread(_new_booking, pg_dsn, 2)
        await asyncio.to_thread(
            _exec, pg_dsn, "update bookings set status = 'confirmed' where id = %s", (bid,)
        )
        got = [m["payload"]["data"] for m in await c.collect(2.0) if m["event"] == "postgres_changes"]
        assert [d["type"] for d in got] == ["INSERT", "UPDATE"]
        assert got[0]["record"] == {"id": bid, "status": "pending"}
        assert [col["name"] for col in got[0]["columns"]] == ["id", "status"]
        assert got[1]["record"] == {"id": bid, "status": "confirmed"}
        assert got[1]["old_record"] == {"id": bid, "status": "pending"}
