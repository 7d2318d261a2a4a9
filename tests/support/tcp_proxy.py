"""A loopback TCP proxy that breaks connections on command: drop, reset, blackhole, stall, delay.

Why a proxy and not mocks: the client SDK's promises (dead links noticed within two heartbeat
intervals, every change exactly once across disconnects) are about real sockets, real kernels
and a real relay.  The proxy sits between them and injects the failures networks produce:

- ``drop()``: close both sides (FIN), as when a peer or a load balancer closes;
- ``reset()``: abort both sides with RST (``SO_LINGER`` 0), as a crashed NAT or firewall does;
- ``blackhole()``: keep both sockets open but silently discard everything, forever, in both
  directions (a half-open connection); while it is on, new connections are blackholed too;
  with ``half_open=True`` a close is discarded too (the other side never learns);
- ``stall()``: keep both sockets open and hold everything until ``stall(False)`` (a long pause);
- ``delay(seconds)``: add latency to every chunk forwarded from now on.

Every connection is a :class:`Pair` with its own tasks; counters say how many were accepted,
are open now and were killed by each fault, so a test can check it forced what it meant to
and that nothing leaked (``active`` drops to 0 once the client closes).  Everything binds
127.0.0.1 only, every wait is bounded, and ``stop()`` ends every task the proxy started.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["FaultProxy", "ProxyStats"]

CHUNK = 65536


@dataclass
class ProxyStats:
    accepted: int = 0
    upstream_failures: int = 0  # the upstream refused (relay down): client side closed at once
    dropped: int = 0
    reset: int = 0
    blackholed: int = 0
    stalled: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client

    @property
    def killed(self) -> int:
        """Connections ended (or silenced for good) by a fault."""
        return self.dropped + self.reset + self.blackholed


class _Direction:
    """One direction of a pair: a reader task fills a queue, a writer task forwards it."""

    def __init__(self, pair: Pair, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        self.pair = pair
        self.src = src
        self.dst = dst
        self.up = up
        self.queue: deque[tuple[float, bytes]] = deque()
        self.ready = asyncio.Event()

    async def read(self) -> None:
        proxy = self.pair.proxy
        try:
            while True:
                data = await self.src.read(CHUNK)
                if not data:
                    break
                if self.pair.silenced:
                    continue  # blackholed: swallowed
                self.queue.append((time.monotonic() + proxy.latency, data))
                self.ready.set()
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.pair.half_open:  # half-open: the close is lost like everything else
                self.pair.finish()

    async def write(self) -> None:
        proxy = self.pair.proxy
        try:
            while True:
                while not self.queue:
                    self.ready.clear()
                    await self.ready.wait()
                await self.pair.flowing.wait()
                if self.pair.silenced:
                    self.queue.clear()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self.queue.popleft()
                self.dst.write(data)
                if self.up:
                    proxy.stats.bytes_up += len(data)
                else:
                    proxy.stats.bytes_down += len(data)
                await self.dst.drain()
        except (ConnectionError, OSError):
            self.pair.finish()


class Pair:
    """A proxied connection: client socket, upstream socket, and the four tasks between them."""

    def __init__(
        self,
        proxy: FaultProxy,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client = c_writer
        self.upstream = u_writer
        self.silenced = proxy.blackholing
        self.half_open = proxy.blackholing and proxy.half_open
        self.flowing = asyncio.Event()
        if not proxy.stalling:
            self.flowing.set()
        self.done = asyncio.Event()
        self._closed = False
        self.tasks: list[asyncio.Task[None]] = []
        for d in (_Direction(self, c_reader, u_writer, True), _Direction(self, u_reader, c_writer, False)):
            self.tasks.append(asyncio.create_task(d.read(), name="proxy-read"))
            self.tasks.append(asyncio.create_task(d.write(), name="proxy-write"))

    def finish(self, rst: bool = False) -> None:
        """Close both sockets (RST when ``rst``) and stop the tasks; idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in (self.client, self.upstream):
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
            else:
                w.close()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        self.proxy.pairs.discard(self)
        self.done.set()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for w in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)


class FaultProxy:
    """``async with FaultProxy(upstream_port) as proxy:`` then connect to ``proxy.port``."""

    def __init__(self, upstream_port: int, port: int = 0, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.stats = ProxyStats()
        self.pairs: set[Pair] = set()
        self.latency = 0.0
        self.blackholing = False
        self.half_open = False
        self.stalling = False
        self._server: asyncio.Server | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        pairs = list(self.pairs)
        for pair in pairs:
            pair.finish()
        for pair in pairs:
            await pair.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def active(self) -> int:
        """Connections open now (both sockets)."""
        return len(self.pairs)

    async def wait_idle(self, timeout: float = 5.0) -> bool:
        """Until no connection is open (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while self.pairs and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.pairs

    # -- faults -----------------------------------------------------------------------------
    def drop(self) -> int:
        """Close every open connection on both sides (FIN); returns how many."""
        return self._kill(rst=False)

    def reset(self) -> int:
        """Abort every open connection on both sides with RST; returns how many."""
        return self._kill(rst=True)

    def _kill(self, rst: bool) -> int:
        victims = [p for p in self.pairs if not p.silenced]
        for pair in victims:
            pair.finish(rst=rst)
        if rst:
            self.stats.reset += len(victims)
        else:
            self.stats.dropped += len(victims)
        return len(victims)

    def blackhole(self, on: bool = True, half_open: bool = False) -> int:
        """Silence every open connection for good; while ``on``, new ones are silenced too.

        ``half_open``: closes are swallowed as well (a vanished peer's FIN never arrives), so
        the other side keeps its socket until :meth:`stop`.
        """
        self.blackholing = on
        self.half_open = on and half_open
        if not on:
            return 0
        victims = [p for p in self.pairs if not p.silenced]
        for pair in victims:
            pair.silenced = True
            pair.half_open = half_open
            pair.flowing.set()  # writers wake up and discard what they hold
        self.stats.blackholed += len(victims)
        return len(victims)

    def stall(self, on: bool = True) -> int:
        """Hold all traffic of open (and, while ``on``, new) connections until ``stall(False)``."""
        self.stalling = on
        for pair in self.pairs:
            if on:
                pair.flowing.clear()
            else:
                pair.flowing.set()
        if on:
            self.stats.stalled += len(self.pairs)
        return len(self.pairs)

    def delay(self, seconds: float) -> None:
        """Latency added to every chunk forwarded from now on (0 turns it off)."""
        self.latency = max(0.0, seconds)

    # -- accepting --------------------------------------------------------------------------
    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        try:
            u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5.0)
        except (OSError, TimeoutError):
            self.stats.upstream_failures += 1
            c_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c_writer.wait_closed(), 1.0)
            return
        pair = Pair(self, c_reader, c_writer, u_reader, u_writer)
        self.pairs.add(pair)
        await pair.done.wait()
        await pair.wait_closed()
