"""The heartbeat timeout of every socket, kept by one sweep instead of a timer per socket.

Why: ``ws.receive(timeout=...)`` enters an ``asyncio.timeout`` on every frame a socket reads,
and the ``Timeout`` with its timer handle lives as long as the socket waits, i.e. all the time
for an idle socket: ≈ 0.6 KiB per socket and most of the per-frame overhead of the read loop
(issue 16: 10,000 idle sockets).  Here a socket that waits is one entry in an ordered dict (its
handler task -> when it began waiting), and one task looks at the oldest entries a few times
per timeout.  A socket silent for longer than the timeout has its receive ended with
``TimeoutError``, exactly as before: its handler task is cancelled at its ``await`` and the
cancellation is taken back (``Task.uncancel``), which is how ``asyncio.timeout`` does it too.

A socket the relay took from aiohttp (relay/server/websocket.py) has no task waiting in a
receive: it is an entry here from the end of one frame's handling to the next frame
(:meth:`SilenceWatch.waits`, :meth:`SilenceWatch.forget`), and the sweep calls its ``silent()``.

The close comes between ``timeout`` and ``timeout + interval`` seconds of silence (interval:
an eighth of the timeout, at most one second), instead of at ``timeout`` to the millisecond.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from aiohttp import web

__all__ = ["SilenceWatch", "Silent"]


class Silent(Protocol):
    """A socket that ends itself when told it was silent too long."""

    def silent(self) -> None: ...


class SilenceWatch:
    """Ends the receive of any socket that waited ``timeout`` seconds (``<= 0``: never)."""

    __slots__ = ("_expired", "_sweeper", "_waiting", "interval", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 8)
        # handler task (or socket) -> loop time its receive began; insertion order is that
        # time's order, since an entry is removed when its receive ends and added again when
        # the next begins
        self._waiting: dict[asyncio.Task[object] | Silent, float] = {}
        self._expired: set[asyncio.Task[object]] = set()  # cancelled by the sweep, not yet seen
        self._sweeper: asyncio.Task[None] | None = None

    async def receive(self, ws: web.WebSocketResponse) -> Any:
        """``ws.receive()``, raising ``TimeoutError`` after ``timeout`` seconds of silence."""
        task = asyncio.current_task()
        if self.timeout <= 0 or task is None:
            return await ws.receive()
        loop = asyncio.get_running_loop()
        self._waiting[task] = loop.time()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep(), name="socket silence sweep")
        try:
            return await ws.receive()
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:  # nobody else cancelled it: this was the timeout
                    raise TimeoutError from None
            raise
        finally:
            self._waiting.pop(task, None)

    def waits(self, sock: Silent) -> None:
        """``sock`` waits for a frame from now on (a socket of the relay's own)."""
        if self.timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        self._waiting.pop(sock, None)
        self._waiting[sock] = loop.time()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep(), name="socket silence sweep")

    def forget(self, sock: Silent) -> None:
        """``sock`` handles a frame, or is gone: no timeout until it waits again."""
        self._waiting.pop(sock, None)

    def stop(self) -> None:
        """Stop the sweep (server shutdown); sockets still waiting then never time out."""
        if self._sweeper is not None:
            self._sweeper.cancel()

    def __len__(self) -> int:
        """Sockets waiting in a receive right now."""
        return len(self._waiting)

    async def _sweep(self) -> None:
        """Cancel the receives older than the timeout; ends when no socket waits."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                await asyncio.sleep(self.interval)
                deadline = loop.time() - self.timeout
                due: list[asyncio.Task[object] | Silent] = []
                for task, since in self._waiting.items():
                    if since > deadline:
                        break  # the rest began later
                    due.append(task)
                for key in due:
                    del self._waiting[key]
                    if isinstance(key, asyncio.Task):
                        self._expired.add(key)
                        key.cancel()
                    else:
                        try:
                            key.silent()
                        except Exception:  # one socket's failure must not stop the sweep
                            logging.getLogger("relay.socket").exception("closing a silent socket")
        finally:
            self._sweeper = None
