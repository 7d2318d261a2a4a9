"""Reconnection, dead-link detection and online/offline status against a real relay, through faults.

Real Postgres, real relay, the SDK connecting through :class:`FaultProxy`.  Short heartbeat and
backoff settings keep each scenario to a second or two; what is asserted is the behaviour
promised in client_sdk/README.md, with the timing bounds it states.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from relay_client import (
    Change,
    ClientClosedError,
    ClientState,
    GaveUpError,
    JoinError,
    RealtimeSubscribeStates,
    RelayClient,
    Status,
)
from relay_client.protocol import name_of

from tests.sdk.helpers import (
    assert_in_order_once,
    assert_no_leaks,
    insert_alerts,
    sdk_tasks,
    until,
    until_at_least,
    url,
)
from tests.support.relay import running_relay, token
from tests.support.tcp_proxy import FaultProxy

pytestmark = pytest.mark.pg

FAST: dict[str, Any] = {"initial_backoff": 0.05, "max_backoff": 0.3, "stable_after": 5.0, "timeout": 2.0}


def states(seen: list[Status]) -> list[str]:
    """The sequence of states, consecutive repeats (reason updates) collapsed."""
    out: list[str] = []
    for s in seen:
        if not out or out[-1] != s.state.value:
            out.append(s.state.value)
    return out


async def test_status_follows_drops_and_resets_and_changes_are_not_lost(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        client = RelayClient(url(proxy.port), token(), hb_interval=1.0, **FAST)
        seen: list[Status] = []
        client.on_status(seen.append)
        iterated: list[Status] = []
        status_stream = client.status_changes()

        async def follow() -> None:
            async for s in status_stream:
                iterated.append(s)

        follower = asyncio.create_task(follow())
        ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts")
        stream = ch.changes(resync=False)
        sub_events: list[RealtimeSubscribeStates] = []
        await ch.subscribe(lambda state, err: sub_events.append(state), timeout=10)
        assert client.status.online and ch.is_joined
        expected: list[int] = []
        for fault in (proxy.drop, proxy.reset):
            expected += await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            await until_at_least(lambda: ch.stats.changes, len(expected), 10, "live changes")
            offline_before = sum(1 for s in seen if s.state is ClientState.OFFLINE)
            assert fault() == 1
            # (via the callback: offline and back can take less than a polling interval)
            await until_at_least(
                lambda: sum(1 for s in seen if s.state is ClientState.OFFLINE),
                offline_before + 1,
                5,
                "offline",
            )
            assert [s for s in seen if s.state is ClientState.OFFLINE][-1].reason
            expected += await asyncio.to_thread(insert_alerts, pg_dsn, 2)  # committed while away
            await client.wait_online(5)
            await until(lambda: ch.stats.joins == len(sub_events), 5, "rejoin")
        got = [await anext(stream) for _ in expected]
        assert_in_order_once(got, expected)
        assert ch.stats.duplicates == 0 and ch.stats.resumes == 2
        await client.close()
        await asyncio.wait_for(follower, 2)
        assert states(seen) == ["connecting", "online", "offline", "online", "offline", "online", "closed"]
        assert states(iterated) == states(seen)
        assert sub_events[:3] == [RealtimeSubscribeStates.SUBSCRIBED] * 3
        assert sub_events[-1] == RealtimeSubscribeStates.CLOSED
        assert seen[-1].reason == "closed by client"


async def test_blackhole_is_detected_within_two_heartbeat_intervals(pg_dsn: str) -> None:
    interval = 0.5
    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        async with RelayClient(
            url(proxy.port), token(), hb_interval=interval, initial_backoff=0.05, max_backoff=0.4, timeout=0.6
        ) as client:
            ch = client.channel("alerts").on_postgres_changes("*", table="alerts")
            stream = ch.changes(resync=False)
            await ch.subscribe(timeout=10)
            detections = []
            for phase in (0.05, 0.3, 0.45):  # blackhole at different points of the heartbeat cycle
                await client.wait_online(5)
                await until(lambda: ch.is_joined, 5, "joined")
                await asyncio.sleep(phase)
                t0 = time.monotonic()
                assert proxy.blackhole() == 1
                await until(lambda: not client.status.online, 3 * interval, "dead link noticed")
                detections.append(time.monotonic() - t0)
                assert "heartbeat" in (client.status.reason or "")
                # offline, it keeps probing: connections are attempted (and blackholed too)
                accepted = proxy.stats.accepted
                probes = 2 if phase == 0.05 else 1
                await until_at_least(
                    lambda: proxy.stats.accepted, accepted + probes, 5, "probes while offline"
                )
                assert client.status.state is ClientState.OFFLINE
                rows = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
                proxy.blackhole(False)
                t1 = time.monotonic()
                await client.wait_online(5)
                # back within a connect timeout (a probe in flight) plus one capped backoff wait
                assert time.monotonic() - t1 <= 0.6 + 0.4 + 0.5
                got = [await asyncio.wait_for(anext(stream), 5) for _ in rows]
                assert [c.record["id"] for c in got] == rows
            assert max(detections) <= 2 * interval + 0.15, detections
            assert ch.stats.duplicates == 0


async def test_manual_reconnect_is_immediate_and_resumes(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        async with RelayClient(url(proxy.port), token(), hb_interval=1.0, **FAST) as client:
            ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts")
            stream = ch.changes(resync=False)
            await ch.subscribe(timeout=10)
            first = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            accepted = proxy.stats.accepted
            t0 = time.monotonic()
            await client.reconnect()
            await until(lambda: proxy.stats.accepted == accepted + 1 and ch.stats.joins == 2, 3, "reconnect")
            assert time.monotonic() - t0 < 1.0
            second = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            got = [await asyncio.wait_for(anext(stream), 5) for _ in first + second]
            assert_in_order_once(got, first + second)


async def test_close_leaves_no_task_socket_or_callback_behind(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, policy_poll_interval=3600) as relay, FaultProxy(relay.port) as proxy:
        before = sdk_tasks()
        received: list[Change] = []
        client = RelayClient(url(proxy.port), token(), hb_interval=0.3, **FAST)
        ch = client.channel("alerts").on_postgres_changes("*", table="alerts", callback=received.append)
        stream = ch.changes()
        other = client.channel("others").on_postgres_changes("DELETE", table="alerts")
        await ch.subscribe(timeout=10)
        await other.subscribe(timeout=10)
        rows = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
        await until(lambda: len(received) == 3, 5, "changes")
        try:
            assert proxy.reset() == 1
            await until(lambda: ch.stats.joins == 2, 5, "rejoined after the reset")
            assert proxy.blackhole() == 1
            proxy.blackhole(False)
            await until(lambda: ch.stats.joins == 3, 5, "rejoined after the blackhole")
        finally:
            await client.close()
        await client.close()  # idempotent
        assert [c.record["id"] for c in received] == rows
        # the stream ends after what it held; nothing new is delivered
        assert [c.record["id"] async for c in stream if isinstance(c, Change)] == rows
        assert ch._callbacks == [None] and not ch._resync_callbacks and not ch._buffers
        assert not client._status.callbacks and not client._status.streams
        assert await proxy.wait_idle(3)
        await assert_no_leaks(client, before, proxy.port)
        with pytest.raises(ClientClosedError):
            await client.wait_online(1)
        with pytest.raises(ClientClosedError):
            await client.channel("late").on_postgres_changes("*", table="alerts").subscribe()


async def test_unsubscribe_and_close_from_inside_a_callback_do_not_deadlock(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        client = RelayClient(url(relay.port), token(), **FAST)
        seen: list[Change] = []

        async def on_change(change: Change) -> None:
            seen.append(change)
            if len(seen) == 1:
                await other.unsubscribe()
            elif len(seen) == 2:
                await client.close()  # scheduled: it completes once this callback returns

        ch = client.channel("a").on_postgres_changes("INSERT", table="alerts", callback=on_change)
        other = client.channel("b").on_postgres_changes("INSERT", table="alerts")
        await ch.subscribe(timeout=10)
        await other.subscribe(timeout=10)
        t0 = time.monotonic()
        await asyncio.to_thread(insert_alerts, pg_dsn, 3, True)
        await until(lambda: client.status.state is ClientState.CLOSED, 5, "closed")
        assert time.monotonic() - t0 < 2  # nothing waited for a timeout
        await client.close()  # waits for the scheduled close; idempotent
        assert other.is_closed and len(seen) == 2 and ch.is_closed


async def test_refused_first_join_raises_and_the_client_stays_online(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, RelayClient(url(relay.port), token(), **FAST) as client:
        bad = client.channel("bad").on_postgres_changes("*", table="alerts", filter="nope=eq.1")
        stream = bad.changes()
        with pytest.raises(JoinError, match="InvalidBinding"):
            await bad.subscribe(timeout=10)
        assert bad.is_closed and not client.get_channels()
        with pytest.raises(JoinError):
            await anext(stream)
        with pytest.raises(JoinError):  # a refused channel stays refused
            await bad.subscribe()
        with pytest.raises(JoinError):  # and a stream made afterwards ends at once, not never
            await asyncio.wait_for(anext(bad.changes()), 1)
        good = client.channel("good").on_postgres_changes("*", table="alerts")
        await good.subscribe(timeout=10)
        assert client.status.online and name_of(good.topic) == "good"


async def test_gives_up_after_max_retries_when_nothing_listens() -> None:
    async with FaultProxy(1) as proxy:  # upstream port 1: every connection is refused
        client = RelayClient(url(proxy.port), token(), max_retries=2, initial_backoff=0.01, max_backoff=0.02)
        ch = client.channel("x").on_postgres_changes("*", table="alerts")
        stream = ch.changes()
        sub = asyncio.create_task(ch.subscribe())
        with pytest.raises(GaveUpError):
            await client.connect(timeout=5)
        assert client.status.state is ClientState.CLOSED and "gave up after 3" in (client.status.reason or "")
        with pytest.raises(GaveUpError):
            await anext(stream)
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(sub, 2)
        await client.close()
        assert proxy.stats.accepted >= 3  # (aiohttp itself retries a handshake the server drops)
