"""Recent database broadcasts per private topic, for ``config.broadcast.replay``.

Why in memory and bounded like this: Supabase keeps ``realtime.messages`` rows for 72 hours and
replays at most 25 of them per join.  This relay sends database broadcasts as transactional
logical messages and stores no table, so it keeps, per private topic, only the last
``REPLAY_LIMIT`` messages (more can never be asked for), for at most ``max_age`` seconds, and at
most ``max_bytes`` in all (the topics used longest ago are forgotten first).  After a restart
the relay's replication slot decodes its resume window again, and the messages in it are
recorded again, so a restart loses only what is older than that window.

A topic's history is *complete from* a point in time: the relay's start (or the oldest message
it re-read), or the newest message it had to forget for that topic.  A join that asks for
messages since before that point is told the replay may be incomplete, never left guessing.
Pure: no I/O, no clock of its own (callers pass milliseconds).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from relay.core.broadcast import Broadcast

__all__ = ["REPLAY_LIMIT", "BroadcastHistory", "Replay"]

REPLAY_LIMIT = 25  # Supabase's maximum for broadcast.replay.limit


@dataclass(slots=True)
class _Topic:
    entries: deque[tuple[int, Broadcast, int]] = field(default_factory=deque)  # (ts ms, msg, bytes)
    complete_from: int = 0  # ms: every message sent at or after this is held (or was aged out)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a join gets: the messages, oldest first, and whether anything may be missing."""

    messages: list[Broadcast]
    complete: bool
    complete_from: int


class BroadcastHistory:
    """The last ``REPLAY_LIMIT`` database broadcasts of each private topic."""

    def __init__(self, max_age: float = 72 * 3600.0, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_age_ms = int(max_age * 1000)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.started_ms: int | None = None
        # Topics dropped whole for the byte bound leave no record of their own: any topic not
        # held is complete only from after the newest message forgotten that way.
        self.forgotten_ms = 0
        self._topics: OrderedDict[str, _Topic] = OrderedDict()  # least recently written first

    def start(self, now_ms: int) -> None:
        """The relay (or its first stream) starts: history is complete from here on."""
        if self.started_ms is None:
            self.started_ms = now_ms

    def record(self, topic: str, ts_ms: int, msg: Broadcast) -> None:
        """Keep a database broadcast sent to the private ``topic`` at ``ts_ms``."""
        entry = self._topics.get(topic)
        if entry is None:
            # a message re-read after a restart is older than the start: complete from it on
            start = self.started_ms if self.started_ms is not None else ts_ms
            entry = self._topics[topic] = _Topic(complete_from=max(min(start, ts_ms), self.forgotten_ms))
        else:
            self._topics.move_to_end(topic)
        size = msg.size() + 64
        entry.entries.append((ts_ms, msg, size))
        self.bytes += size
        while len(entry.entries) > REPLAY_LIMIT:
            self._drop_oldest(entry)
        while self.bytes > self.max_bytes and self._topics:
            name, victim = next(iter(self._topics.items()))
            while victim.entries and self.bytes > self.max_bytes:
                self._drop_oldest(victim)
            if not victim.entries:
                self.forgotten_ms = max(self.forgotten_ms, victim.complete_from)
                del self._topics[name]

    def _drop_oldest(self, entry: _Topic) -> None:
        ts, _, size = entry.entries.popleft()
        self.bytes -= size
        # a request for messages sent at or before ts may now miss this one
        entry.complete_from = max(entry.complete_from, ts + 1)

    def since(self, topic: str, since_ms: int, limit: int, now_ms: int) -> Replay:
        """Messages sent to ``topic`` at or after ``since_ms``: the ``limit`` newest, oldest first."""
        limit = max(0, min(limit, REPLAY_LIMIT))
        floor = now_ms - self.max_age_ms
        entry = self._topics.get(topic)
        start = self.started_ms if self.started_ms is not None else now_ms
        if entry is None:
            complete_from = max(start, self.forgotten_ms)
            found: list[Broadcast] = []
        else:
            while entry.entries and entry.entries[0][0] < floor:  # aged out: as Supabase's 72 h
                _, _, size = entry.entries.popleft()
                self.bytes -= size
            complete_from = entry.complete_from
            found = [m for ts, m, _ in entry.entries if ts >= since_ms]
        # Complete when the newest ``limit`` are all there, or nothing after ``since`` was
        # forgotten (what is older than the age limit was never promised, as upstream's 72 h).
        complete = len(found) >= limit or max(since_ms, floor) >= complete_from
        found = found[-limit:] if limit else []
        return Replay(found, complete, complete_from)

    def stats(self) -> dict[str, int]:
        return {"topics": len(self._topics), "bytes": self.bytes}
