"""Every node reads the change log and feeds its own server, exactly as the pipeline would.

Why the leader reads it too: one path for every node.  What a node's sockets receive is decided
by what the log holds, never by what a leader decoded but could not append; routing,
authorization, delivery, ``tx_end`` and resume stay the server's (the same
:class:`~relay.pipeline.ChangeSink` the single-process relay feeds).

Why a node serves resumes from its own replay log: it fills it from the log when it starts
(the whole stream *is* the cluster's window, trimmed to RELAY_RESUME_WINDOW), so a client can
resume on any node with the last position it got from any other.

Why gaps are checked entry by entry: each entry says which change preceded it in the log
(``p``).  Entries a reader never saw (trimmed under a slow reader, or a log that Redis lost
and a new leader started again) would otherwise be a silent gap; here they become the
``resync_needed`` every affected channel is told, the same answer as for a lost slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.core.changes import Commit, Lsn
from relay.core.position import commit_of, seq_before
from relay.core.sqltypes import TypeRegistry
from relay.core.stream import StreamIdentity
from relay.core.wal2json import Decoder
from relay.pipeline import ChangeSink, backoff_delay
from relay.postgres.catalog import Catalog
from relay.postgres.replication import SlotInfo

from .changelog import (
    CHANGE,
    COMMIT,
    MESSAGE,
    SLOT,
    ClusterKeys,
    LogEntry,
    Meta,
    decode_entry,
    decode_message_header,
    decode_slot,
)

__all__ = ["LogFollower"]

log = logging.getLogger("relay.cluster")

READ_COUNT = 500
BLOCK_MS = 1000
CATCH_UP_S = 30.0  # the longest a resume waits for this node to read the log's tail


class LogFollower:
    """Reads ``relay:{slot}:log`` from its start, then as it grows, into ``sink``."""

    def __init__(
        self, redis: Redis, keys: ClusterKeys, sink: ChangeSink, catalog: Catalog, *, max_backoff: float = 5.0
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.sink = sink
        self.catalog = catalog
        self.max_backoff = max_backoff
        self.types = TypeRegistry(numbers_as_text=True)
        self.decoder = Decoder(self.types)
        self.gen: str | None = None
        self.last_id = "0-0"  # the last stream entry read
        self.last_key = -1  # the last entry key applied (duplicates after a takeover are skipped)
        self.last_seq = -1  # the last row change read (``p`` of the next entry should equal it)
        self.stream: StreamIdentity | None = None
        self.started = False  # the first slot was handed to the sink (floors set)
        self.ready = asyncio.Event()
        self.redis_ok = False
        self.last_error: str | None = None
        self.entries = 0
        self.gaps = 0  # times the log lost entries this node had not read (clients resynced)
        self.log_length = 0
        self.wal_end = 0
        self._adopt_prev = False
        self._start_tail = (0, 0)
        self._progress = asyncio.Event()  # set after every batch read (caught_up waits on it)

    async def caught_up(self) -> None:
        """Until this node has read the log up to its tail as it is now (at most CATCH_UP_S).

        A client may resume here with a position another node, further along the log, gave it;
        judged against this node's own (older) head, the position would look like one from the
        future.  Bounded: with Redis unreachable the resume goes on with what this node has.
        """
        try:
            tail: Any = await self.redis.hget(self.keys.meta, "last_id")
        except (RedisError, OSError):
            return
        if not tail:
            return
        target = _id(bytes(tail).decode())
        deadline = time.monotonic() + CATCH_UP_S
        while _id(self.last_id) < target and time.monotonic() < deadline:
            self._progress.clear()
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self._progress.wait()
            except TimeoutError:
                return

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                await self._read(stop)
                attempt = 0
            except (RedisError, OSError) as exc:
                attempt += 1
                delay = backoff_delay(attempt, self.max_backoff)
                self.redis_ok = False
                self.last_error = f"redis: {exc}"
                log.warning("reading the change log failed (%s); retrying in %.1fs", exc, delay)
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _read(self, stop: asyncio.Event) -> None:
        next_len = 0.0
        while not stop.is_set():
            if self.last_id == "0-0" or time.monotonic() >= next_len:
                pipe = self.redis.pipeline(transaction=False)
                pipe.hgetall(self.keys.meta)
                pipe.xlen(self.keys.log)
                raw_meta, self.log_length = await pipe.execute()
                next_len = time.monotonic() + 1.0
                meta = Meta.parse(raw_meta)
                self.redis_ok = True
                self.last_error = None
                if meta is None or meta.gen != self.gen:
                    if not await self._switch(meta):
                        await _sleep(stop, 0.2)  # no log yet (no leader has started one)
                        continue
            resp: Any
            if self.last_id == "0-0":
                batch = await self.redis.xrange(self.keys.log, "-", "+", count=READ_COUNT)
                resp = [(self.keys.log, batch)] if batch else []
                if not batch:
                    self.last_id = "0"  # an empty log: read from its start once entries arrive
                    self._start_tail = (0, 0)  # nothing to catch up with
                    self._check_ready()
            else:
                resp = await self.redis.xread({self.keys.log: self.last_id}, count=READ_COUNT, block=BLOCK_MS)
            for _, entries in resp:
                if not await self._apply_batch(entries):
                    next_len = 0.0  # another generation's entries: read the meta again first

    async def _switch(self, meta: Meta | None) -> bool:
        """The log's generation is not the one this node reads: start, or recover from a loss."""
        if meta is None:
            if self.gen is not None:
                self._lost("the change log is gone from Redis (restarted without its data, or flushed)")
                self.gen = None
            return False
        if self.gen is not None:
            self._lost("the change log was replaced (Redis lost data and a leader started a new log)")
        elif not self.started:
            if meta.slot is None:
                return False  # the leader has not written its slot yet
            await self._start(meta)
        self.gen = meta.gen
        self.last_id = "0-0"
        return True

    async def _start(self, meta: Meta) -> None:
        """First contact: the floors come from the log itself (what it still holds)."""
        assert meta.slot is not None
        info, nat = decode_slot(meta.slot)
        first = await self.redis.xrange(self.keys.log, "-", "+", count=1)
        floor = decode_entry(first[0][1]).prev if first else meta.last_seq
        # Positions after ``floor`` are held; the live floor is the log's tail (a fresh join
        # does not receive the window).  Conservative at transaction granularity.
        confirmed = Lsn(commit_of(floor) + 1) if floor >= 0 else Lsn(0)
        current = Lsn(max(int(info.current), commit_of(meta.last_seq) + 1))
        await self._set_types(nat)
        self.stream = info.stream
        self.last_seq = floor
        self.wal_end = int(current)
        self.sink.slot(SlotInfo(False, confirmed, current, "", info.stream), True)
        self.started = True
        # Ready (for /health, /ready and start_relay) once the log is read as far as it reached
        # now: a node that is still reading the window is not yet one to send clients to.
        self._start_tail = _id(meta.last_id) if meta.last_id else (0, 0)
        self._check_ready()

    def _check_ready(self) -> None:
        if not self.ready.is_set() and self.started and _id(self.last_id) >= self._start_tail:
            self.ready.set()

    def _lost(self, why: str) -> None:
        """Entries this node never read are gone: every channel is told to resync."""
        self.gaps += 1
        log.error("%s: every subscriber on this node resyncs", why)
        # Everything up to what this node read was delivered; nothing after it can be promised.
        floor = Lsn(commit_of(self.last_seq) + 1) if self.last_seq >= 0 else Lsn(0)
        current = Lsn(max(self.wal_end, int(floor)))
        self.sink.slot(SlotInfo(True, floor, current, "log_lost", self.stream), False)
        self.sink.batch_end()
        self._adopt_prev = True  # the next entry's predecessor is where reading continues

    async def _set_types(self, numbers_as_text: bool) -> None:
        self.types.numbers_as_text = numbers_as_text
        self.types.update(await self.catalog.types())

    async def _apply_batch(self, entries: Any) -> bool:
        """Apply entries in order; False if one of another generation was met (not applied)."""
        sink = self.sink
        try:
            for entry_id, fields in entries:
                try:
                    e = decode_entry(fields)
                except ValueError as exc:
                    log.error("skipped an entry of the change log that is not ours (%s)", exc)
                    e = None
                if e is not None and e.gen != self.gen:
                    return False  # a new generation began under us: switch before reading on
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                if e is None:
                    continue
                self.entries += 1
                if e.prev > self.last_seq:
                    if not self._adopt_prev:
                        self._lost("the change log no longer holds entries this node had not read")
                    self.last_seq = e.prev
                self._adopt_prev = False
                if e.kind == SLOT:
                    await self._slot(e.header)
                    continue
                if e.key <= self.last_key and e.key != -1:
                    continue  # appended again by a new leader: already applied
                if e.key != -1:
                    self.last_key = e.key
                await self._apply(e, sink)
            return True
        finally:
            sink.batch_end()
            self._progress.set()
            self._check_ready()

    async def _apply(self, e: LogEntry, sink: ChangeSink) -> None:
        h = e.header
        if e.kind == CHANGE:
            seq = int(h["s"])
            self.last_seq = seq
            change = self.decoder.replay(e.raw, seq, str(h["ts"]))
            pending = sink.change(change)
            if pending is not None:
                await pending
        elif e.kind == COMMIT:
            sink.commit(Commit(Lsn(int(h["c"])), Lsn(int(h["e"])), str(h["ts"])))
        elif e.kind == MESSAGE:
            m: dict[str, Any] = h["m"]
            msg = decode_message_header(m)
            if msg is not None:
                sink.message(msg)

    async def _slot(self, h: dict[str, Any]) -> None:
        info, nat = decode_slot(h)
        if info.stream is not None and self.stream is not None and info.stream != self.stream:
            # Another database history: its keys and positions do not compare with the old one's
            # (the sink's on_slot tells every channel to resync and restarts the window).
            self.last_key = -1
            self.last_seq = seq_before(info.confirmed_flush)
        await self._set_types(nat)
        self.stream = info.stream
        self.wal_end = max(self.wal_end, int(info.current))
        self.sink.slot(info, False)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        pass


def _id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0
