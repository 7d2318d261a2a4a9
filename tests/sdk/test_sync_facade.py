"""The blocking facade: the async client on a private loop thread, driven from ordinary code.

The relay runs on the test's event loop, so the blocking code runs in a worker thread
(``asyncio.to_thread``), as it would in a non-async application.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from relay_client import AsyncRealtimeClient, Change, RelayClient, SyncRelayClient

from tests.sdk.helpers import insert_alerts, url
from tests.support.relay import running_relay, token

pytestmark = pytest.mark.pg


def _loop_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "relay-client-loop")


async def test_sync_client_subscribes_iterates_reconnects_and_closes(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:

        def blocking_app() -> tuple[list[int], list[int], list[int], str]:
            called: list[int] = []
            with SyncRelayClient(url(relay.port), token(), hb_interval=1.0, initial_backoff=0.05) as client:
                assert _loop_threads() == 1
                ch = client.channel("alerts").on_postgres_changes(
                    "INSERT", table="alerts", callback=lambda c: called.append(int(c.record["id"]))
                )
                changes = ch.changes(resync=False, timeout=10)
                ch.subscribe(timeout=10)
                assert client.wait_online(5).online
                rows = insert_alerts(pg_dsn, 3)
                client.reconnect()  # the iterator just continues after the reconnect
                rows += insert_alerts(pg_dsn, 2)
                got = [int(next(changes).record["id"]) for _ in rows]
                status = str(client.status)
            return rows, got, called, status

        rows, got, called, status = await asyncio.to_thread(blocking_app)
        assert got == rows and called == rows
        assert status == "online"
        assert _loop_threads() == 0  # close() stopped the loop and joined its thread


def test_official_client_names_are_available() -> None:
    assert AsyncRealtimeClient is RelayClient
    client = RelayClient("http://127.0.0.1:1/realtime/v1", "t")
    assert client.url == "ws://127.0.0.1:1/realtime/v1/websocket"
    ch = client.channel("realtime:x")
    assert ch.name == "x" and ch.topic == "realtime:x"

    def cb(change: Change) -> None:
        pass

    # (event, callback, table=, schema=, filter=) as in realtime-py, chainable
    assert ch.on_postgres_changes("INSERT", cb, table="t", schema="s", filter="id=eq.1") is ch
    assert client.status.state.value == "closed" and not client.is_connected
