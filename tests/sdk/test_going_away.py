"""A relay shutting down (SIGTERM, close code 1001) is "going away": the SDK backs off, and says
online only once a relay answers on the new socket.

Why: the SDK used to treat 1001 like any lost connection — after a stable link the backoff was
reset, so it retried within ``[0, initial_backoff]``, straight into the still-open listener of
the relay that was shutting down, and reported ``online`` on the handshake alone; the socket
nobody served was noticed only by the heartbeat, up to ``hb_interval + hb_timeout`` later.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from aiohttp import web
from relay_client import RelayClient, Status

from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.sdk.helpers import insert_alerts, until, url
from tests.support.relay import SECRET, token
from tests.support.relay_process import log_tail, relay_env, spawn_relay, wait_streaming


@pytest.mark.pg
async def test_sigterm_is_going_away_with_backoff_and_no_false_online(pg_dsn: str, tmp_path: Path) -> None:
    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    port = free_port()
    env = relay_env(pg_dsn, port, SECRET, "going_away")
    log_path = tmp_path / "relay.log"
    initial = 1.0
    seen: list[tuple[float, Status]] = []
    client = RelayClient(
        url(port), token(), hb_interval=15, initial_backoff=initial, max_backoff=2, stable_after=0.5
    )
    client.on_status(lambda s: seen.append((time.monotonic(), s)))
    got: list[int] = []
    ch = client.channel("alerts").on_postgres_changes(
        "INSERT", table="alerts", callback=lambda c: got.append(int(c.record["id"]))
    )
    with log_path.open("wb") as logf:
        proc = spawn_relay(env, logf)
    proc2 = None
    try:
        await wait_streaming(port, proc, lambda: log_tail(log_path))
        await ch.subscribe(timeout=10)
        await asyncio.sleep(0.6)  # a stable connection: the old code reset its backoff here
        proc.send_signal(signal.SIGTERM)
        await until(lambda: not client.status.online, 5, "offline after SIGTERM")
        went = seen[-1]
        assert went[1].reason is not None and went[1].reason.startswith("going away"), went
        await asyncio.to_thread(proc.wait, 15)
        await until(lambda: len(seen) > seen.index(went) + 1, 10, "a reconnect attempt")
        after = seen[seen.index(went) + 1 :]
        assert after[0][0] - went[0] >= initial - 0.05, "reconnected at once after 1001"
        await asyncio.sleep(1.5)
        after = seen[seen.index(went) + 1 :]
        assert all(not s.online for _, s in after), [s for _, s in after]
        assert all("cannot connect" in (s.reason or "") for _, s in after), [s for _, s in after]
        with log_path.open("ab") as logf:  # a new relay on the same port: back online, resumed
            proc2 = spawn_relay(env, logf)
        await wait_streaming(port, proc2, lambda: log_tail(log_path))
        await client.wait_online(10)
        rows = await asyncio.to_thread(insert_alerts, pg_dsn, 2)
        await until(lambda: got[-2:] == rows, 15, "live rows after the restart")
    finally:
        await client.close()
        for p in (proc, proc2):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    await asyncio.to_thread(p.wait, 15)
                except Exception:
                    p.kill()


async def test_online_only_once_the_relay_answers() -> None:
    """An endpoint that accepts the WebSocket but never sends a frame is not "online".

    The endpoint stands in for a relay that completed a handshake it will not serve (what a
    shutting-down relay with an open listener did).  The link is given up after ``hb_timeout``
    — the first heartbeat goes out at once — not ``hb_interval + hb_timeout``.
    """
    accepted = 0

    async def silent(request: web.Request) -> web.WebSocketResponse:
        nonlocal accepted
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        accepted += 1
        async for _ in ws:  # read (so closes are processed) and never answer
            pass
        return ws

    app = web.Application()
    app.router.add_get("/realtime/v1/websocket", silent)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    seen: list[Status] = []
    client = RelayClient(url(port), token(), hb_interval=30, hb_timeout=0.5, initial_backoff=5, max_backoff=5)
    client.on_status(seen.append)
    try:
        started = time.monotonic()
        await client.connect(wait=False)
        await until(lambda: accepted >= 1, 5, "the handshake")
        await until(lambda: "no heartbeat reply" in (client.status.reason or ""), 5, "the link given up")
        assert time.monotonic() - started < 3, "waited for hb_interval before the first heartbeat"
        assert not any(s.online for s in seen), seen
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.pg
async def test_a_stopping_relay_refuses_new_sockets_before_saying_going_away(pg_dsn: str) -> None:
    """By the time a client reads 1001, the relay's listener is closed: a reconnect is refused."""
    import aiohttp

    from relay.config import Config
    from relay.service import start_relay

    await asyncio.to_thread(apply_migrations, pg_dsn)
    await asyncio.to_thread(apply_demo_schema, pg_dsn)
    cfg = Config(database_url=pg_dsn, jwt_secret=SECRET, port=free_port(), slot="going_away_listener")
    relay = await start_relay(cfg)
    ws_url = f"http://127.0.0.1:{cfg.port}/realtime/v1/websocket"
    stopping: asyncio.Task[None] | None = None
    async with aiohttp.ClientSession() as s:
        try:
            async with s.ws_connect(ws_url, params={"apikey": token()}) as ws:
                stopping = asyncio.create_task(relay.stop())
                msg = await ws.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001, msg
                with pytest.raises(aiohttp.ClientConnectorError):
                    async with s.ws_connect(ws_url, params={"apikey": token()}):
                        pass
        finally:
            await (stopping if stopping is not None else relay.stop())
