"""The cluster's change log: one Redis Stream per slot, written by the capture leader only.

Why a Redis Stream: it is ordered, every node can read it from any point (``XREAD``/``XRANGE``),
it trims itself by age (``MINID``) and length (``MAXLEN``), and it is the one copy of the resume
window every node serves resumes from.  What goes in is what the pipeline hands its sink, in
stream order: each row change as its wal2json bytes (a follower decodes them again at their
position, exactly as the replay log does), transaction ends, relay messages and slot starts.

Why every append goes through one Lua script (:data:`APPEND`): Redis runs a script atomically,
so "am I still the leader (lease token), is this still the log I was extending (generation and
last entry id), then append and record the new tail" is one step.  A deposed leader (paused,
partitioned, its lease expired and taken) gets ``fenced`` and writes nothing; a log that lost
its tail (Redis restarted without the data) answers ``lost`` instead of silently continuing.

Every entry carries ``g`` (the log's generation: a random id made when the log is created, so a
wiped or replaced log is noticed), ``p`` (the position of the last row change before it in the
log, so a reader sees a gap as ``p`` beyond what it read) and, except slot entries, ``k`` (the
entry's key: its transaction's commit LSN and its ordinal in that transaction), which orders the
entries and lets a new leader and the readers skip what an old leader already appended.

The codec below is pure (no I/O) and unit-tested; :class:`LogSink` is the leader's
:class:`~relay.pipeline.ChangeSink` that appends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from relay.core.changes import Commit, Lsn, RowChange
from relay.core.position import pack, seq_before
from relay.core.relay_messages import (
    DatabaseBroadcast,
    PolicyChanged,
    RelayMessage,
    SnapshotFence,
    TopicPolicyChanged,
)
from relay.core.stream import StreamIdentity
from relay.pipeline import PipelineStats, backoff_delay
from relay.postgres.replication import SlotInfo

__all__ = [
    "APPEND",
    "NEW_GENERATION",
    "ClusterKeys",
    "LogEntry",
    "LogSink",
    "Meta",
    "decode_entry",
    "decode_slot",
    "encode_slot",
    "entry_key",
]

log = logging.getLogger("relay.cluster")

CHANGE: Final = "c"
COMMIT: Final = "x"
MESSAGE: Final = "m"
SLOT: Final = "s"

#: Entries the leader buffers before the pipeline waits for Redis (backpressure).
MAX_PENDING: Final = 5000
#: Entries per append script call (one round trip).
BATCH: Final = 500
#: The log keeps at least this long, whatever RELAY_RESUME_WINDOW says: a follower that is a
#: few seconds behind must find its next entry still there (else it resyncs its clients).
MIN_RETENTION_S: Final = 30.0


@dataclass(frozen=True)
class ClusterKeys:
    """The Redis keys of one relay cluster: ``relay:{<slot>}:…`` (one hash slot on Redis Cluster)."""

    slot: str

    def key(self, name: str) -> str:
        return f"relay:{{{self.slot}}}:{name}"

    @property
    def log(self) -> str:
        return self.key("log")

    @property
    def meta(self) -> str:
        return self.key("meta")

    @property
    def lease(self) -> str:
        return self.key("leader")

    @property
    def epoch(self) -> str:
        return self.key("epoch")


# KEYS: lease, stream, meta.  ARGV: token, generation, expected last id, minid, maxlen,
# last_k, last_seq, last_commit, last_end, slot json ("" = unchanged), then (header, raw) pairs.
APPEND: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'fenced', ''} end
local gen = redis.call('HGET', KEYS[3], 'gen')
if gen ~= ARGV[2] then return {'lost', gen or ''} end
local last = redis.call('HGET', KEYS[3], 'last_id') or ''
if last ~= ARGV[3] then return {'lost', last} end
local id = last
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'h', ARGV[i])
  else
    id = redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'h', ARGV[i], 'r', ARGV[i + 1])
  end
end
if #ARGV >= 11 then redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[5]) end
redis.call('HSET', KEYS[3], 'last_id', id, 'last_k', ARGV[6], 'last_seq', ARGV[7],
           'last_commit', ARGV[8], 'last_end', ARGV[9])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[3], 'slot', ARGV[10]) end
return {'ok', id}
"""

# KEYS: lease, stream, meta.  ARGV: token, new generation, floor seq, floor end LSN.
# A new log: the old one (if any) is gone or cannot be trusted to hold what the slot confirmed.
NEW_GENERATION: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[3], 'gen', ARGV[2], 'last_id', '', 'last_k', '-1', 'last_seq', ARGV[3],
           'last_commit', '0', 'last_end', ARGV[4], 'floor_seq', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Meta:
    """The log's bookkeeping hash: generation and the tail the last append left."""

    gen: str
    last_id: str
    last_k: int
    last_seq: int
    last_commit: int
    last_end: int
    slot: dict[str, Any] | None

    @classmethod
    def parse(cls, raw: Any) -> Meta | None:
        """None for a missing (or half-written) hash: no log yet, or Redis lost it."""
        if not raw or b"gen" not in raw:
            return None

        def num(name: bytes, default: int) -> int:
            v = raw.get(name)
            return int(v) if v else default

        slot_raw = raw.get(b"slot")
        return cls(
            gen=raw[b"gen"].decode(),
            last_id=(raw.get(b"last_id") or b"").decode(),
            last_k=num(b"last_k", -1),
            last_seq=num(b"last_seq", -1),
            last_commit=num(b"last_commit", 0),
            last_end=num(b"last_end", 0),
            slot=orjson.loads(slot_raw) if slot_raw else None,
        )


def entry_key(commit_lsn: int, ordinal: int) -> int:
    """An entry's key: its transaction's commit LSN, then its ordinal within the transaction."""
    return pack(commit_lsn, ordinal)


def encode_slot(info: SlotInfo, numbers_as_text: bool) -> dict[str, Any]:
    """A slot start as JSON-ready data (what a follower needs: floors, identity, number format)."""
    return {
        "created": info.created,
        "confirmed": int(info.confirmed_flush),
        "current": int(info.current),
        "reason": info.reason,
        "stream": None if info.stream is None else info.stream.as_dict(),
        "nat": numbers_as_text,
    }


def decode_slot(data: dict[str, Any]) -> tuple[SlotInfo, bool]:
    """:func:`encode_slot` reversed: the slot info and whether numbers arrive as text."""
    s = data.get("stream")
    stream = (
        StreamIdentity(
            str(s["system_identifier"]), int(s["timeline"]), int(s["database_oid"]), str(s["slot"])
        )
        if isinstance(s, dict)
        else None
    )
    info = SlotInfo(
        bool(data["created"]),
        Lsn(int(data["confirmed"])),
        Lsn(int(data["current"])),
        str(data["reason"]),
        stream,
    )
    return info, bool(data.get("nat", False))


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One decoded log entry.  ``kind``: c(hange), (commit) x, m(essage), s(lot)."""

    kind: str
    gen: str
    prev: int  # position of the last row change before this entry
    key: int  # entry_key (-1 for slot entries)
    header: dict[str, Any]
    raw: bytes = b""


def decode_entry(fields: Any) -> LogEntry:
    """A stream entry's fields as a :class:`LogEntry` (``ValueError`` if it is not one of ours)."""
    try:
        h = orjson.loads(fields[b"h"])
        return LogEntry(str(h["t"]), str(h["g"]), int(h["p"]), int(h.get("k", -1)), h, fields.get(b"r", b""))
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a change log entry: {exc!r}") from exc


def message_header(msg: RelayMessage) -> dict[str, Any] | None:
    """A relay message as JSON-ready data; None for one followers do not need."""
    if type(msg) is DatabaseBroadcast:
        return {"op": "broadcast", "body": msg.body, "c": msg.commit_lsn}
    if type(msg) is PolicyChanged:
        return {"op": "policy"}
    if type(msg) is TopicPolicyChanged:
        return {"op": "topic_policy", "xid": msg.xid}
    if type(msg) is SnapshotFence:  # a node waits for its snapshot's fence in the log it reads
        return {"op": "snapshot_fence", "id": msg.id}
    return None


def decode_message_header(m: dict[str, Any]) -> RelayMessage | None:
    """:func:`message_header` reversed."""
    op = m.get("op")
    if op == "broadcast":
        return DatabaseBroadcast(m["body"], int(m["c"]))
    if op == "policy":
        return PolicyChanged()
    if op == "topic_policy":
        xid = m.get("xid")
        return TopicPolicyChanged(xid if isinstance(xid, str) else None)
    if op == "snapshot_fence" and isinstance(m.get("id"), str):
        return SnapshotFence(m["id"])
    return None


class Fenced(Exception):
    """The log refused an append: this node is no longer the leader, or the log was lost."""


# One pending append: (header bytes or b"" for a bookkeeping-only marker, raw, key, seq, commit, end)
_Pending = tuple[bytes, bytes, int, int, int, int]


class LogSink:
    """The capture leader's sink: everything the pipeline hands over is appended to the log.

    ``change``/``commit``/``message``/``slot`` only queue (the pipeline's calls are synchronous);
    a writer task appends in batches, one script call each.  :meth:`hold` is the end LSN of the
    last transaction the log durably holds, so the pipeline confirms the slot only that far: a
    leader that dies with appends in flight leaves them in the slot for the next one.  When more
    than :data:`MAX_PENDING` entries wait, :meth:`change` returns an awaitable (the pipeline's
    "wait before the next one"), so a slow Redis slows capture instead of growing memory.
    """

    def __init__(
        self,
        redis: Redis,
        keys: ClusterKeys,
        token: str,
        meta: Meta,
        *,
        window_s: float,
        max_entries: int,
        max_backoff: float = 2.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.token = token
        self.gen = meta.gen
        self.window_ms = int(max(window_s, MIN_RETENTION_S) * 1000)
        self.max_entries = max(1000, max_entries)
        self.max_backoff = max_backoff
        self.last_id = meta.last_id  # the tail the next append expects
        self.last_k = meta.last_k  # entries at or before this key are in the log already
        self.prev = meta.last_seq  # the last row change's position in the log
        self._log_seq, self._log_commit = meta.last_seq, meta.last_commit  # what the log holds
        self.durable_end = Lsn(meta.last_end)
        self._tx = 0  # commit LSN of the transaction being queued
        self._ordinal = 0
        self._tx_entries = 0  # entries queued for it (0 at its end: an empty transaction)
        self._pending: list[_Pending] = []
        self._slot_json = b""
        self._slot_info: SlotInfo | None = None
        # The database history the log's positions belong to (from its last slot entry)
        self._stream = decode_slot(meta.slot)[0].stream if meta.slot is not None else None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self.fenced: str | None = None
        self.fenced_event = asyncio.Event()
        self.stats = PipelineStats()
        self.appended = 0
        self.began = time.monotonic()  # for the takeover timing in the log
        self.last_error: str | None = None
        self._script = redis.register_script(APPEND)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="relay-log-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    # -- ChangeSink ---------------------------------------------------------------------------
    def _key(self, commit_lsn: int) -> int:
        if commit_lsn != self._tx:
            self._tx, self._ordinal, self._tx_entries = commit_lsn, 0, 0
        k = entry_key(commit_lsn, self._ordinal)
        self._ordinal += 1
        return k

    def _queue(self, header: dict[str, Any], raw: bytes, k: int, seq: int, end: int) -> None:
        self._tx_entries += 1
        if k != -1 and k <= self.last_k:
            return  # an old leader appended it already (re-decoded after a takeover)
        header["g"] = self.gen
        header["p"] = self.prev
        if k != -1:
            header["k"] = k
        if seq >= 0:
            self.prev = seq
        self._pending.append((orjson.dumps(header), raw, k, seq, self._tx, end))
        self._wake.set()

    def change(self, change: RowChange) -> Awaitable[None] | None:
        seq = change.seq
        k = self._key(int(change.commit_lsn))
        self._queue({"t": CHANGE, "s": seq, "ts": change.commit_timestamp}, change.raw, k, seq, -1)
        if len(self._pending) > MAX_PENDING:
            self._drained.clear()
            return self._wait_drained()
        return None

    async def _wait_drained(self) -> None:
        await self._drained.wait()

    def commit(self, commit: Commit) -> None:
        lsn = int(commit.commit_lsn)
        k = self._key(lsn)
        if self._tx_entries == 0:
            # An empty transaction (only unpublished tables): nothing for followers, but the
            # log's bookkeeping must still reach its end, or the slot could never advance.
            self._pending.append((b"", b"", k, -1, lsn, int(commit.end_lsn)))
            self._wake.set()
            return
        header = {"t": COMMIT, "c": lsn, "e": int(commit.end_lsn), "ts": commit.commit_timestamp}
        self._queue(header, b"", k, -1, int(commit.end_lsn))
        self._tx_entries = 0

    def message(self, message: RelayMessage) -> None:
        m = message_header(message)
        if m is None:
            return
        # A database broadcast has its place in commit order (deduplicated by key after a
        # takeover); a policy change has none the sink can see, and doing it twice is harmless.
        # int(): the pipeline hands an Lsn, which must not become the open transaction's id
        # (stored as its repr, it broke every node's log reader at the first realtime.send)
        k = self._key(int(message.commit_lsn)) if type(message) is DatabaseBroadcast else -1
        self._queue({"t": MESSAGE, "m": m}, b"", k, -1, -1)

    def batch_end(self) -> None:
        pass

    def slot(self, info: SlotInfo, first: bool) -> None:
        # Queued once the stream runs (see status): only then is it known whether wal2json sends
        # numbers as text, which the followers' decoders must match.
        self._slot_info = info
        if info.stream is not None and self._stream is not None and info.stream != self._stream:
            # Another database history (failover, restore, another cluster): its keys and
            # positions do not compare with the old one's, so nothing may be skipped by them.
            self.last_k = -1
            self.prev = seq_before(info.confirmed_flush)
        if info.stream is not None:
            self._stream = info.stream

    def status(self, stats: PipelineStats) -> None:
        self.stats = stats
        if stats.streaming and self._slot_info is not None:
            data = encode_slot(self._slot_info, stats.numbers_as_text)
            self._slot_info = None
            self._slot_json = orjson.dumps(data)
            self._queue({"t": SLOT, **data}, b"", -1, -1, -1)

    def hold(self) -> Lsn | None:
        return self.durable_end

    # -- the writer ---------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        attempt = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:BATCH]
                try:
                    await self._append(batch)
                except Fenced as exc:
                    self.fenced = str(exc)
                    self.fenced_event.set()
                    self._drained.set()
                    return
                except (RedisError, OSError) as exc:
                    attempt += 1
                    delay = backoff_delay(attempt, self.max_backoff)
                    self.last_error = f"redis: {exc}"
                    log.warning("change log append failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                self.last_error = None
                del self._pending[: len(batch)]
                if len(self._pending) <= MAX_PENDING // 2:
                    self._drained.set()

    async def _append(self, batch: list[_Pending]) -> None:
        minid = f"{int(time.time() * 1000) - self.window_ms}-0"
        last_k, last_seq, last_commit, last_end = (
            self.last_k,
            self._log_seq,
            self._log_commit,
            int(self.durable_end),
        )
        pairs: list[bytes] = []
        for header, raw, k, seq, commit_lsn, end in batch:
            if header:
                pairs += (header, raw)
            if k > last_k:
                last_k = k
            if seq >= 0:
                last_seq = seq
            if end >= 0:  # a transaction's end (entry or bookkeeping marker), never a change:
                # a transaction appended only in part is not "in the log", or the next leader
                # would skip its remaining changes as already handed over
                last_commit = max(last_commit, commit_lsn)
                last_end = max(last_end, end)
        args: list[Any] = [
            self.token,
            self.gen,
            self.last_id,
            minid,
            self.max_entries,
            last_k,
            last_seq,
            last_commit,
            last_end,
            self._slot_json,
            *pairs,
        ]
        res = await self._script(keys=[self.keys.lease, self.keys.log, self.keys.meta], args=args)
        status = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        if status == "fenced":
            raise Fenced("the leader lease is held by another node (or expired)")
        if status == "lost":
            raise Fenced("the change log is not the one this leader was extending (Redis lost it)")
        self.last_id = res[1].decode() if isinstance(res[1], bytes) else str(res[1])
        self.last_k = last_k
        self._log_seq, self._log_commit = last_seq, last_commit
        if not self.appended and pairs:
            log.info("capture: first append %.2fs after this term began", time.monotonic() - self.began)
        self.appended += len(pairs) // 2
        self._slot_json = b""
        if last_end > self.durable_end:
            self.durable_end = Lsn(last_end)
