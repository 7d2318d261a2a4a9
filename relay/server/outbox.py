"""The outbox: sockets with frames queued by the current batch, written once per batch.

Why: a fan-out batch (one read from the replication stream, or one broadcast) may queue many
frames on the same socket; writing each as it is queued costs a system call per frame.  Queues
mark their socket here instead, and whoever ends the batch (the pipeline's ``batch_end``, a
broadcast, a replay step) calls :meth:`Outbox.flush`: one transport write per touched socket.
The feed and the topic hub both write through it, and neither knows the other.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Flushable", "Outbox"]


class Flushable(Protocol):
    """A socket's send queue: writes what it holds in one go (see Connection.flush)."""

    def flush(self) -> None: ...


class Outbox:
    """The set of sockets with queued, unwritten frames."""

    __slots__ = ("dirty",)

    def __init__(self) -> None:
        self.dirty: set[Flushable] = set()

    def mark(self, conn: Flushable) -> None:
        """``conn`` has frames queued by this batch."""
        self.dirty.add(conn)

    def flush(self) -> None:
        """End of a batch: one write per touched socket."""
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()
