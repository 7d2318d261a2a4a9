"""Cluster mode (issue 17): capture leader, the change log in Redis Streams, and its readers.

Real Postgres, real ``redis-server`` (tests/support/redis_server.py), relays in-process on
their own ports in one event loop (each is a full node: its own server, Redis connections,
pipeline when it leads).  The process-level scenarios (SIGKILL of the leader under a writer)
are in tests/integration/test_cluster_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from redis import Redis

from relay.config import Config
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import RunningRelay, start_relay
from tests.support.redis_server import RedisServer
from tests.support.relay import SECRET, PhoenixClient, token

pytestmark = pytest.mark.pg

ALERTS = [{"event": "*", "schema": "public", "table": "alerts"}]


@contextlib.asynccontextmanager
async def cluster_node(
    dsn: str, redis_url: str, node_id: str, **overrides: Any
) -> AsyncIterator[RunningRelay]:
    settings: dict[str, Any] = {"port": 0, "publication_poll_interval": 0.2, **overrides}
    cfg = Config(database_url=dsn, jwt_secret=SECRET, redis_url=redis_url, node_id=node_id, **settings)
    relay = await start_relay(cfg)
    try:
        yield relay
    finally:
        await relay.stop()


async def _migrate(dsn: str) -> None:
    await asyncio.to_thread(apply_migrations, dsn)
    await asyncio.to_thread(apply_demo_schema, dsn)


def _alerts(dsn: str, n: int, branch: int | None = 1) -> list[int]:
    """``n`` alerts, one transaction each; their ids in commit order."""
    ids: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(n):
            row = conn.execute(
                "insert into alerts (branch_id, severity, kind, title) "
                "values (%s, 'info', 'test', %s) returning id",
                (branch, f"alert {i}"),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


async def _join(c: PhoenixClient, **config: Any) -> str:
    reply = await c.join("alerts", ALERTS, **config)
    assert reply["payload"]["status"] == "ok", reply
    sysmsg = await c.recv_until(lambda m: m["event"] == "system")
    return str(sysmsg["payload"].get("position"))


def _ids(changes: list[dict[str, Any]]) -> list[int]:
    return [int(d["record"]["id"]) for d in changes]


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _role(relay: RunningRelay) -> str:
    assert relay.cluster is not None
    return relay.cluster.leader.role


async def test_two_nodes_deliver_every_change_once_to_authorized_subscribers(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    await _migrate(pg_dsn)
    async with (
        cluster_node(pg_dsn, redis_server.url, "n1") as a,
        cluster_node(pg_dsn, redis_server.url, "n2") as b,
    ):
        assert sorted([_role(a), _role(b)]) == ["follower", "leader"]
        branch1 = token("authenticated", branch_id=1)
        branch2 = token("authenticated", branch_id=2)
        async with (
            PhoenixClient.connect(a, branch1) as a1,
            PhoenixClient.connect(b, branch1) as b1,
            PhoenixClient.connect(b, branch2) as b2,
        ):
            for c in (a1, b1, b2):
                await _join(c)
            mine = await asyncio.to_thread(_alerts, pg_dsn, 5, 1)
            theirs = await asyncio.to_thread(_alerts, pg_dsn, 3, 2)
            assert _ids(await a1.changes(5)) == mine
            assert _ids(await b1.changes(5)) == mine
            assert _ids(await b2.changes(3)) == theirs
            # exactly once: nothing more arrives (the three listen over the same 0.5 s)
            for frames in await asyncio.gather(*(c.collect(0.5) for c in (a1, b1, b2))):
                assert [m for m in frames if m["event"] == "postgres_changes"] == []
        h = await _health(b)
        assert h["cluster"]["node_id"] == "n2" and h["cluster"]["log_length"] > 0
        assert h["cluster"]["role"] in ("leader", "follower") and h["cluster"]["epoch"] >= 0
        # the same state for Prometheus: exactly one leader, both links up, both nodes seen
        ma, mb = await _metrics(a), await _metrics(b)
        assert ma["relay_cluster_leader"] + mb["relay_cluster_leader"] == 1.0
        assert max(ma["relay_cluster_epoch"], mb["relay_cluster_epoch"]) == 1.0  # the first term
        for m in (ma, mb):
            assert m["relay_cluster_log_up"] == 1.0 and m["relay_cluster_rooms_up"] == 1.0
            assert m["relay_cluster_nodes"] == 2.0
            assert m["relay_cluster_log_entries_read_total"] >= 8 and m["relay_cluster_log_gaps_total"] == 0
        leader = ma if ma["relay_cluster_leader"] else mb
        assert (
            leader["relay_cluster_log_appended_total"] >= 8
            and leader["relay_cluster_leader_terms_total"] == 1
        )
        r = Redis.from_url(redis_server.url)
        try:
            assert r.exists("relay:{realtime_relay}:log") or r.exists(f"relay:{{{a.server.config.slot}}}:log")
        finally:
            r.close()


async def _metrics(relay: RunningRelay) -> dict[str, float]:
    """The unlabelled samples of ``GET /metrics``, parsed with prometheus_client's own parser."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{relay.port}/metrics") as resp:
        text = await resp.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def _health(relay: RunningRelay) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{relay.port}/health") as resp:
        out: dict[str, Any] = await resp.json()
        return out


async def test_a_client_resumes_on_another_node_with_its_last_position(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    await _migrate(pg_dsn)
    async with cluster_node(pg_dsn, redis_server.url, "n1") as a:
        async with PhoenixClient.connect(a) as c:
            await _join(c)
            first = await asyncio.to_thread(_alerts, pg_dsn, 2)
            got = await c.changes(2)
            assert _ids(got) == first
            last = got[-1]["position"]
        missed = await asyncio.to_thread(_alerts, pg_dsn, 4)
        await asyncio.sleep(0.5)  # in the log
        # a node started after the changes fills its window from the log
        async with cluster_node(pg_dsn, redis_server.url, "n2") as b:
            assert _role(b) == "follower"
            async with PhoenixClient.connect(b) as c:
                await _join(c, resume_from=last)
                got = await c.changes(4)
                assert _ids(got) == missed
                live = await asyncio.to_thread(_alerts, pg_dsn, 1)
                assert _ids(await c.changes(1)) == live


async def _ready(relay: RunningRelay) -> tuple[int, dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{relay.port}/ready") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_redis_restart_with_aof_loses_nothing(pg_dsn: str, redis_server: RedisServer) -> None:
    """A Redis that keeps its data (AOF, orderly restart) costs a pause, never a change."""
    await _migrate(pg_dsn)
    async with (
        cluster_node(pg_dsn, redis_server.url, "n1") as a,
        cluster_node(pg_dsn, redis_server.url, "n2") as b,
        PhoenixClient.connect(a) as ca,
        PhoenixClient.connect(b) as cb,
    ):
        await _join(ca)
        await _join(cb)
        before = await asyncio.to_thread(_alerts, pg_dsn, 3)
        assert _ids(await ca.changes(3)) == before
        await asyncio.to_thread(redis_server.stop)
        during = await asyncio.to_thread(_alerts, pg_dsn, 3)  # captured, not yet appendable
        await _until(lambda: a.server.status.get("cluster", {}).get("redis") != "ok", 10, "redis seen down")
        status, body = await _ready(a)
        assert status == 503 and "redis_unavailable" in [r["code"] for r in body["reasons"]]
        rooms = a.server.topics.cluster
        assert rooms is not None
        await _until(lambda: not rooms.up, 10, "rooms link seen down")
        down = await _metrics(a)  # what an alert on the scrape sees
        assert down["relay_cluster_log_up"] == 0.0 and down["relay_cluster_rooms_up"] == 0.0
        await asyncio.to_thread(redis_server.start)
        after = await asyncio.to_thread(_alerts, pg_dsn, 2)
        for c in (ca, cb):
            got = await c.changes(len(during) + len(after) + (3 if c is cb else 0), timeout=30)
            ids = _ids(got)
            assert ids == (before if c is cb else []) + during + after
            frames = await c.collect(0.5)
            assert [m for m in frames if m["event"] == "postgres_changes"] == []
            assert not [m for m in frames if m["payload"].get("code") == "resync_needed"]
        await _until(lambda: _ready_sync(a), 10, "ready again")
        await _until(lambda: rooms.up, 10, "rooms link up again")
        up = await _metrics(a)
        assert up["relay_cluster_log_up"] == 1.0 and up["relay_cluster_rooms_up"] == 1.0
        assert up["relay_cluster_rooms_outages_total"] >= 1


def _ready_sync(relay: RunningRelay) -> bool:
    return bool(relay.server.status.get("streaming"))


async def test_redis_restart_without_persistence_tells_every_subscriber_to_resync(pg_dsn: str) -> None:
    """A Redis that comes back empty lost the log: every channel hears resync_needed, then
    continues with the rows captured again from the slot; never a silent gap."""
    from tests.support.redis_server import provide_redis

    await _migrate(pg_dsn)
    with provide_redis(appendonly=False) as redis_server:
        async with (
            cluster_node(pg_dsn, redis_server.url, "n1") as a,
            cluster_node(pg_dsn, redis_server.url, "n2") as b,
            PhoenixClient.connect(a) as ca,
            PhoenixClient.connect(b) as cb,
        ):
            await _join(ca)
            await _join(cb)
            before = await asyncio.to_thread(_alerts, pg_dsn, 3)
            for c in (ca, cb):
                assert _ids(await c.changes(3)) == before
            gen = a.cluster.follower.gen if a.cluster is not None else None
            await asyncio.to_thread(redis_server.stop)
            await asyncio.to_thread(redis_server.start)  # empty
            after = await asyncio.to_thread(_alerts, pg_dsn, 2)
            for c in (ca, cb):
                frames: list[dict[str, Any]] = []
                deadline = time.monotonic() + 30
                while len([m for m in frames if m["event"] == "postgres_changes"]) < 2:
                    frames.append(await c.recv(max(0.1, deadline - time.monotonic())))
                codes = [m["payload"].get("code") for m in frames if m["event"] == "system"]
                assert "resync_needed" in codes, frames
                told = [
                    m["payload"]["message"] for m in frames if m["payload"].get("code") == "resync_needed"
                ]
                assert "change log lost entries" in told[0]
                first_resync = next(
                    i for i, m in enumerate(frames) if m["payload"].get("code") == "resync_needed"
                )
                rows = [m for m in frames[first_resync:] if m["event"] == "postgres_changes"]
                assert [int(m["payload"]["data"]["record"]["id"]) for m in rows] == after
            assert a.cluster is not None and a.cluster.follower.gen not in (None, gen)


async def test_a_node_that_missed_trimmed_entries_tells_its_subscribers_to_resync(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """Entries trimmed before a slow node read them are a gap for its channels only: the node
    sees it (the next entry's predecessor is beyond what it read) and says resync_needed."""
    from tests.support.tcp_proxy import FaultProxy

    await _migrate(pg_dsn)
    async with FaultProxy(redis_server.port) as proxy:
        slow_url = f"redis://127.0.0.1:{proxy.port}/0"
        async with (
            cluster_node(pg_dsn, redis_server.url, "fast") as a,
            cluster_node(pg_dsn, slow_url, "slow") as b,
            PhoenixClient.connect(a) as ca,
            PhoenixClient.connect(b) as cb,
        ):
            # the stall below must stop the slow node's reading, not the leader's appends
            assert _role(a) == "leader", (_role(a), _role(b))
            await _join(ca)
            await _join(cb)
            first = await asyncio.to_thread(_alerts, pg_dsn, 2)
            assert _ids(await ca.changes(2)) == first
            assert _ids(await cb.changes(2)) == first
            proxy.stall()  # the slow node reads nothing for a while
            missed = await asyncio.to_thread(_alerts, pg_dsn, 3)
            assert _ids(await ca.changes(3)) == missed  # in the log
            r = Redis.from_url(redis_server.url)
            try:
                r.xtrim(f"relay:{{{a.server.config.slot}}}:log", maxlen=1, approximate=False)
            finally:
                r.close()
            proxy.stall(False)
            frames: list[dict[str, Any]] = []
            deadline = time.monotonic() + 20
            while not any(m["payload"].get("code") == "resync_needed" for m in frames):
                frames.append(await cb.recv(max(0.1, deadline - time.monotonic())))
            told = [m["payload"]["message"] for m in frames if m["payload"].get("code") == "resync_needed"]
            assert "change log lost entries" in told[0]
            assert b.cluster is not None and b.cluster.follower.gaps >= 1
            later = await asyncio.to_thread(_alerts, pg_dsn, 1)
            assert _ids(await cb.changes(1)) == later  # then live again
            assert _ids(await ca.changes(1)) == later
            assert not [m for m in await ca.collect(0.3) if m["payload"].get("code") == "resync_needed"]
            assert a.cluster is not None and a.cluster.follower.gaps == 0


async def test_postgres_crash_under_a_cluster_loses_nothing(redis_server: RedisServer) -> None:
    """Postgres SIGKILLed and restarted: the leader's pipeline reconnects from what the log
    holds; subscribers on both nodes get every row once, rows written meanwhile included."""
    from tests.support.clusters import own_cluster

    with own_cluster() as cluster:
        dsn = cluster.dsn()
        await _migrate(dsn)
        async with (
            cluster_node(dsn, redis_server.url, "n1") as a,
            cluster_node(dsn, redis_server.url, "n2") as b,
            PhoenixClient.connect(a) as ca,
            PhoenixClient.connect(b) as cb,
        ):
            await _join(ca)
            await _join(cb)
            ids = await asyncio.to_thread(_alerts, dsn, 3)
            await asyncio.to_thread(cluster.kill)
            await asyncio.to_thread(cluster.start)
            ids += await asyncio.to_thread(_alerts, dsn, 3)  # before the leader reconnects
            for c in (ca, cb):
                assert _ids(await c.changes(6, timeout=30)) == ids
                frames = await c.collect(0.5)
                assert [m for m in frames if m["event"] == "postgres_changes"] == []
                assert not [m for m in frames if m["payload"].get("code") == "resync_needed"]


async def test_resume_on_a_node_that_has_not_yet_read_the_position(
    pg_dsn: str, redis_server: RedisServer
) -> None:
    """A client resumes on a node that lags behind the node that gave it its position: the node
    first reads the log that far, then serves exactly what the client missed (a position it has
    not read yet is not one "from the future")."""
    from tests.support.tcp_proxy import FaultProxy

    await _migrate(pg_dsn)
    async with FaultProxy(redis_server.port) as proxy:
        async with (
            cluster_node(pg_dsn, redis_server.url, "fast") as a,
            cluster_node(pg_dsn, f"redis://127.0.0.1:{proxy.port}/0", "lagging") as b,
        ):
            async with PhoenixClient.connect(a) as ca:
                await _join(ca)
                await asyncio.to_thread(_alerts, pg_dsn, 2)
                await ca.changes(2)
                proxy.stall()  # b reads nothing from here on, for now
                seen = await asyncio.to_thread(_alerts, pg_dsn, 3)
                got = await ca.changes(3)
                assert _ids(got) == seen
                last = got[-1]["position"]
            missed = await asyncio.to_thread(_alerts, pg_dsn, 2)
            async with PhoenixClient.connect(b) as cb:
                reply = await cb.join("alerts", ALERTS, resume_from=last)
                assert reply["payload"]["status"] == "ok", reply
                await asyncio.sleep(1.0)
                proxy.stall(False)
                frames: list[dict[str, Any]] = []
                deadline = time.monotonic() + 20
                while len([m for m in frames if m["event"] == "postgres_changes"]) < 2:
                    frames.append(await cb.recv(max(0.1, deadline - time.monotonic())))
                frames += await cb.collect(0.5)
                assert not [m for m in frames if m["payload"].get("code") == "resync_needed"], frames
                rows = [m["payload"]["data"] for m in frames if m["event"] == "postgres_changes"]
                assert _ids(rows) == missed


async def test_snapshot_on_join_works_on_every_node(
    pg_dsn: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot waits for its fence in the stream the node reads: on a follower that stream is
    the change log, so the leader must carry the fence into it (it did not: every follower's
    snapshot waited out RELAY_SNAPSHOT_TIMEOUT and fell back to a marker that may repeat)."""
    await _migrate(pg_dsn)
    before = await asyncio.to_thread(_alerts, pg_dsn, 4, 1)
    await asyncio.to_thread(_alerts, pg_dsn, 2, 2)
    async with (
        cluster_node(pg_dsn, redis_server.url, "n1", snapshot_timeout=10.0) as a,
        cluster_node(pg_dsn, redis_server.url, "n2", snapshot_timeout=10.0) as b,
    ):
        branch1 = token("authenticated", branch_id=1)
        for relay in (a, b):
            async with PhoenixClient.connect(relay, branch1) as c:
                reply = await c.join("alerts", [{**ALERTS[0], "snapshot": True}])
                assert reply["payload"]["status"] == "ok", reply
                rows: list[int] = []
                deadline = time.monotonic() + 20
                while True:
                    m = await c.recv(max(0.1, deadline - time.monotonic()))
                    p = m["payload"]
                    if m["event"] == "postgres_changes" and p["data"]["type"] == "SNAPSHOT":
                        rows.append(int(p["data"]["record"]["id"]))
                    elif m["event"] == "system" and p.get("code", "").startswith("snapshot_"):
                        assert p["code"] == "snapshot_complete", (_role(relay), p)
                        break
                assert sorted(rows) == before, _role(relay)
                later = await asyncio.to_thread(_alerts, pg_dsn, 1, 1)
                assert _ids(await c.changes(1)) == later
                before = before + later  # the next node's snapshot has it
    late = [r.getMessage() for r in caplog.records if "did not reach the fence" in r.getMessage()]
    assert not late
