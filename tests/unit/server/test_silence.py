"""The shared heartbeat timeout (relay/server/silence.py) over real aiohttp WebSockets.

Why: it replaced ``ws.receive(timeout=...)`` (a timer per socket per frame) with one sweep for
all sockets; what must not change is what a handler sees — ``TimeoutError`` after the timeout
of silence, the frame when one comes in time, and any other cancellation untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from relay.server.silence import SilenceWatch

Handler = Callable[[web.WebSocketResponse], Awaitable[None]]


@contextlib.asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await handler(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


async def test_a_silent_socket_times_out_and_a_talking_one_gets_its_frames() -> None:
    watch = SilenceWatch(0.4)
    outcomes: dict[str, Any] = {}

    async def handler(ws: web.WebSocketResponse) -> None:
        t0 = time.monotonic()
        got = []
        try:
            for _ in range(10):  # bounded
                msg = await watch.receive(ws)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                got.append(msg.data)
        except TimeoutError:
            outcomes[got[0] if got else "silent"] = ("timeout", time.monotonic() - t0, got)
            return
        outcomes[got[0]] = ("closed", time.monotonic() - t0, got)

    async with _server(handler) as url, aiohttp.ClientSession() as session:
        silent = await session.ws_connect(url)
        talker = await session.ws_connect(url)
        await talker.send_str("talker")
        for _ in range(4):  # each frame comes before the timeout: the wait starts again
            await asyncio.sleep(0.2)
            await talker.send_str("again")
        await talker.close()
        for _ in range(200):  # bounded: the silent one goes within timeout + interval
            if "silent" in outcomes:
                break
            await asyncio.sleep(0.02)
        await silent.close()
    kind, waited, _ = outcomes["silent"]
    assert kind == "timeout" and 0.4 <= waited < 0.4 + watch.interval + 0.3, outcomes
    kind, waited, got = outcomes["talker"]
    assert kind == "closed" and got == ["talker"] + ["again"] * 4 and waited >= 0.8, outcomes
    await asyncio.sleep(watch.interval * 2)
    assert len(watch) == 0 and watch._sweeper is None  # no socket waits: the sweep has ended


async def test_another_cancellation_is_not_taken_for_a_timeout() -> None:
    watch = SilenceWatch(30.0)
    seen: list[str] = []
    started = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def handler(ws: web.WebSocketResponse) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        started.set()
        try:
            await watch.receive(ws)
        except TimeoutError:
            seen.append("timeout")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async with _server(handler) as url, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url)
        await asyncio.wait_for(started.wait(), 5)
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
        await ws.close()
    assert seen == ["cancelled"] and len(watch) == 0


async def test_a_timeout_of_zero_never_times_out() -> None:
    watch = SilenceWatch(0.0)
    got: list[str] = []

    async def handler(ws: web.WebSocketResponse) -> None:
        msg = await watch.receive(ws)
        got.append(msg.data)

    async with _server(handler) as url, aiohttp.ClientSession() as session:
        ws = await session.ws_connect(url)
        await asyncio.sleep(0.3)
        await ws.send_str("late")
        await ws.close()
    assert got == ["late"] and watch._sweeper is None
