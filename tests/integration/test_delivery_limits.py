"""TOASTed values on UPDATE, and a slow consumer that must not hold anyone back."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def test_unchanged_toasted_column_is_delivered_on_update(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await c.join("t", [{"event": "UPDATE", "schema": "public", "table": "bookings"}])
        # ~200 kB of incompressible text: stored out of line (TOAST), so wal2json omits it
        # from an UPDATE that does not change it.
        rows = await asyncio.to_thread(
            _exec,
            pg_dsn,
            "insert into bookings (branch_id, client_id, service, starts_at, ends_at, price, notes) "
            "select 1, (select min(id) from clients), 'cut', now(), now() + interval '1 hour', 5, "
            "(select string_agg(md5(random()::text), '') from generate_series(1, 6000)) "
            "returning id, notes",
        )
        bid, notes = rows[0]
        assert len(notes) == 192_000
        toast = await asyncio.to_thread(
            _exec,
            pg_dsn,
            "select count(*) > 0 from pg_class c join pg_class t on t.oid = c.reltoastrelid "
            "where c.oid = 'public.bookings'::regclass and "
            "(select count(*) from pg_class where oid = c.reltoastrelid) = 1",
        )
        assert toast == [(True,)]
        stored = await asyncio.to_thread(
            _exec, pg_dsn, "select pg_column_size(notes) > 8000 from bookings where id = %s", (bid,)
        )
        assert stored == [(True,)]  # too large for the heap page even compressed: stored out of line
        await asyncio.to_thread(
            _exec, pg_dsn, "update bookings set status = 'confirmed' where id = %s", (bid,)
        )
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=10)
        data = m["payload"]["data"]
        assert data["record"]["status"] == "confirmed"
        assert data["record"]["notes"] == notes  # recovered from the old row image
        assert [col["name"] for col in data["columns"]][-3:] == ["notes", "created_at", "updated_at"]


def _read_changes(
    url: str, n: int, ready: threading.Event, out: list[int], lags: list[float] | None = None
) -> None:
    """A consumer on its own thread (as a separate client would be): counts n INSERT frames.

    ``lags`` gets, per change, seconds from its commit to its arrival (same machine clock).
    """
    from websockets.sync.client import connect

    with connect(url, max_size=None, open_timeout=10) as ws:
        ws.send(
            orjson.dumps(
                {
                    "topic": "realtime:f",
                    "event": "phx_join",
                    "ref": "1",
                    "payload": {
                        "config": {
                            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "bookings"}]
                        }
                    },
                }
            ).decode()
        )
        ws.recv(timeout=10)
        ready.set()
        deadline = time.monotonic() + 90
        while out[0] < n and time.monotonic() < deadline:
            frame = orjson.loads(ws.recv(timeout=30))
            if frame["event"] == "postgres_changes":
                out[0] += 1
                if lags is not None:
                    ts = frame["payload"]["data"]["commit_timestamp"]
                    committed = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
                    lags.append(time.time() - committed)


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """The stalled client's socket, with a fixed receive buffer.

    Without it Linux autotunes the window up to ``tcp_rmem``'s maximum (32 MiB here): how much
    of the stream the kernel absorbs before the relay's queue bound is reached then depends on
    timing (the relay writing in larger batches made it absorb all 8 MB at times), and the test
    is about the relay's bound, not the kernel's buffers.
    """
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


async def test_slow_consumer_is_dropped_and_others_keep_receiving(pg_dsn: str) -> None:
    """A stalled socket is closed at its queue bound; a live reader's lag stays small throughout;
    the dropped client resumes from its join position and gets every change exactly once."""
    n = 400
    async with running_relay(pg_dsn, socket_queue_frames=100) as relay:
        ws_url = f"ws://127.0.0.1:{relay.port}/realtime/v1/websocket?apikey={token()}&vsn=1.0.0"
        ready, count, lags = threading.Event(), [0], list[float]()
        reader = threading.Thread(target=_read_changes, args=(ws_url, n, ready, count, lags), daemon=True)
        reader.start()
        assert await asyncio.to_thread(ready.wait, 15)
        url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
            ) as session,
            session.ws_connect(url, params={"apikey": token(), "vsn": "1.0.0"}) as slow,
        ):
            await slow.send_json(
                {
                    "topic": "realtime:s",
                    "event": "phx_join",
                    "ref": "1",
                    "payload": {
                        "config": {
                            "postgres_changes": [{"event": "INSERT", "schema": "public", "table": "bookings"}]
                        }
                    },
                }
            )
            await slow.receive(timeout=5)
            joined_at = orjson.loads((await slow.receive(timeout=5)).data)["payload"]["position"]
            # the slow client now stops reading; ~20 kB per change fills every buffer on the way
            await asyncio.to_thread(
                _exec,
                pg_dsn,
                f"do $$ begin for i in 1..{n} loop "
                "insert into bookings (branch_id, client_id, service, starts_at, ends_at, price, notes) "
                "select 1, (select min(id) from clients), 'cut', now(), now() + interval '1 hour', 5, "
                "repeat(md5(i::text), 640); commit; end loop; end $$",
            )
            await asyncio.to_thread(reader.join, 90)
            assert count[0] == n  # the other subscriber received everything
            # ... without waiting for the stalled one: no change took long (a fan-out blocked on
            # the stalled socket would show as seconds here; typical is milliseconds)
            assert max(lags) < 5.0, sorted(lags)[-5:]
            # the stalled one was closed with a reason it can act on
            closed = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                msg = await slow.receive(timeout=20)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    closed = msg
                    break
            assert closed is not None
            assert slow.close_code == 1013
            assert "slow consumer" in str(closed.extra or "")
        # and counted as such (relay_connections_closed_total{reason="slow_consumer"})
        deadline = time.monotonic() + 10
        while relay.server.metrics.connections_closed["slow_consumer"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert relay.server.metrics.connections_closed["slow_consumer"] == 1
        # it reconnects and resumes from where it was: everything, once, in order
        async with PhoenixClient.connect(relay) as c:
            reply = await c.join(
                "s", [{"event": "INSERT", "schema": "public", "table": "bookings"}], resume_from=joined_at
            )
            assert reply["payload"]["status"] == "ok"
            positions: list[str] = []
            while True:
                m = await c.recv(20)
                if m["event"] == "postgres_changes":
                    positions.append(m["payload"]["data"]["position"])
                elif m["event"] == "system" and "resumed_from" in m["payload"]:
                    break
            assert len(positions) == n and positions == sorted(set(positions))
