"""The relay stops and a new one starts on the same port while the SDK is subscribed and rows commit.

Why not ``running_relay``: it binds a free port each time, and the point here is the client
finding the relay again where it was.  The relay is started the way ``running_relay`` does it,
on a fixed free port, twice.
"""

from __future__ import annotations

import asyncio

import pytest
from relay_client import Change, RelayClient, Status

from relay.config import Config
from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import start_relay
from tests.sdk.helpers import NumberedWriter, assert_in_order_once, until, until_at_least, url
from tests.support.relay import SECRET, token

pytestmark = pytest.mark.pg


async def test_relay_restart_on_the_same_port_loses_and_repeats_nothing(pg_dsn: str) -> None:
    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    cfg = Config(database_url=pg_dsn, jwt_secret=SECRET, port=free_port(), publication_poll_interval=0.5)
    relay = await start_relay(cfg)
    client = RelayClient(url(cfg.port), token(), hb_interval=0.5, initial_backoff=0.05, max_backoff=0.3)
    seen: list[Status] = []
    client.on_status(seen.append)
    got: list[Change] = []
    ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts", callback=got.append)
    writer = NumberedWriter(pg_dsn, pause=0.01)
    try:
        await ch.subscribe(timeout=10)
        writer.start()
        await until_at_least(lambda: len(got), 20, 10, "live rows")
        await relay.stop()
        await until(lambda: not client.status.online, 5, "offline")
        before = len(writer.ids)
        await until_at_least(lambda: len(writer.ids), before + 20, 10, "rows committed while down")
        await until(lambda: "cannot connect" in (client.status.reason or ""), 5, "probing a closed port")
        relay = await start_relay(cfg)
        await client.wait_online(5)
        await until_at_least(lambda: ch.stats.resumes, 1, 10, "resumed")
        expected = await writer.stop()
        await until_at_least(lambda: len(got), len(expected), 20, "every row")
        await asyncio.sleep(0.2)
    finally:
        await writer.stop()
        await client.close()
        await relay.stop()
    assert_in_order_once(got, expected)
    # (the rows committed while it was down come as replay or, if the new relay is still decoding
    # its slot when we resume, live right after: either way once, in order, asserted above)
    assert ch.stats.resyncs == 0 and ch.stats.duplicates == 0 and ch.stats.resumes >= 1
    reasons = [s.reason or "" for s in seen if s.state.value == "offline"]
    assert any("1001" in r for r in reasons), reasons  # "server shutting down"
    assert any("cannot connect" in r for r in reasons), reasons
    assert [s.state.value for s in seen][-2:] == ["online", "closed"]
