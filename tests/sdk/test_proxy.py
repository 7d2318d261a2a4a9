"""The fault-injecting proxy does what the SDK tests rely on (against a loopback echo server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.tcp_proxy import FaultProxy


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _roundtrip(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes, timeout: float = 2
) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), timeout)


async def test_forwards_and_counts() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(r, w, b"hello") == b"hello"
        assert proxy.active == 1 and proxy.stats.accepted == 1
        assert proxy.stats.bytes_up == 5 and proxy.stats.bytes_down == 5
        w.close()
        assert await proxy.wait_idle(2)


async def test_drop_closes_with_eof_and_reset_with_rst() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _roundtrip(r, w, b"x")
        assert proxy.drop() == 1
        assert await asyncio.wait_for(r.read(), 2) == b""  # clean EOF
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _roundtrip(r, w, b"x")
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(r.read(), 2)
        w.close()
        assert (proxy.stats.dropped, proxy.stats.reset, proxy.stats.killed) == (1, 1, 2)
        assert await proxy.wait_idle(2)


async def test_blackhole_keeps_sockets_open_and_swallows_everything() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _roundtrip(r, w, b"x")
        assert proxy.blackhole() == 1
        with pytest.raises(TimeoutError):
            await _roundtrip(r, w, b"lost", timeout=0.3)
        assert proxy.active == 1 and not w.is_closing()  # half-open, not closed
        # while on, new connections are silenced too; after it, new ones work again
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(TimeoutError):
            await _roundtrip(r2, w2, b"lost", timeout=0.3)
        proxy.blackhole(False)
        with pytest.raises(TimeoutError):  # a blackholed connection stays dead
            await _roundtrip(r, w, b"still lost", timeout=0.3)
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _roundtrip(r3, w3, b"ok") == b"ok"
        for writer in (w, w2, w3):
            writer.close()
        assert await proxy.wait_idle(2)  # closing the client side is noticed even when silenced


async def test_stall_holds_traffic_until_released_and_delay_adds_latency() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall()
        w.write(b"held")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.3)
        proxy.stall(False)
        assert await asyncio.wait_for(r.readexactly(4), 2) == b"held"  # delivered, not lost
        proxy.delay(0.1)
        t0 = time.monotonic()
        await _roundtrip(r, w, b"slow")
        assert time.monotonic() - t0 >= 0.2  # 0.1 s each way
        proxy.delay(0)
        w.close()
        assert await proxy.wait_idle(2)


async def test_upstream_down_closes_the_client_side() -> None:
    async with echo_server() as port:
        pass  # the port is free again: nothing listens there
    async with FaultProxy(port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(r.read(), 2) == b""
        w.close()
        assert proxy.stats.upstream_failures == 1 and proxy.active == 0
