"""The heartbeat timeout of every socket, kept by one sweep instead of a timer per socket.

Why: ``ws.receive(timeout=...)`` enters an ``asyncio.timeout`` on every frame a socket reads,
and the ``Timeout`` with its timer handle lives as long as the socket waits, i.e. all the time
for an idle socket: ≈ 0.6 KiB per socket and most of the per-frame overhead of the read loop
(issue 16: 10,000 idle sockets).  Here a socket that waits is one entry in an ordered dict (its
handler task -> when it began waiting), and one task looks at the oldest entries a few times
per timeout.  A socket silent for longer than the timeout has its receive ended with
``TimeoutError``, exactly as before: its handler task is cancelled at its ``await`` and the
cancellation is taken back (``Task.uncancel``), which is how ``asyncio.timeout`` does it too.

The close comes between ``timeout`` and ``timeout + interval`` seconds of silence (interval:
an eighth of the timeout, at most one second), instead of at ``timeout`` to the millisecond.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

__all__ = ["SilenceWatch"]


class SilenceWatch:
    """Ends the receive of any socket that waited ``timeout`` seconds (``<= 0``: never)."""

    __slots__ = ("_expired", "_sweeper", "_waiting", "interval", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(1.0, timeout / 8)
        # handler task -> loop time its receive began; insertion order is that time's order,
        # since a task is removed when its receive ends and added again when the next begins
        self._waiting: dict[asyncio.Task[object], float] = {}
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
                due = []
                for task, since in self._waiting.items():
                    if since > deadline:
                        break  # the rest began later
                    due.append(task)
                for task in due:
                    del self._waiting[task]
                    self._expired.add(task)
                    task.cancel()
        finally:
            self._sweeper = None
