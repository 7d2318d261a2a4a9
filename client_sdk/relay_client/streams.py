"""``async for change in channel.changes()``: a bounded buffer between the socket and the consumer.

Overflow policy — backpressure, never loss: when a consumer's buffer is full the socket reader
*waits* for room.  The relay then queues frames for this socket and, past its own bound, closes
it as a slow consumer (code 1013); the client reconnects and resumes from the last change it
put in a buffer, so nothing is dropped or repeated and memory stays bounded on both sides.  The
price: one stalled consumer pauses every channel of its client (they share one socket).

Broadcast and presence streams (``broadcasts()``, ``presence_events()``) use the other policy,
drop-oldest (:meth:`Buffer.offer`): those messages are ephemeral (the relay never replays them),
so a slow reader of them must not hold back change delivery or get the socket dropped.

Why a finalizer: a consumer that ``break``s out of ``async for`` (or drops the iterator) must not
leave a full buffer blocking the reader forever.  The user-facing :class:`ChangeStream` owns a
:class:`Buffer` the channel holds; when the stream is garbage, or ``aclose()`` d, the buffer
closes and later puts are discarded.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, Self, TypeVar

__all__ = ["Buffer", "ChangeStream"]

T = TypeVar("T")


class Buffer(Generic[T]):
    """Bounded FIFO with an awaiting ``put`` (backpressure) and a terminal ``close``."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.items: deque[T] = deque()
        self.closed = False
        self.error: BaseException | None = None
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self.items)

    async def put(self, item: T) -> bool:
        """Append, waiting while full; False (item discarded) once the buffer is closed."""
        while not self.closed and len(self.items) >= self.maxsize:
            self._writable.clear()
            await self._writable.wait()
        if self.closed:
            return False
        self.items.append(item)
        self._readable.set()
        return True

    def offer(self, item: T) -> bool:
        """Append without waiting, dropping the oldest item when full; True if one was dropped.

        The policy of broadcast and presence streams: they are ephemeral, so a slow consumer
        loses the oldest rather than pausing the socket reader (and every change stream).
        """
        if self.closed:
            return False
        dropped = len(self.items) >= self.maxsize
        if dropped:
            self.items.popleft()
        self.items.append(item)
        self._readable.set()
        return dropped

    async def get(self) -> T:
        """Next item; after ``close`` the remaining items, then StopAsyncIteration (or the error)."""
        while not self.items:
            if self.closed:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._readable.clear()
            await self._readable.wait()
        item = self.items.popleft()
        self._writable.set()
        return item

    def close(self, error: BaseException | None = None, discard: bool = False) -> None:
        """No more items; waiting readers and writers wake.  ``discard`` drops what is queued."""
        self.closed = True
        if error is not None and self.error is None:
            self.error = error
        if discard:
            self.items.clear()
        self._readable.set()
        self._writable.set()


class ChangeStream(AsyncIterator[T]):
    """An async iterator over one buffer; also an async context manager that closes it."""

    def __init__(self, buffer: Buffer[T]) -> None:
        self._buffer = buffer
        # The buffer is what the channel (and a blocked put) references, not this object, so
        # dropping the stream collects it and this finalizer unblocks the reader.
        self._finalizer = weakref.finalize(self, buffer.close, None, True)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self._buffer.get()

    def __len__(self) -> int:
        """Items waiting to be consumed."""
        return len(self._buffer)

    async def aclose(self) -> None:
        """Stop receiving: what is queued is dropped and the reader is never blocked by us again."""
        self._finalizer()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
