"""What an idle joined socket costs the relay (issue 16: 10,000 of them, ≤ 16 KiB each).

Why as tests: the costs these pin down come back silently — a task per socket, a write per
frame of a join — and the bench that would show them (bench/idle_sockets.py) is not run in CI.
Each test is behaviour, not a timing: how many tasks, how many transport writes, and that the
paths which do need a sender task (compression, flow control) still deliver in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from relay.config import Config
from relay.postgres.catalog import Catalog
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.server.connection import Connection
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

BOOKINGS = {"event": "*", "schema": "public", "table": "bookings"}


def _insert_bookings(dsn: str, n: int) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            int(
                conn.execute(
                    "insert into bookings (branch_id, client_id, service, status, starts_at, ends_at, price) "
                    "select 1, (select id from clients order by id limit 1), 'haircut', 'pending', "
                    "now(), now() + interval '1 hour', 42.50 returning id"
                ).fetchall()[0][0]
            )
            for _ in range(n)
        ]


async def _joined(relay: Any, stack: contextlib.AsyncExitStack, n: int) -> list[PhoenixClient]:
    clients = []
    for k in range(n):
        c = await stack.enter_async_context(PhoenixClient.connect(relay, token(sub=f"user-{k}")))
        reply = await c.join("idle", [BOOKINGS])
        assert reply["payload"]["status"] == "ok", reply
        await c.recv_until(lambda m: m["event"] == "system")
        clients.append(c)
    return clients


def _connections(relay: Any) -> list[Connection]:
    return list(relay.server.connections)


async def test_an_idle_joined_socket_has_no_task_of_its_own_and_its_join_was_one_write(pg_dsn: str) -> None:
    """No task per socket at all once the relay took it from aiohttp (relay/server/websocket.py),
    and nothing of aiohttp's request is kept: no ``RequestHandler``, no request, no
    ``WebSocketResponse``, and aiohttp's server no longer counts the connections.  The heartbeat
    timeout is one sweep for all; the join reply and the ``system`` message left in one transport
    write (the upgrade response is its own)."""
    n = 12
    async with running_relay(pg_dsn) as relay, contextlib.AsyncExitStack() as stack:
        await asyncio.sleep(0.2)  # the relay's own background tasks have started
        before = set(asyncio.all_tasks())
        gc.collect()
        aiohttp_side = (RequestHandler, web.BaseRequest, web.WebSocketResponse)
        had = {id(o) for o in gc.get_objects() if isinstance(o, aiohttp_side)}
        clients = await _joined(relay, stack, n)
        await asyncio.sleep(0.05)  # aiohttp's request loop ends once the handler returned
        new = sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks() - before)  # type: ignore[union-attr]
        assert new == ["SilenceWatch._sweep"], new  # one heartbeat-timeout sweep for all sockets
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, aiohttp_side) and id(o) not in had]
        assert kept == [], kept
        assert relay.runner.server is not None and relay.runner.server.connections == []
        conns = _connections(relay)
        assert len(conns) == n and all(c.raw and c.own and c._sender is None for c in conns)
        # CPython 3.11 shares an instance dict's keys with its class only below 30 attributes:
        # one more and every Connection's __dict__ grows by 1.3 KiB (a third of the relay's share)
        assert all(len(vars(c)) < 30 for c in conns), sorted(vars(conns[0]))
        assert [c.writes for c in conns] == [1] * n  # reply + system message, one write
        assert [c.sent for c in conns] == [2] * n
        for c in clients:  # and every socket still answers, with no task waiting for its frames
            ref = await c.send("phoenix", "heartbeat", {})
            reply = await c.recv_until(lambda m: m["event"] == "phx_reply")
            assert reply["ref"] == ref and reply["payload"]["status"] == "ok"


async def test_sockets_without_prebuilt_frames_still_get_every_change_in_order(pg_dsn: str) -> None:
    """With compression allowed, frames go through aiohttp one by one: the sender task starts
    when frames are queued and ends once they are written; the order is the commit order."""
    async with running_relay(pg_dsn, compression=True) as relay, contextlib.AsyncExitStack() as stack:
        (c,) = await _joined(relay, stack, 1)
        (conn,) = _connections(relay)
        assert not conn.raw
        ids = await asyncio.to_thread(_insert_bookings, pg_dsn, 5)
        got = []
        for _ in ids:
            m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            got.append(m["payload"]["data"]["record"]["id"])
        assert got == ids
        for _ in range(100):  # bounded: the task ends right after its last write
            if conn._sender is None:
                break
            await asyncio.sleep(0.01)
        assert conn._sender is None and not conn.queue
        # and it starts again for the next frame
        (later,) = await asyncio.to_thread(_insert_bookings, pg_dsn, 1)
        m = await c.recv_until(lambda m: m["event"] == "postgres_changes")
        assert m["payload"]["data"]["record"]["id"] == later


class _CountingCatalog(Catalog):
    """The real catalog, counting the queries it sends (to see joins share them)."""

    def __init__(self, dsn: str, ttl: float) -> None:
        super().__init__(dsn, ttl=ttl)
        self.fetches = 0

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        self.fetches += 1
        return await super()._fetch(query, *args)


async def test_a_burst_of_joins_to_one_table_costs_one_catalog_query_even_when_the_entry_expired(
    pg_dsn: str,
) -> None:
    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    publication = Config(database_url=pg_dsn, jwt_secret="s" * 32).publication
    catalog = _CountingCatalog(pg_dsn, ttl=0.3)
    await catalog.open()
    try:
        for burst in range(2):  # the first fills the cache, the second finds it expired
            shapes = await asyncio.gather(
                *(catalog.published_table(publication, "public", "bookings") for _ in range(20))
            )
            assert catalog.fetches == burst + 1
            first = shapes[0]
            assert first is not None and "id" in first.columns and all(s == first for s in shapes)
            await asyncio.sleep(0.35)
        # a join that goes away while waiting does not take the answer from the others
        waiters = [
            asyncio.create_task(catalog.published_table(publication, "public", "bookings")) for _ in range(3)
        ]
        await asyncio.sleep(0)
        waiters[0].cancel()
        done = await asyncio.gather(*waiters, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        assert done[1] == done[2] == shapes[0] and catalog.fetches == 3
        assert not catalog._inflight
    finally:
        await catalog.close()
