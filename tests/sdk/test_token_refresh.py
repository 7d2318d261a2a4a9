"""Short-lived tokens while subscribed: a provider refreshes them before expiry; set_auth recovers.

The relay closes a channel the moment its token expires and refuses handshakes with an expired
token, so any refresh that comes late shows up as a server close, a refusal or a gap.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from relay_client import Change, RealtimeSubscribeStates, RelayClient

from tests.sdk.helpers import (
    NumberedWriter,
    assert_in_order_once,
    insert_alerts,
    until,
    until_at_least,
    url,
)
from tests.support.relay import running_relay, token
from tests.support.tcp_proxy import FaultProxy

pytestmark = pytest.mark.pg


async def test_provider_refreshes_short_tokens_before_they_expire(pg_dsn: str) -> None:
    issued: list[float] = []

    async def provider() -> str:
        await asyncio.sleep(0.05)  # a provider is an HTTP call or similar
        issued.append(time.time())
        return token(ttl=3)

    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        client = RelayClient(
            url(proxy.port), token_provider=provider, hb_interval=0.5, initial_backoff=0.05, max_backoff=0.2
        )
        got: list[Change] = []
        ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts", callback=got.append)
        writer = NumberedWriter(pg_dsn, pause=0.02)
        try:
            await ch.subscribe(timeout=10)  # the first token comes from the provider too
            writer.start()
            await asyncio.sleep(2.5)
            assert proxy.drop() == 1  # the reconnect must use the refreshed token
            await until(lambda: ch.stats.joins == 2, 5, "rejoined")
            await asyncio.sleep(2.5)
            expected = await writer.stop()
            await until_at_least(lambda: len(got), len(expected), 10, "every row")
        finally:
            await writer.stop()
            await client.close()
    assert_in_order_once(got, expected)
    # ~5.5 s of 3-second tokens refreshed at half-life: at least 3 more after the first
    assert len(issued) >= 4, issued
    assert ch.stats.server_closes == 0 and ch.stats.refusals == 0, ch.stats


async def test_expired_token_closes_the_channel_until_set_auth_then_it_resumes(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        client = RelayClient(url(relay.port), token(ttl=2), initial_backoff=0.05, max_backoff=0.3)
        events: list[RealtimeSubscribeStates] = []
        ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts")
        stream = ch.changes(resync=False)
        try:
            await ch.subscribe(lambda state, err: events.append(state), timeout=10)
            before = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            await until_at_least(lambda: ch.stats.changes, 2, 5, "live rows")
            await until_at_least(lambda: ch.stats.server_closes, 1, 5, "relay closes the expired channel")
            missed = await asyncio.to_thread(insert_alerts, pg_dsn, 3)
            await until_at_least(lambda: ch.stats.refusals, 1, 5, "rejoin refused with the old token")
            assert not ch.is_joined and client.status.online  # the socket itself is fine
            await client.set_auth(token())
            await until(lambda: ch.is_joined, 5, "rejoined with the new token")
            after = await asyncio.to_thread(insert_alerts, pg_dsn, 1)
            got = [await asyncio.wait_for(anext(stream), 5) for _ in before + missed + after]
        finally:
            await client.close()
        assert_in_order_once(got, before + missed + after)
        assert ch.stats.resumes >= 1 and ch.stats.duplicates == 0
        assert events[0] == RealtimeSubscribeStates.SUBSCRIBED
        assert RealtimeSubscribeStates.CHANNEL_ERROR in events
        assert events[-2:] == [RealtimeSubscribeStates.SUBSCRIBED, RealtimeSubscribeStates.CLOSED]


@pytest.mark.parametrize("warning", [2.0, 0.0])
async def test_relay_token_expiring_warning_triggers_a_refresh(pg_dsn: str, warning: float) -> None:
    """With a refresh margin too small for a slow provider, only the relay's ``token_expiring``
    warning gets a new token to the relay in time (``warning=0``: the relay sends none, and the
    channel is closed by the relay: the control that shows the warning is what saves it)."""
    issued: list[float] = []

    async def provider() -> str:
        await asyncio.sleep(0.6)  # slower than the 0.1 s margin the client keeps by itself
        issued.append(time.time())
        return token(ttl=4)

    async with running_relay(pg_dsn, token_expiry_warning=warning) as relay:
        client = RelayClient(
            url(relay.port), token_provider=provider, token_refresh_margin=0.1, hb_interval=0.5
        )
        ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts", callback=lambda c: None)
        try:
            await ch.subscribe(timeout=10)
            if warning:  # past the first token's life (4 s) with a margin: no close came
                await until(lambda: time.time() > issued[0] + 4.5 and len(issued) >= 2, 10, "a refresh")
            else:  # the first token's life ends with the relay's close
                await until_at_least(lambda: ch.stats.server_closes, 1, 10, "the relay's close")
        finally:
            await client.close()
    if warning:
        assert ch.stats.server_closes == 0, ch.stats
        assert len(issued) >= 2, issued
    else:
        assert ch.stats.server_closes >= 1, ch.stats
