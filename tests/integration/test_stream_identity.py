"""Positions identify their stream: a foreign, legacy or future position gets resync_needed.

Before positions carried a stream identity, a client resuming with a position the relay had
never issued (another cluster's, a restored database's, ``FFFFFFFFFFFFFFFF:FFFFFFFF``) was told
"Resumed: 0 changes replayed" and its channel (and the SDK's dedup) then skipped every change
whose position compared lower: silence.  Real Postgres, real relay, raw WebSockets and the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from relay_client import Change, RelayClient, ResyncNeeded

from relay.core.changes import parse_stream_position
from relay.postgres.cluster import LocalCluster
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.sdk.helpers import insert_alerts, url
from tests.support.clusters import own_cluster, stop_keeping_data
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

ALERTS = [{"event": "*", "schema": "public", "table": "alerts"}]
FOREIGN = "0123456789ABCDEF"  # a stream id no relay of these tests streams


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def _join(c: PhoenixClient, **config: Any) -> dict[str, Any]:
    """Join the alerts channel; returns the "Subscribed" system payload."""
    reply = await c.join("alerts", ALERTS, **config)
    assert reply["payload"]["status"] == "ok", reply
    sysmsg = await c.recv_until(lambda m: m["event"] == "system")
    assert sysmsg["payload"]["message"] == "Subscribed to PostgreSQL"
    return dict(sysmsg["payload"])


async def _next_system(c: PhoenixClient) -> dict[str, Any]:
    return dict((await c.recv_until(lambda m: m["event"] == "system"))["payload"])


async def _changes(c: PhoenixClient, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
        out.append(m["payload"]["data"])
    return out


async def _resync_then_live(relay: Any, dsn: str, resume_from: str) -> dict[str, Any]:
    """Resume with ``resume_from``: expect resync_needed, then rows committed afterwards."""
    async with PhoenixClient.connect(relay) as c:
        sub = await _join(c, resume_from=resume_from)
        assert sub["position"] == resume_from  # echoed as sent
        resync = await _next_system(c)
        assert resync["status"] == "error" and resync["code"] == "resync_needed", resync
        assert resync["resume_from"] == resume_from
        assert resync["position"].startswith(relay.server.stream_id + "/")
        ids = await asyncio.to_thread(insert_alerts, dsn, 2)
        got = await _changes(c, 2)
        assert [d["record"]["id"] for d in got] == ids  # live rows are not skipped
        assert all(d["position"] > resync["position"] for d in got)
        return resync


async def test_positions_carry_the_stream_identity_of_the_database(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        sub = await _join(c)
        (sysid, tli, dboid) = _exec(
            pg_dsn,
            "select system_identifier::text, (select timeline_id from pg_control_checkpoint()), "
            "(select oid::int8 from pg_database where datname = current_database()) from pg_control_system()",
        )[0]
        stream = relay.server.stream
        assert stream is not None
        assert (stream.system_identifier, stream.timeline, stream.database_oid) == (sysid, tli, dboid)
        assert stream.slot == relay.server.config.slot
        sid = stream.id
        assert sub["position"].startswith(sid + "/")
        ids = await asyncio.to_thread(insert_alerts, pg_dsn, 1)
        (change,) = await _changes(c, 1)
        assert change["record"]["id"] == ids[0]
        stream_id, seq = parse_stream_position(change["position"])
        assert stream_id == sid and seq > parse_stream_position(sub["position"])[1]
    # and an ordinary resume with it still replays (same stream)
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        missed = await asyncio.to_thread(insert_alerts, pg_dsn, 1)
        await _join(c, resume_from=change["position"])
        frames = [
            await c.recv_until(lambda m: m["event"] in ("system", "postgres_changes")) for _ in range(2)
        ]
        # (the change may follow the Resumed event live, if decoded after the replay caught up)
        (resumed,) = [m["payload"] for m in frames if m["event"] == "system"]
        assert resumed["status"] == "ok" and "Resumed" in resumed["message"]
        assert [
            m["payload"]["data"]["record"]["id"] for m in frames if m["event"] == "postgres_changes"
        ] == missed


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda sid: f"{sid}/FFFFFFFFFFFFFFFF:FFFFFFFF", id="future-of-this-stream"),
        pytest.param(lambda sid: "FFFFFFFFFFFFFFFF:FFFFFFFF", id="legacy-future"),
        pytest.param(lambda sid: f"{FOREIGN}/FFFFFFFF00000000:00000000", id="another-cluster"),
    ],
)
async def test_a_position_not_issued_by_this_stream_gets_resync_needed_and_live_rows(
    pg_dsn: str, make: Any
) -> None:
    async with running_relay(pg_dsn) as relay:
        await _resync_then_live(relay, pg_dsn, make(relay.server.stream_id))


async def test_a_legacy_position_of_the_right_lsn_gets_resync_needed(pg_dsn: str) -> None:
    """Without a stream id the relay cannot tell which history an LSN belongs to (documented)."""
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay) as c:
            sub = await _join(c)
        legacy = sub["position"].partition("/")[2]
        resync = await _resync_then_live(relay, pg_dsn, legacy)
        assert "no stream id" in resync["message"]


async def test_a_recreated_slot_answers_old_positions_with_resync_needed(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        slot = relay.server.config.slot
        await _join(c)
        await asyncio.to_thread(insert_alerts, pg_dsn, 1)
        (old,) = await _changes(c, 1)
    _exec(pg_dsn, "select pg_drop_replication_slot(%s)", (slot,))
    await asyncio.to_thread(insert_alerts, pg_dsn, 3)  # committed while there was no slot: lost
    async with running_relay(pg_dsn) as relay:
        await _resync_then_live(relay, pg_dsn, old["position"])


async def test_the_sdk_does_not_drop_rows_after_resuming_from_a_foreign_position(pg_dsn: str) -> None:
    """A position of another stream compares higher than every position of this one: without
    the relay's resync_needed (and the SDK taking its position), every row would be a duplicate."""
    async with running_relay(pg_dsn) as relay:
        client = RelayClient(url(relay.port), token(), initial_backoff=0.05)
        resyncs: list[ResyncNeeded] = []
        ch = client.channel("alerts", resume_from=f"{FOREIGN}/FFFFFFFF00000000:00000000")
        ch.on_postgres_changes("INSERT", table="alerts").on_resync(resyncs.append)
        stream = ch.changes(resync=False)
        try:
            await ch.subscribe(timeout=10)
            ids = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
            got = [await asyncio.wait_for(anext(stream), 10) for _ in ids]
        finally:
            await client.close()
        assert [c.record["id"] for c in got if isinstance(c, Change)] == ids
        assert len(resyncs) == 1 and resyncs[0].position is not None
        assert resyncs[0].position.startswith(relay.server.stream_id + "/")
        assert ch.stats.duplicates == 0 and ch.position == got[-1].position


# -- a join while Postgres is unreachable --------------------------------------------------------


@pytest.fixture()
def stoppable() -> Iterator[LocalCluster]:
    with own_cluster() as cluster:
        yield cluster


async def test_a_join_while_postgres_is_down_is_a_retryable_error(stoppable: LocalCluster) -> None:
    cluster = stoppable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="down_join") as relay, PhoenixClient.connect(relay) as c:
        await asyncio.to_thread(stop_keeping_data, cluster)
        relay.server.catalog._tables.clear()  # nothing cached: the join must ask Postgres
        reply = await c.join("alerts", ALERTS)
        resp = reply["payload"]["response"]
        assert reply["payload"]["status"] == "error"
        assert resp["code"] == "UnableToConnectToProject"
        assert resp["reason"].startswith("UnableToConnectToProject: Realtime was unable to connect")
        assert "retry" in resp["reason"] and "internal error" not in resp["reason"]
        # a private channel (topic policies live in Postgres too) gets the same answer
        reply = await c.join("room", [], access_token=token("authenticated"), private=True)
        assert reply["payload"]["response"].get("code") == "UnableToConnectToProject", reply
        await asyncio.to_thread(cluster.start)
        sub = await _join(c)  # the retry succeeds once the database is back
        assert "position" not in sub or sub["position"].startswith(relay.server.stream_id + "/")
        ids = await asyncio.to_thread(insert_alerts, dsn, 1)
        got = await asyncio.wait_for(_changes(c, 1), 30)  # once the stream has reconnected
        assert [d["record"]["id"] for d in got] == ids


async def test_another_cluster_behind_the_same_address_resyncs_subscribers_and_old_positions(
    stoppable: LocalCluster,
) -> None:
    """The database is replaced (restored elsewhere, re-created) while the relay runs.

    The new cluster's LSNs are lower than the old one's: a subscriber's cursor, the replay log
    and a client's old position all compare higher than every new change.  Without stream
    identities the relay delivered nothing more and resumes said "Resumed: 0 changes".
    """
    cluster = stoppable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="replaced") as relay, PhoenixClient.connect(relay) as c:
        await _join(c)
        # plenty of WAL on the old cluster, so its positions are ahead of the new one's
        _exec(dsn, "create table filler as select g, repeat('x', 200) as t from generate_series(1, 50000) g")
        await asyncio.to_thread(insert_alerts, dsn, 1)
        (old,) = await _changes(c, 1)
        old_id = relay.server.stream_id
        await asyncio.to_thread(cluster.stop)  # removes the data directory: start() runs initdb
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(apply_migrations, dsn)
        await asyncio.to_thread(apply_demo_schema, dsn)
        resync = dict(
            (await c.recv_until(lambda m: m.get("payload", {}).get("code") == "resync_needed", 40))["payload"]
        )
        new_id = relay.server.stream_id
        assert new_id != old_id and resync["position"].startswith(new_id + "/")
        assert resync["resume_from"] == old["position"]
        new_pos = parse_stream_position(resync["position"])[1]
        assert new_pos < parse_stream_position(old["position"])[1]  # the case that went silent
        ids = await asyncio.to_thread(insert_alerts, dsn, 2)
        got = await asyncio.wait_for(_changes(c, 2), 20)
        assert [d["record"]["id"] for d in got] == ids
        # a client that was away resumes with its old (higher) position: resync, then live rows
        await _resync_then_live(relay, dsn, old["position"])
