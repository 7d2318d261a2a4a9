"""The official clients join while Postgres is down, then rejoin by themselves once it is back.

The relay answers such a join with ``UnableToConnectToProject`` (Supabase Realtime's code and
wording for an unreachable project database).  Both official clients treat an error reply to
``phx_join`` as retryable: realtime-py schedules its rejoin timer (1, 2, 5, 10 s), realtime-js
(Phoenix) its ``rejoinTimer``.  These tests check that the reply survives their parsing and that
the automatic rejoin succeeds and delivers changes, without touching either client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent as ListenEvent

from relay.postgres.cluster import LocalCluster
from tests.interop.helpers import insert_booking
from tests.interop.test_realtime_js import node_env, subscriber  # noqa: F401 (node_env is a fixture)
from tests.support.clusters import own_cluster, stop_keeping_data
from tests.support.relay import running_relay, token

pytestmark = [pytest.mark.pg, pytest.mark.interop]

WAIT = 10.0
BACK = 40.0  # Postgres restarted + the client's rejoin timer + the relay's stream reconnect


@pytest.fixture()
def stoppable() -> Iterator[LocalCluster]:
    with own_cluster() as cluster:
        yield cluster


async def _until(cond: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_realtime_py_rejoins_by_itself_once_postgres_is_back(
    stoppable: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="realtime")
    cluster = stoppable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="py_down") as relay:
        client = AsyncRealtimeClient(relay.url, token(), auto_reconnect=False, timeout=5)
        await asyncio.wait_for(client.connect(), WAIT)
        try:
            await asyncio.to_thread(stop_keeping_data, cluster)
            relay.server.catalog._tables.clear()  # the join must ask Postgres
            statuses: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
            changes: asyncio.Queue[Any] = asyncio.Queue()
            channel = client.channel("dash")
            channel.on_postgres_changes(
                ListenEvent.Insert, schema="public", table="bookings", callback=changes.put_nowait
            )
            await asyncio.wait_for(channel.subscribe(lambda s, e: statuses.append((s, e))), WAIT)
            state, err = statuses[0]
            assert state is RealtimeSubscribeStates.CHANNEL_ERROR, statuses
            assert "UnableToConnectToProject" in str(err)
            await asyncio.to_thread(cluster.start)
            await _until(lambda: statuses[-1][0] is RealtimeSubscribeStates.SUBSCRIBED, BACK)
            assert channel.is_joined
            bid = await insert_booking(dsn, branch=1)
            ins = await asyncio.wait_for(changes.get(), BACK)
            assert ins["data"]["record"]["id"] == bid
        finally:
            await asyncio.wait_for(client.close(), WAIT)
    dropped = [r.getMessage() for r in caplog.records if "Unrecognized message" in r.getMessage()]
    assert dropped == []  # the error reply passed the client's pydantic validation


async def test_realtime_js_rejoins_by_itself_once_postgres_is_back(
    stoppable: LocalCluster,
    node_env: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RT_KEEP_ON_ERROR", "1")
    cluster = stoppable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="js_down") as relay:
        await asyncio.to_thread(stop_keeping_data, cluster)
        relay.server.catalog._tables.clear()
        async with subscriber(node_env, relay.url, count=1, event="INSERT", timeout_ms=90000) as sub:
            line = await sub.wait_for(lambda m: "status" in m, WAIT)
            assert line["status"] == "CHANNEL_ERROR" and "UnableToConnectToProject" in line["error"], line
            await asyncio.to_thread(cluster.start)
            line = await sub.wait_for(lambda m: "status" in m, BACK)
            assert line == {"status": "SUBSCRIBED"}, sub.lines
            bid = await insert_booking(dsn, branch=1)
            (payload,) = await sub.payloads(BACK)
            assert payload["eventType"] == "INSERT" and payload["new"]["id"] == bid
