"""Coalesce changes into "this table changed" signals, at most once per interval per table.

Why: a dashboard that refetches a summary on every change would refetch hundreds of times a
second under load; it only needs to know *that* a table changed, promptly, and not more often
than it can redraw.  The first change of a quiet table fires at once (leading edge); further
changes within ``interval`` are counted and fire once when it has passed (trailing edge), so the
last change is never swallowed.  A resync fires a ``*.*`` signal with ``resync=True``: refetch
everything the channel shows.

:class:`Throttle` is the pure schedule (times passed in, unit-tested); :class:`TableChangeCoalescer`
puts it on the event loop and is what applications use.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from relay_client.types import Change, ResyncNeeded

__all__ = ["TableChangeCoalescer", "TableChanged", "Throttle"]

log = logging.getLogger("relay_client")

K = TypeVar("K", bound=Hashable)


class Throttle(Generic[K]):
    """At most one fire per key per ``interval``: leading edge, then trailing edge."""

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("interval must not be negative")
        self.interval = interval
        self.last_fire: dict[K, float] = {}
        self.pending: dict[K, float] = {}

    def hit(self, key: K, now: float) -> float:
        """An event for ``key`` at ``now``: the time its signal is due (``now``: fire at once)."""
        due = self.pending.get(key)
        if due is not None:
            return due
        last = self.last_fire.get(key)
        due = now if last is None or now - last >= self.interval else last + self.interval
        self.pending[key] = due
        return due

    def due(self, now: float) -> list[K]:
        """Keys to fire at ``now`` (they count as fired now); forgets long-quiet keys."""
        out = [k for k, t in self.pending.items() if t <= now]
        for k in out:
            del self.pending[k]
            self.last_fire[k] = now
        if len(self.last_fire) > 1024:  # bound memory: keys quiet for an interval need no history
            self.last_fire = {k: t for k, t in self.last_fire.items() if now - t < self.interval}
        return out

    def next_due(self) -> float | None:
        return min(self.pending.values(), default=None)


@dataclass(frozen=True, slots=True)
class TableChanged:
    """``schema.table`` changed ``changes`` times since the last signal (last at ``position``)."""

    schema: str
    table: str
    changes: int
    position: str | None
    resync: bool = False


TableChangedCallback = Callable[[TableChanged], Awaitable[None] | None]


class TableChangeCoalescer:
    """Pass as a change callback (and ``on_resync``); calls ``callback`` at most every ``interval`` s.

    Example: ``dash = TableChangeCoalescer(refresh, interval=0.5)``, then
    ``channel.on_postgres_changes("*", table="orders", callback=dash).on_resync(dash.resync)``.
    Async callbacks run as tasks (one at a time per signal, tracked); ``aclose()`` cancels the
    timer, fires what is pending (``flush=True``) and waits for them.
    """

    def __init__(self, callback: TableChangedCallback, interval: float = 0.5) -> None:
        self._callback = callback
        self._throttle: Throttle[tuple[str, str]] = Throttle(interval)
        self._counts: dict[tuple[str, str], int] = {}
        self._positions: dict[tuple[str, str], str | None] = {}
        self._resync: set[tuple[str, str]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    def __call__(self, change: Change) -> None:
        self._hit((change.schema, change.table), change.position, resync=False)

    def resync(self, event: ResyncNeeded) -> None:
        self._hit(("*", "*"), event.position, resync=True)

    def _hit(self, key: tuple[str, str], position: str | None, resync: bool) -> None:
        if self._closed:
            return
        self._counts[key] = self._counts.get(key, 0) + (0 if resync else 1)
        self._positions[key] = position
        if resync:
            self._resync.add(key)
        loop = asyncio.get_running_loop()
        due = self._throttle.hit(key, loop.time())
        if due <= loop.time():
            self._fire(loop.time())
        else:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        nxt = self._throttle.next_due()
        if nxt is None:
            return
        if self._timer is not None:
            if self._timer.when() <= nxt:
                return
            self._timer.cancel()
        self._timer = loop.call_at(nxt, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        self._fire(loop.time())
        self._arm(loop)

    def _fire(self, now: float) -> None:
        for key in self._throttle.due(now):
            self._emit(key)

    def _emit(self, key: tuple[str, str]) -> None:
        signal = TableChanged(
            key[0], key[1], self._counts.pop(key, 0), self._positions.pop(key, None), key in self._resync
        )
        self._resync.discard(key)
        try:
            result = self._callback(signal)
        except Exception:
            log.exception("table-changed callback failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("table-changed callback failed", exc_info=task.exception())

    async def aclose(self, flush: bool = True) -> None:
        """Stop: cancel the timer, fire what is pending (if ``flush``), await running callbacks."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if flush and not self._closed:
            for key in list(self._throttle.pending):
                self._throttle.pending.pop(key)
                self._emit(key)
        self._closed = True
        self._throttle.pending.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> TableChangeCoalescer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
