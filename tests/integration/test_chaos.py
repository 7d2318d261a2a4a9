"""Chaos: the relay is SIGKILLed and restarted under resuming subscribers, and loses nothing.

Why this test exists: resume is only worth having if it holds when things break at the worst
moment (mid-transaction, mid-replay, mid-start-up), and no hand-written sequence of steps finds
those moments.  A writer commits numbered rows while four subscribers with different rights stay
subscribed through relay crashes and dropped sockets; at the end each must hold exactly the rows
its row policies grant it, in commit order, once each, without ever being told to resync.

The seed is printed (and in the failure message); ``RELAY_CHAOS_SEED=<seed>`` repeats the run's
choices.  The long version is ``python bench/chaos.py`` or ``RELAY_SLOW=1`` (the slow test below).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psycopg
import pytest

from relay.core.changes import Lsn, parse_position
from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import token
from tests.support.resume_client import ChaosResult, RelayProcess, ResumeClient, run_chaos

pytestmark = pytest.mark.pg


async def _run(pg_dsn: str, kills: int, seconds: float, window: float | None = None) -> ChaosResult:
    result = await run_chaos(pg_dsn, kills=kills, seconds=seconds, resume_window=window, log=print)
    print(result.summary())
    return result


def _judge(result: ChaosResult, min_kills: int) -> None:
    assert result.kills >= min_kills, result.summary()
    assert result.rows > 0 and all(s.expected > 0 for s in result.subscribers), result.summary()
    assert result.ok, result.failure_report()


@pytest.mark.timeout(150)
async def test_relay_sigkilled_under_resuming_subscribers(pg_dsn: str) -> None:
    """At least five SIGKILLs in twenty seconds of writing; every subscriber is whole."""
    result = await _run(pg_dsn, kills=5, seconds=20.0)
    _judge(result, 5)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_relay_sigkilled_long_run(pg_dsn: str) -> None:
    """The same for longer, with a 30 s window (evicted whenever the relay stays up longer).

    RELAY_SLOW=1 runs it; RELAY_CHAOS_KILLS / RELAY_CHAOS_SECONDS / RELAY_CHAOS_WINDOW tune it.
    """
    kills = int(os.environ.get("RELAY_CHAOS_KILLS", "30"))
    seconds = float(os.environ.get("RELAY_CHAOS_SECONDS", "180"))
    window = float(os.environ.get("RELAY_CHAOS_WINDOW", "30"))
    result = await _run(pg_dsn, kills=kills, seconds=seconds, window=window)
    _judge(result, kills)


def _write_alerts(dsn: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(n):
            conn.execute(
                "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'quiet', %s)",
                (str(i),),
            )


def _confirmed_flush(dsn: str) -> Lsn:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'chaos_relay'"
        ).fetchone()
    return Lsn.parse(row[0]) if row is not None and row[0] else Lsn(0)


@pytest.mark.timeout(90)
async def test_resume_from_subscribed_position_after_restart(pg_dsn: str, tmp_path: Path) -> None:
    """A subscriber that has processed no change yet resumes from its Subscribed position.

    Why: docs/protocol.md tells such a client to keep that position as its resume point, and a
    crash a second later, with a window of 300 s, is exactly the case resume is for.  Here the
    subscriber's table is quiet while another table is written, so the relay confirms its slot
    past the subscriber's position before it is killed.
    """
    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    relay = RelayProcess(pg_dsn, free_port(), tmp_path / "relay.log")
    client = ResumeClient(
        "quiet", relay.port, token(), [{"event": "*", "schema": "public", "table": "tasks"}]
    )
    try:
        relay.start()
        await relay.wait_streaming()
        client.start()
        await client.wait_positioned(10.0)
        assert client.position is not None
        start = parse_position(client.position)
        await asyncio.to_thread(_write_alerts, pg_dsn, 3)
        # Crash once the relay has confirmed past the subscriber's position (when it does so at
        # all: a relay that holds its slot at the window's start never will, and that is fine).
        deadline = time.monotonic() + 5.0
        while (
            time.monotonic() < deadline
            and await asyncio.to_thread(_confirmed_flush, pg_dsn) <= (start >> 32) + 1
        ):
            await asyncio.sleep(0.1)
        relay.kill()
        relay.start()
        await relay.wait_streaming()
        deadline = time.monotonic() + 15.0
        while not (client.resumes or client.resyncs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await client.stop()
        relay.terminate()
    assert client.resyncs == [], "\n".join(client.events)
    assert client.resumes >= 1 and client.changes == [], "\n".join(client.events)
