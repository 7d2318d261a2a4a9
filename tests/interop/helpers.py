"""Shared helpers for the interop tests: write demo rows, bounded waits."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

BOOKING_COLUMNS = [
    "id",
    "branch_id",
    "client_id",
    "staff_id",
    "owner_id",
    "assignee_id",
    "service",
    "status",
    "starts_at",
    "ends_at",
    "price",
    "tags",
    "details",
    "notes",
    "created_at",
    "updated_at",
]


def exec_sql(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def new_booking(dsn: str, branch: int = 1, status: str = "pending") -> int:
    rows = exec_sql(
        dsn,
        "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
        "select %s, (select id from clients order by id limit 1), 'haircut', %s, now(), "
        "now() + interval '1 hour', 42.50 returning id",
        (branch, status),
    )
    return int(rows[0][0])


async def insert_booking(dsn: str, branch: int = 1, status: str = "pending") -> int:
    return await asyncio.to_thread(new_booking, dsn, branch, status)


async def set_status(dsn: str, booking_id: int, status: str) -> None:
    sql = "update bookings set status = %s where id = %s"
    await asyncio.to_thread(exec_sql, dsn, sql, (status, booking_id))


async def delete_booking(dsn: str, booking_id: int) -> None:
    await asyncio.to_thread(exec_sql, dsn, "delete from bookings where id = %s", (booking_id,))
