"""Online/offline status: the current value, change callbacks, async iterators and waiters.

Why a status instead of exceptions: a service that streams changes should not crash when the
network blips; it wants to *know* (show "reconnecting…", alert after a while, pause writes).
The client reports every transition here; callers read ``client.status``, register a callback,
iterate ``client.status_changes()`` or ``await client.wait_online()``.

Overflow policy of the iterators: each keeps at most ``maxlen`` pending statuses and drops the
*oldest* when full, so a slow reader always ends with the latest status and never blocks the
client.  No I/O here: callbacks run synchronously on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum

from relay_client.errors import ClientClosedError

__all__ = ["ClientState", "Status", "StatusBoard", "StatusCallback"]

log = logging.getLogger("relay_client")


class ClientState(StrEnum):
    CONNECTING = "connecting"  # first connection attempt in progress
    ONLINE = "online"  # the WebSocket is open (channels (re)join right after)
    OFFLINE = "offline"  # the connection was lost or cannot be made; probing with backoff
    CLOSED = "closed"  # not started, closed by the application, or reconnection gave up


@dataclass(frozen=True, slots=True)
class Status:
    """A state, why it was entered (``reason``), when (wall clock) and the reconnect attempt."""

    state: ClientState
    reason: str | None = None
    since: float = 0.0
    attempt: int = 0

    @property
    def online(self) -> bool:
        return self.state is ClientState.ONLINE

    def __str__(self) -> str:
        return self.state.value + (f" ({self.reason})" if self.reason else "")


StatusCallback = Callable[[Status], object]


class _StatusStream:
    """One ``status_changes()`` iterator: a bounded drop-oldest buffer."""

    def __init__(self, board: StatusBoard, maxlen: int) -> None:
        self._board = board
        self.items: deque[Status] = deque(maxlen=maxlen)
        self.ready = asyncio.Event()
        self.ended = False

    def __aiter__(self) -> AsyncIterator[Status]:
        return self

    async def __anext__(self) -> Status:
        while not self.items:
            if self.ended:
                raise StopAsyncIteration
            self.ready.clear()
            await self.ready.wait()
        return self.items.popleft()

    async def aclose(self) -> None:
        self.ended = True
        self.ready.set()
        self._board.streams.discard(self)


class StatusBoard:
    """Holds the current :class:`Status` and tells everyone who asked when it changes."""

    def __init__(self, maxlen: int = 32) -> None:
        self.current = Status(ClientState.CLOSED, "not connected", time.time())
        self.callbacks: list[StatusCallback] = []
        self.streams: set[_StatusStream] = set()
        self._maxlen = maxlen
        self._changed = asyncio.Event()
        self.ended = False

    def set(self, state: ClientState, reason: str | None = None, attempt: int = 0) -> bool:
        """Enter ``state``; returns False (and tells nobody) if state and reason are unchanged."""
        cur = self.current
        if cur.state is state and cur.reason == reason:
            return False
        self.current = Status(state, reason, time.time(), attempt)
        for stream in self.streams:
            stream.items.append(self.current)
            stream.ready.set()
        self._changed.set()
        self._changed = asyncio.Event()
        for cb in list(self.callbacks):
            try:
                cb(self.current)
            except Exception:
                log.exception("status callback %r failed", cb)
        return True

    def subscribe(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback`` on every change; returns a function that unregisters it."""
        self.callbacks.append(callback)

        def remove() -> None:
            if callback in self.callbacks:
                self.callbacks.remove(callback)

        return remove

    def stream(self) -> _StatusStream:
        s = _StatusStream(self, self._maxlen)
        self.streams.add(s)
        return s

    async def wait_for(self, pred: Callable[[Status], bool], timeout: float | None) -> Status:  # noqa: ASYNC109
        """Until ``pred(status)`` holds; TimeoutError after ``timeout`` seconds (None: no limit)."""

        async def waiting() -> Status:
            while not pred(self.current):
                if self.ended:
                    raise ClientClosedError(str(self.current))
                await self._changed.wait()
            return self.current

        return await asyncio.wait_for(waiting(), timeout)

    def end(self) -> None:
        """The client closed: end every iterator (after what it holds) and forget callbacks."""
        self.ended = True
        for s in list(self.streams):
            s.ended = True
            s.ready.set()
        self.streams.clear()
        self.callbacks.clear()
        self._changed.set()
