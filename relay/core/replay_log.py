"""The replay log: the recent changes a reconnecting client can resume from.

Why it exists: a dashboard that loses its socket for a few seconds must not silently miss what
was committed meanwhile.  The relay keeps the last changes (bounded by age and by bytes) and a
client that rejoins with its last position gets everything after it, or an explicit "resync
needed" when the position is older than what is kept.

Why it survives a relay crash without a disk of its own: the relay confirms to the replication
slot only up to the oldest change still held here (:meth:`ReplayLog.hold_lsn`), so after a
restart Postgres decodes the window again and the log is refilled.  The window therefore also
bounds how much WAL the slot holds back.

Why raw wal2json bytes: they are the most compact form (a decoded row is several times larger in
Python objects) and byte counting is then honest; resuming clients pay a re-decode, live ones
nothing.

Pure: no I/O, time comes from a clock function, so it is unit-tested without Postgres.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable
from typing import Final

from relay.core.changes import Lsn, commit_epoch, format_position
from relay.core.position import commit_of

__all__ = ["ARRIVED", "ENTRY_OVERHEAD", "RAW", "SEQ", "TIMESTAMP", "Entry", "ReplayLog"]

# Python's per-entry cost besides the payload bytes (tuple, float, int and bytes headers, list
# slot), so that ``max_bytes`` approximates memory rather than just payload.
ENTRY_OVERHEAD = 160


# One retained change: (position, arrival time, commit timestamp text, wal2json bytes).  A plain
# tuple of atomic values, not a NamedTuple: the garbage collector stops tracking such tuples, so
# a window of many thousands of changes adds nothing to collection pauses (a NamedTuple stays
# tracked and made every full collection walk the whole window: p99 latency spikes).
Entry = tuple[int, float, str, bytes]
SEQ: Final = 0
ARRIVED: Final = 1
TIMESTAMP: Final = 2
RAW: Final = 3


class ReplayLog:
    """Recent changes in position order, evicted oldest-first by age and total size.

    ``retained_from`` is the promise: every change with a position greater than it is either
    held here or not decoded yet.  A resume from an older position cannot be served.
    """

    def __init__(
        self,
        window_s: float = 300.0,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.wall = wall
        self._ts_text = ""
        self._ts_epoch: float | None = None
        self._floor_at = clock()  # when ``retained_from`` last moved (age of the promise)
        self._entries: list[Entry] = []
        self._start = 0  # entries before this index are evicted (compacted lazily)
        self.bytes = 0
        self.retained_from = -1
        self.head = -1  # position of the newest change seen (retained or not)
        self.committed = Lsn(0)  # commit LSN of the newest transaction seen to its end
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries) - self._start

    # -- writing --------------------------------------------------------------------------
    def append(self, seq: int, timestamp: str, raw: bytes) -> None:
        """Record a change as it is fanned out (positions only ever grow)."""
        if seq <= self.head:
            return  # replayed by a restarted stream: already held (or already evicted)
        self.head = seq
        if self.max_bytes <= 0 or self.window_s <= 0:
            self.retained_from = seq  # retention disabled: only live delivery
            return
        self._entries.append((seq, self._arrival(timestamp), timestamp, raw))
        self.bytes += len(raw) + ENTRY_OVERHEAD
        if self.bytes > self.max_bytes:
            self._evict_while(lambda e: self.bytes > self.max_bytes)

    def _arrival(self, timestamp: str) -> float:
        """The change's age on the monotonic clock, from its commit time.

        Aging by commit time rather than by when this process decoded it keeps the window
        bounded across restarts: a restarted relay decodes the window again, and those changes
        must not count as new.  (Parsed once per transaction: its changes share the text.)
        """
        if timestamp != self._ts_text:
            self._ts_text = timestamp
            self._ts_epoch = commit_epoch(timestamp)
        now = self.clock()
        if self._ts_epoch is None:
            return now
        return now - max(0.0, self.wall() - self._ts_epoch)

    def commit(self, lsn: Lsn) -> None:
        """The transaction committing at ``lsn`` has been seen to its end."""
        if lsn > self.committed:
            self.committed = lsn

    def evict(self) -> int:
        """Drop changes older than the window; returns how many were dropped."""
        if not len(self):
            return 0
        oldest = self.clock() - self.window_s
        return self._evict_while(lambda e: e[ARRIVED] < oldest)

    def reset(self, retained_from: int) -> None:
        """Forget everything up to ``retained_from`` (the slot was lost or recreated)."""
        self._evict_while(lambda e: e[SEQ] <= retained_from)
        if retained_from > self.retained_from:
            self.retained_from = retained_from
            self._floor_at = self.clock()
        if retained_from > self.head:
            self.head = retained_from

    def restart(self, retained_from: int) -> None:
        """Forget everything and start over at ``retained_from`` (another stream: failover,
        restore, new cluster), even if that is lower: positions of different streams do not
        compare, so nothing held or promised before means anything after."""
        self._evict_while(lambda e: True)
        self.retained_from = self.head = retained_from
        self.committed = Lsn(0)
        self._floor_at = self.clock()

    def _evict_while(self, cond: Callable[[Entry], bool]) -> int:
        entries = self._entries
        i = self._start
        n = len(entries)
        dropped = 0
        while i < n and cond(entries[i]):
            e = entries[i]
            self.bytes -= len(e[RAW]) + ENTRY_OVERHEAD
            self.retained_from = e[SEQ]
            self._floor_at = e[ARRIVED]
            i += 1
            dropped += 1
        self._start = i
        self.evicted += dropped
        if i == n:
            entries.clear()
            self._start = 0
        elif i >= 1024 or i * 2 > n:
            # Evicted entries still referenced by the list would keep their bytes alive: with a
            # lazier rule the list held up to twice ``max_bytes``.  Moving the pointers down is
            # cheap next to that.
            del entries[:i]
            self._start = 0
        return dropped

    # -- reading --------------------------------------------------------------------------
    def covers(self, seq: int) -> bool:
        """Whether a client that processed ``seq`` can be served everything after it."""
        return seq >= self.retained_from

    def after(self, seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` retained changes with a position greater than ``seq``, in order."""
        entries = self._entries
        i = bisect_right(entries, seq, lo=self._start, key=_seq)
        return entries[i : i + limit]

    def hold_lsn(self) -> Lsn | None:
        """The LSN the slot must not be confirmed past, so a restart can keep the promise.

        That is the transaction of ``retained_from`` (the last change let go, or the floor the
        log started with): after a restart Postgres decodes from there, so every position the
        log covered before the crash is covered again, including positions given to clients
        that have not received a change yet.  Once the window is empty and its floor is older
        than the window, nothing is held: the slot follows the stream (and keeps advancing
        when only unpublished tables are written).
        """
        if self.window_s <= 0 or self.max_bytes <= 0:
            return None
        if not len(self) and self.clock() - self._floor_at >= self.window_s:
            return None
        if self.retained_from < 0:
            return Lsn(commit_of(self._entries[self._start][SEQ])) if len(self) else None
        return Lsn(commit_of(self.retained_from))

    def stats(self) -> dict[str, object]:
        """For /health: what a resume can reach right now."""
        oldest = self._entries[self._start] if len(self) else None
        return {
            "changes": len(self),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "window_s": self.window_s,
            "oldest_age_s": round(self.clock() - oldest[ARRIVED], 1) if oldest is not None else None,
            "retained_from": format_position(self.retained_from),
            "head": format_position(self.head),
            "evicted": self.evicted,
        }


def _seq(e: Entry) -> int:
    return e[SEQ]
