"""The SDK's first join while Postgres is down: retried by code, not given up.

The relay refuses such a join with ``code: UnableToConnectToProject`` (docs/protocol.md: the one
retryable join error).  Other first-join refusals are final (a bad filter stays bad); this one
passes by itself, so ``subscribe()`` keeps the channel trying, reports ``CHANNEL_ERROR`` with a
retryable :class:`JoinError`, and returns once Postgres is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from relay_client import Change, JoinError, RealtimeSubscribeStates, RelayClient

from relay.postgres.cluster import LocalCluster
from tests.interop.helpers import insert_booking
from tests.sdk.helpers import url
from tests.support.clusters import own_cluster, stop_keeping_data
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg

FAST: dict[str, Any] = {"initial_backoff": 0.2, "max_backoff": 1.0, "stable_after": 5.0, "timeout": 3.0}
BACK = 40.0  # Postgres restarted + the channel's backoff + the relay's stream reconnect


@pytest.fixture()
def stoppable() -> Iterator[LocalCluster]:
    with own_cluster() as cluster:
        yield cluster


async def test_first_join_refused_as_unreachable_is_retried_until_postgres_is_back(
    stoppable: LocalCluster,
) -> None:
    cluster = stoppable
    dsn = cluster.dsn()
    async with running_relay(dsn, slot="sdk_down") as relay:
        await asyncio.to_thread(stop_keeping_data, cluster)
        relay.server.catalog._tables.clear()  # the join must ask Postgres
        statuses: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
        changes: asyncio.Queue[Change] = asyncio.Queue()
        async with RelayClient(url(relay.port), token(), **FAST) as client:
            channel = client.channel("dash").on_postgres_changes(
                "INSERT", changes.put_nowait, table="bookings", schema="public"
            )
            subscribing = asyncio.create_task(channel.subscribe(lambda s, e: statuses.append((s, e))))
            deadline = asyncio.get_running_loop().time() + 15
            while not statuses:
                assert asyncio.get_running_loop().time() < deadline, "no join reply"
                await asyncio.sleep(0.05)
            state, err = statuses[0]
            assert state is RealtimeSubscribeStates.CHANNEL_ERROR, statuses
            assert isinstance(err, JoinError) and err.code == "UnableToConnectToProject" and err.retryable
            assert not subscribing.done()  # still trying: not a final refusal
            await asyncio.to_thread(cluster.start)
            await asyncio.wait_for(subscribing, BACK)
            assert channel.is_joined and statuses[-1][0] is RealtimeSubscribeStates.SUBSCRIBED
            bid = await insert_booking(dsn, branch=1)
            change = await asyncio.wait_for(changes.get(), BACK)
            assert change.record["id"] == bid
