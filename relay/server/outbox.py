"""The outbox: sockets with frames queued by the current batch, written once per batch.

Why: a fan-out batch (one read from the replication stream, or one broadcast) may queue many
frames on the same socket; writing each as it is queued costs a system call per frame.  Queues
mark their socket here instead, and whoever ends the batch (the pipeline's ``batch_end``, a
broadcast, a replay step) calls :meth:`Outbox.flush`: one transport write per touched socket.
The feed and the topic hub both write through it, and neither knows the other.

The three functions at the end are the relay's only reach into aiohttp's internals (the
transport under a prepared WebSocket, and the protocol's flow control): prebuilt frames are
written straight to the transport, shared by every socket that receives them.  An aiohttp
upgrade that moves these breaks here and nowhere else.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol

__all__ = ["Flushable", "Outbox", "socket_transport", "wait_writable", "writing_paused"]


class Flushable(Protocol):
    """A socket's send queue: writes what it holds in one go (see Connection.flush)."""

    def flush(self) -> None: ...


class Outbox:
    """The set of sockets with queued, unwritten frames."""

    __slots__ = ("dirty", "flushes")

    def __init__(self) -> None:
        self.dirty: set[Flushable] = set()
        # sockets flushed, summed over batches (≈ transport writes): the fan-out bench divides
        # it by the changes to see how well batching amortises the per-socket write
        self.flushes = 0

    def mark(self, conn: Flushable) -> None:
        """``conn`` has frames queued by this batch."""
        self.dirty.add(conn)

    def flush(self) -> None:
        """End of a batch: one write per touched socket."""
        dirty, self.dirty = self.dirty, set()
        self.flushes += len(dirty)
        for conn in dirty:
            conn.flush()


def socket_transport(ws: web.WebSocketResponse) -> asyncio.Transport | None:
    """The transport under a prepared WebSocket (None before prepare or once it is gone)."""
    writer = ws._writer
    return writer.transport if writer is not None else None


def writing_paused(proto: BaseProtocol | None) -> bool:
    """True while the transport's buffer is over its high-water mark (asyncio flow control)."""
    return proto is not None and proto.writing_paused


async def wait_writable(proto: BaseProtocol) -> None:
    """Wait until flow control lets the socket write again."""
    await proto._drain_helper()
