"""A Postgres crash and restart under a running relay: it reconnects and loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from relay.postgres.cluster import LocalCluster
from tests.support.clusters import own_cluster
from tests.support.relay import PhoenixClient, running_relay

pytestmark = pytest.mark.pg


def _insert(dsn: str, n: int, ids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n):
            row = conn.execute(
                "insert into alerts (branch_id, severity, kind, title) "
                "values (1, 'warning', 'restart', 'r') returning id"
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))


@pytest.fixture()
def crashable() -> Iterator[LocalCluster]:
    """A cluster of the test's own, which it may SIGKILL and restart."""
    with own_cluster() as cluster:
        yield cluster


async def test_postgres_crash_and_restart(crashable: LocalCluster) -> None:
    cluster = crashable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="restart_test") as relay, PhoenixClient.connect(relay) as c:
        await c.join("a", [{"event": "INSERT", "schema": "public", "table": "alerts"}])
        ids: list[int] = []
        await asyncio.to_thread(_insert, dsn, 3, ids)
        await asyncio.to_thread(cluster.kill)
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(_insert, dsn, 3, ids)  # written before the relay reconnects
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < 6 and time.monotonic() < deadline:
            try:
                m = await c.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if m["event"] == "postgres_changes":
                got.append(m["payload"]["data"]["record"]["id"])
        assert got == ids
        assert relay.server.status["streaming"] is True


async def test_join_works_right_after_postgres_restart(crashable: LocalCluster) -> None:
    """The catalog pool's dead connections are replaced transparently after a restart."""
    cluster = crashable
    async with running_relay(cluster.dsn(), slot="restart_join") as relay:
        await relay.server.catalog.table("public", "alerts")  # warm the pool
        await asyncio.to_thread(cluster.kill)
        await asyncio.to_thread(cluster.start)
        relay.server.catalog._tables.clear()
        async with PhoenixClient.connect(relay) as c:
            r = await c.join(
                "a", [{"event": "*", "schema": "public", "table": "alerts", "filter": "branch_id=eq.1"}]
            )
            assert r["payload"]["status"] == "ok", r


def _exec(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


async def test_fast_shutdown_is_not_blocked_and_resume_loses_nothing(crashable: LocalCluster) -> None:
    """`pg_ctl stop -m fast` under a streaming relay that holds its confirmation back (replay
    window) finishes promptly; the slot is not moved past what a resuming client needs; the relay
    reconnects and the client gets the rows from before and after the restart exactly once."""
    cluster = crashable
    dsn = cluster.dsn()
    alerts = [{"event": "INSERT", "schema": "public", "table": "alerts"}]
    async with running_relay(dsn, slot="fast_stop", resume_window=300.0) as relay:
        async with PhoenixClient.connect(relay) as c:
            assert (await c.join("a", alerts))["payload"]["status"] == "ok"
            sysmsg = await c.recv_until(lambda m: m["event"] == "system")
            start = sysmsg["payload"]["position"]
        before: list[int] = []
        await asyncio.to_thread(_insert, dsn, 3, before)
        first_lsn = (await asyncio.to_thread(_exec, dsn, "select pg_current_wal_lsn()::text"))[0][0]
        # let the relay decode them (and hold its confirmation below them: the replay window)
        deadline = time.monotonic() + 10
        while relay.server.status.get("transactions", 0) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        elapsed = await asyncio.to_thread(cluster.shutdown, "fast", 20)
        assert elapsed < 5, f"fast shutdown took {elapsed:.1f}s"
        await asyncio.to_thread(cluster.start)
        confirmed = (
            await asyncio.to_thread(
                _exec,
                dsn,
                "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = 'fast_stop'",
            )
        )[0][0]
        # the slot still keeps the rows a resuming client (or a restarted relay) needs
        assert _lsn(str(confirmed)) < _lsn(str(first_lsn)), (confirmed, first_lsn)
        after: list[int] = []
        await asyncio.to_thread(_insert, dsn, 3, after)
        async with PhoenixClient.connect(relay) as c:
            r = await c.join("a", alerts, resume_from=start)
            assert r["payload"]["status"] == "ok", r
            got: list[int] = []
            deadline = time.monotonic() + 30
            while len(got) < 6 and time.monotonic() < deadline:
                try:
                    m = await c.recv(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if m["event"] == "postgres_changes":
                    got.append(m["payload"]["data"]["record"]["id"])
            got += [
                m["payload"]["data"]["record"]["id"]
                for m in await c.collect(1.0)
                if m["event"] == "postgres_changes"
            ]
            assert got == before + after
        assert relay.server.status["streaming"] is True


def _lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)
