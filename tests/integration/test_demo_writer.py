"""The demo writer produces activity on every kind of demo table and stops promptly."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from relay.demo_writer import run_demo_writer
from relay.postgres.migrate import apply_demo_schema, apply_migrations

pytestmark = pytest.mark.pg


def _counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {
            t: int(conn.execute(f"select count(*) from public.{t}").fetchone()[0])  # type: ignore[index]
            for t in ("clients", "bookings", "payments", "attendance", "alerts", "tasks")
        }


async def test_demo_writer_produces_rows_and_stops(pg_dsn: str) -> None:
    apply_migrations(pg_dsn)
    apply_demo_schema(pg_dsn)
    before = _counts(pg_dsn)
    stop = asyncio.Event()
    task = asyncio.create_task(run_demo_writer(pg_dsn, rate=40.0, stop=stop, seed=7))
    await asyncio.sleep(1.0)
    stop.set()
    started = time.monotonic()
    count = await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2.0  # stops promptly, mid-sleep
    after = _counts(pg_dsn)
    assert 10 <= count <= 80  # about rate * 1 s, with jitter
    assert after["bookings"] > before["bookings"]
    assert sum(after.values()) > sum(before.values())


async def test_demo_writer_rejects_bad_rate(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        await run_demo_writer(pg_dsn, rate=0, stop=asyncio.Event())
