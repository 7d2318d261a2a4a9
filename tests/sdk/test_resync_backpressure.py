"""What the SDK does when it cannot be given every change: resync, and a consumer that stalls.

- Away longer than the relay's replay window: the application gets a distinct
  :class:`ResyncNeeded` (callback, ``changes()`` item, coalescer signal) where the gap is, and
  the channel goes on live.
- A consumer that stops reading: its bounded buffer fills, the socket reader waits, the relay
  drops the socket as a slow consumer (1013), and once the consumer reads again the client
  reconnects and resumes — every row once, in order, with bounded memory on both sides.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from relay_client import (
    Change,
    ClientState,
    RelayClient,
    ResyncNeeded,
    Status,
    TableChangeCoalescer,
    TableChanged,
)

from tests.sdk.helpers import assert_in_order_once, insert_alerts, until, url
from tests.support.relay import running_relay, token
from tests.support.tcp_proxy import FaultProxy

pytestmark = pytest.mark.pg


async def test_resync_needed_reaches_the_application_and_the_channel_goes_on(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, resume_max_bytes=4000) as relay, FaultProxy(relay.port) as proxy:
        client = RelayClient(
            url(proxy.port), token(), hb_interval=0.3, timeout=0.5, initial_backoff=0.05, max_backoff=0.2
        )
        resyncs: list[ResyncNeeded] = []
        signals: list[TableChanged] = []
        dash = TableChangeCoalescer(signals.append, interval=0.05)
        ch = (
            client.channel("alerts")
            .on_postgres_changes("INSERT", table="alerts", callback=dash)
            .on_resync(resyncs.append)
            .on_resync(dash.resync)
        )
        stream = ch.changes()
        try:
            await ch.subscribe(timeout=10)
            first = await asyncio.to_thread(insert_alerts, pg_dsn, 1)
            events: list[Change | ResyncNeeded] = [await asyncio.wait_for(anext(stream), 5)]
            proxy.blackhole()  # away, and stays away while 60 rows (far over 4000 bytes) commit
            await until(lambda: not client.status.online, 2, "offline")
            await asyncio.to_thread(insert_alerts, pg_dsn, 60)
            proxy.blackhole(False)
            await client.wait_online(5)
            events.append(await asyncio.wait_for(anext(stream), 5))
            later = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
            events += [await asyncio.wait_for(anext(stream), 5) for _ in later]
            await asyncio.sleep(0.1)
        finally:
            await client.close()
            await dash.aclose()
        resync = events[1]
        assert isinstance(resync, ResyncNeeded) and resyncs == [resync]
        assert resync.channel == "alerts" and "resync needed" in resync.message
        last_seen = events[0]
        continue_from = resync.position
        assert isinstance(last_seen, Change) and continue_from is not None
        assert resync.resume_from == last_seen.position and continue_from > last_seen.position
        assert_in_order_once([events[0], *events[2:]], first + later)
        assert all(isinstance(c, Change) and c.position > continue_from for c in events[2:])
        assert ch.stats.resyncs == 1 and ch.stats.duplicates == 0
        assert any(s.resync for s in signals) and any(s.table == "alerts" for s in signals)


async def test_a_stalled_consumer_is_dropped_by_the_relay_and_still_gets_every_row(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, socket_queue_frames=50) as relay:
        client = RelayClient(url(relay.port), token(), queue_size=8, hb_interval=0.5, initial_backoff=0.05)
        seen: list[Status] = []
        client.on_status(seen.append)
        ch = client.channel("alerts").on_postgres_changes("INSERT", table="alerts")
        stream = ch.changes(resync=False)
        try:
            await ch.subscribe(timeout=10)

            def bulk() -> list[int]:  # one transaction, about 7 MB of frames
                with psycopg.connect(pg_dsn) as conn:
                    rows = conn.execute(
                        "insert into alerts (branch_id, severity, kind, title) "
                        "select 1, 'info', 'bulk', repeat('x', 200) || g from generate_series(1, 10000) g "
                        "returning id"
                    ).fetchall()
                return sorted(int(r[0]) for r in rows)

            expected = await asyncio.to_thread(bulk)
            # nobody reads: 8 buffered, the reader waits, the relay's queue for us overflows
            # (counted when the socket ends: the relay's own sockets are gone from the connection
            # set at once, so the set itself cannot be asked afterwards)
            closed = relay.server.metrics.connections_closed
            await until(lambda: closed["slow_consumer"] >= 1, 20, "the relay dropping the slow socket")
            assert sum(closed.values()) == closed["slow_consumer"], dict(closed)  # for no other reason
            assert len(stream) == 8
            got = [await asyncio.wait_for(anext(stream), 10) for _ in expected]
            await asyncio.sleep(0.2)
            assert len(stream) == 0
        finally:
            await client.close()
        assert_in_order_once(got, expected)
        assert ch.stats.resumes >= 1 and ch.stats.duplicates == 0
        # The client saw the drop. Which reason it reports depends on a race: the relay's 1013
        # close frame, or its own heartbeat write failing first while the reader is blocked on a
        # full buffer (the relay-side reason is checked above).
        assert any(s.state is ClientState.OFFLINE for s in seen), [str(s) for s in seen]
