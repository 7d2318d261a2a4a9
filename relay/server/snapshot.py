"""Snapshot on join: a binding's current rows at one consistent point, then its live changes.

How it stays consistent (docs/protocol.md, "Snapshot on join"; docs/guarantees.md):

1. The channel is registered for live delivery at once, but *held* like a resuming channel
   (``replaying``): live fan-out skips it, the replay log keeps what it skipped (bounded by the
   resume window), its cursor is the join's position ``h0``.
2. On a connection of its own pool, in one ``REPEATABLE READ READ ONLY`` transaction: read
   ``pg_current_snapshot()`` (the transaction's snapshot ``S``); then commit a logical message,
   the *fence*, on another connection: its LSN ``F`` lies after every commit visible in ``S``.
3. Stream the rows of each snapshot binding through a server-side cursor, page by page, paced
   by the socket's queue, each row decoded like a wal2json INSERT and passed through the
   binding's filter and the subscriber's policies (relay/core/snapshot.py).
4. Wait until the stream has decoded the fence: every transaction visible in ``S`` is then in
   the replay log.  The marker's position ``P`` is the last position before the first retained
   change the channel must still receive (or ``F`` when there is none).
5. Replay the log from ``h0`` for this channel and go live in the same step (the resume
   hand-over): a change goes to a snapshot binding only if its transaction is *not* visible in
   ``S`` (xid test, never LSN: a commit can be in the WAL before it is visible).

Why a pool of its own: a snapshot holds its connection for as long as the client takes to read
the rows; the catalog's small pool serves every join's table check and must not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import orjson

from relay.config import Config
from relay.core.authorize import ASK_POSTGRES, Denied, VerdictMemo
from relay.core.changes import Lsn, RowChange
from relay.core.errors import Code
from relay.core.filters import BoundFilter
from relay.core.position import commit_of, seq_before
from relay.core.relay_messages import MESSAGE_PREFIX
from relay.core.snapshot import (
    PgSnapshot,
    SnapshotColumn,
    quote_ident,
    row_message,
    snapshot_query,
    xid_of_raw,
)
from relay.core.sqltypes.output import commit_timestamp
from relay.core.subscriptions import CHANGE, ERROR, BindingSpec, Delivery, FrameCache, snapshot_payload
from relay.core.wal2json import Decoder
from relay.postgres.catalog import Catalog, close_pool

if TYPE_CHECKING:
    from relay.server.channel import Channel
    from relay.server.feed import ChangeFeed

__all__ = ["SnapshotRequest", "Snapshots"]

log = logging.getLogger("relay.snapshot")

PAGE_ROWS = 500  # rows per cursor fetch: bounded memory per snapshot

_COLUMNS_SQL = """
select a.attname::text as name, a.atttypid::int8 as typeoid,
       pg_catalog.format_type(a.atttypid, a.atttypmod) as type,
       pg_catalog.array_position(i.indkey::int2[], a.attnum) as pk
from pg_catalog.pg_attribute a
left join pg_catalog.pg_index i on i.indrelid = a.attrelid and i.indisprimary
where a.attrelid = $1::text::pg_catalog.regclass and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""

# The snapshot, its time, and the transactions still holding their xid lock (running, or
# committed and not yet out of the proc array: e.g. waiting for a synchronous standby).
_SNAPSHOT_SQL = """
select pg_catalog.pg_current_snapshot()::text as snap, pg_catalog.now()::text as ts,
       coalesce((select pg_catalog.array_agg(l.transactionid::text) from pg_catalog.pg_locks l
                 where l.locktype = 'transactionid' and l.mode = 'ExclusiveLock' and l.granted),
                '{}') as running
"""

#: How far before the join's position the catch-up looks for a transaction the snapshot does not
#: see although the stream had decoded it (see :meth:`Snapshots._race_start`).
RACE_SCAN_LIMIT = 20_000


@dataclass
class SnapshotRequest:
    """The snapshot bindings of one join, with their bound filters."""

    chan: Channel
    bindings: list[tuple[BindingSpec, BoundFilter | None]]
    #: the join's ``resume_from`` as ``(stream id, position, as sent)``: the channel's other
    #: bindings resume from it, while the snapshot bindings get their rows
    resume: tuple[str, int, str] | None = None
    h0: int = -1  # the channel's position when it was held
    ok: set[int] = field(default_factory=set)  # ids of bindings whose snapshot was sent
    failed: set[int] = field(default_factory=set)  # ids of bindings told snapshot_* errors


class _Failed(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Snapshots:
    """Runs snapshots on join; knows the fences the stream has passed."""

    def __init__(self, config: Config, catalog: Catalog, feed: ChangeFeed) -> None:
        self.config = config
        self.catalog = catalog
        self.feed = feed
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._fences: dict[str, asyncio.Event] = {}
        self.started = 0
        self.completed = 0
        self.failed = 0

    # -- plumbing ---------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """Snapshots need the replay log: held changes are replayed from it after the rows."""
        return self.config.resume_window > 0 and self.config.resume_max_bytes > 0

    async def pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.catalog.dsn, min_size=0, max_size=4)
            return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)

    def stats(self) -> dict[str, int]:
        """For /health: snapshots started, bindings served, bindings refused, running now."""
        return {
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "running": len(self._fences),
        }

    def fence(self, fence_id: str) -> None:
        """The stream decoded a snapshot's fence (called by the pipeline's sink, in stream order)."""
        ev = self._fences.get(fence_id)
        if ev is not None:
            ev.set()

    def refuse_all(self, chan: Channel, specs: Sequence[BindingSpec], code: Code, message: str) -> None:
        for spec in specs:
            self._error(chan, spec, code, message)
        chan.conn.flush()

    # -- one join ---------------------------------------------------------------------------
    async def run(self, req: SnapshotRequest) -> None:
        """Serve the snapshots of one join, then hand the channel over to live delivery."""
        chan, feed = req.chan, self.feed
        self.started += 1
        try:
            await feed.floors_ready.wait()
            if chan.cursor < 0:  # joined before the first stream started
                chan.cursor = feed.fresh_cursor()
            if req.resume is not None:
                self._resume_point(req)
            req.h0 = chan.cursor
            stream = feed.stream_id
            snap, start = await self._rows_and_markers(req)
            if chan.closed or feed.stream_id != stream or not chan.replaying:
                return  # closed, or told to resync meanwhile
            await self._catch_up(req, snap, start, stream)
        except Exception:
            log.exception("snapshot of %s failed", chan.topic)
            if not chan.closed and chan.replaying:
                feed._resync(chan, req.h0, "internal error while serving a snapshot")
        finally:
            chan.replaying = False

    async def _rows_and_markers(self, req: SnapshotRequest) -> tuple[PgSnapshot | None, int]:
        """Steps 2 to 4: the rows of every binding, then each binding's marker (or error).

        Returns the snapshot (None when no binding got one) and where the catch-up starts.
        """
        chan = req.chan
        try:
            pool = await self.pool()
            # four snapshots run at once; a join waits for its turn at most the snapshot timeout
            conn = await pool.acquire(timeout=self.config.snapshot_timeout)
        except Exception as exc:
            self.failed += 1
            code, message = _classify(exc)
            self.refuse_all(chan, [s for s, _ in req.bindings], code, message)
            return None, req.h0
        fence_id = uuid.uuid4().hex
        fenced = self._fences[fence_id] = asyncio.Event()
        try:
            tx = conn.transaction(isolation="repeatable_read", readonly=True)
            await tx.start()
            try:
                timeout_ms = str(max(1, round(self.config.snapshot_timeout * 1000)))
                # Bounds: a statement (a slow scan, a lock); a client that stops reading (the
                # transaction, idle meanwhile, holds back vacuum) is bounded by _paced.
                await conn.execute(
                    "select pg_catalog.set_config('statement_timeout', $1, true), "
                    "pg_catalog.set_config('idle_in_transaction_session_timeout', $2, true), "
                    "pg_catalog.set_config('TimeZone', 'UTC', true), "
                    "pg_catalog.set_config('DateStyle', 'ISO, YMD', true), "
                    "pg_catalog.set_config('IntervalStyle', 'postgres', true)",
                    timeout_ms,
                    str(3 * int(timeout_ms)),  # a backstop: the relay's own bounds come first
                )
                row = await conn.fetchrow(_SNAPSHOT_SQL)
                snap = PgSnapshot.parse(row["snap"])
                timestamp = commit_timestamp(row["ts"])
                fence_lsn = await self._emit_fence(fence_id)
                # Not visible, still holding their xid lock: in progress, or committed and
                # decoded already (then due after the marker although before the join).
                running = {int(x) for x in row["running"]}
                racing = {x for x in running if not snap.visible(x)}
            except Exception as exc:
                if _alive(conn):
                    with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                        await tx.rollback()
                self.failed += 1
                code, message = _classify(exc)
                self.refuse_all(chan, [s for s, _ in req.bindings], code, message)
                return None, req.h0
            start = self._race_start(req.h0, racing)
            log.debug(
                "snapshot of %s: %s; catch-up from %s (joined at %s)",
                chan.topic,
                row["snap"],
                self.feed.position(start),
                self.feed.position(req.h0),
            )
            marked = False
            position = start
            try:
                lost: tuple[Code, str] | None = None  # the connection died: later bindings fail too
                for spec, bound in req.bindings:
                    if chan.closed or not chan.replaying:
                        return None, start
                    try:
                        if lost is not None:
                            raise _Failed(*lost)
                        async with conn.transaction():  # a savepoint: one binding's error is its own
                            rows = await self._send_rows(conn, chan, spec, bound, timestamp)
                    except _Failed as exc:
                        self.failed += 1
                        req.failed.add(spec.id)
                        self._error(chan, spec, exc.code, exc.message)
                        continue
                    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                        self.failed += 1
                        req.failed.add(spec.id)
                        code, message = _classify(exc)
                        self._error(chan, spec, code, message)
                        if not _alive(conn) or not isinstance(exc, asyncpg.PostgresError):
                            lost = (code, message)
                        continue
                    if chan.closed or not chan.replaying:
                        return None, start
                    req.ok.add(spec.id)
                    if not marked:
                        position = await self._marker_position(req, snap, start, fence_lsn, fenced)
                        marked = True
                    self.completed += 1
                    chan.conn.queue_frame(
                        chan.system(
                            "ok",
                            f"snapshot complete: {rows} rows",
                            code=Code.SNAPSHOT_COMPLETE,
                            id=spec.id,
                            rows=rows,
                            position=self.feed.position(position),
                        )
                    )
                    chan.conn.flush()
            finally:
                if _alive(conn):
                    try:
                        await tx.rollback()
                    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                        log.debug("ending the snapshot transaction failed", exc_info=True)
            return (snap if req.ok else None), start
        finally:
            self._fences.pop(fence_id, None)
            try:
                await pool.release(conn)
            except Exception:  # a broken connection: the pool replaces it
                log.debug("releasing the snapshot connection failed", exc_info=True)

    async def _emit_fence(self, fence_id: str) -> int:
        """Commit the fence on another connection, after the snapshot was taken; its LSN.

        A transactional message: its commit flushes the WAL (a lone non-transactional message
        in an idle database waits for the WAL writer), and it is decoded after every
        transaction the snapshot sees.  ``synchronous_commit = local``: the stream only needs
        the local flush, so the fence never waits for a synchronous standby.
        """
        content = orjson.dumps({"op": "snapshot_fence", "id": fence_id}).decode()
        async with self.catalog.pool.acquire() as conn, conn.transaction():
            await conn.execute("select pg_catalog.set_config('synchronous_commit', 'local', true)")
            text = await conn.fetchval(
                "select pg_catalog.pg_logical_emit_message(true, $1, $2)::text", MESSAGE_PREFIX, content
            )
        return int(Lsn.parse(str(text)))

    def _resume_point(self, req: SnapshotRequest) -> None:
        """A join asking for snapshots *and* resuming: the other bindings continue from the
        resume point when the replay log still covers it (the snapshot bindings need nothing
        from it: whatever the snapshot does not see is replayed to them too).  When it is not
        covered, or of another stream, the channel starts now and says ``resync_needed``, as a
        plain resume would."""
        assert req.resume is not None
        chan, feed = req.chan, self.feed
        stream, after, text = req.resume
        log_ = feed.log
        if stream == feed.stream_id and log_.covers(after) and after <= max(log_.head, feed.live_floor):
            chan.cursor = min(chan.cursor, after)
            return
        if all(s.snapshot for s in chan.specs):
            return  # every binding restarts from its snapshot: nothing is missing
        feed.resyncs += 1
        chan.conn.queue_frame(
            chan.system(
                "error",
                "resync needed: the position is not in the relay's replay window; changes after "
                f"{text} may be missing. Refetch, then continue from position {feed.position(chan.cursor)}",
                code=Code.RESYNC_NEEDED,
                resume_from=text,
                retained_from=feed.position(log_.retained_from),
                position=feed.position(chan.cursor),
            )
        )

    def _race_start(self, h0: int, racing: set[int]) -> int:
        """Where the catch-up starts: ``h0``, or before it when the stream had already decoded a
        transaction the snapshot does not see.  A transaction is decoded once its commit record
        is flushed, but it becomes visible only when it leaves the proc array, which a
        synchronous standby can delay for long: such a change lies before the join's position
        yet belongs after the marker.  ``racing``: the xids the snapshot does not see that still
        held their lock (in progress, or in that window; ``pg_xact_status`` says "in progress"
        for both, so the log tells them apart: only a committed one was decoded).  The last
        :data:`RACE_SCAN_LIMIT` changes before ``h0`` are searched, newest first."""
        if not racing:
            return h0
        log_ = self.feed.log
        entries, lo = log_._entries, log_._start  # read-only walk, newest first, no copy
        i = bisect_right(entries, h0, lo=lo, key=lambda e: e[0]) - 1
        first = h0
        stop = max(lo, i - RACE_SCAN_LIMIT)
        while i >= stop:
            seq, _, _, raw = entries[i]
            if xid_of_raw(raw) in racing:
                first = seq - 1
            i -= 1
        return first

    async def _send_rows(
        self,
        conn: asyncpg.Connection,
        chan: Channel,
        spec: BindingSpec,
        bound: BoundFilter | None,
        timestamp: str,
    ) -> int:
        """Step 3 for one binding: its rows, as SNAPSHOT frames; returns how many were sent."""
        assert spec.table is not None
        cols = await conn.fetch(_COLUMNS_SQL, f"{quote_ident(spec.schema)}.{quote_ident(spec.table)}")
        # a publication's column list (PG 15+): the columns it does not publish never leave, here
        # as in the stream (relay.core.publication).  Read now, not from the cache: a list added
        # a moment ago must already hold for this snapshot.
        rules = await self.catalog.publication_rules(self.config.publication, fresh=True)
        keep = rules.columns.get((spec.schema, spec.table))
        if keep is not None:
            cols = [r for r in cols if r["name"] in keep]
        columns = [SnapshotColumn(r["name"], r["typeoid"], r["type"]) for r in cols]
        # (int2vector subscripts start at 0)
        pk = [r["name"] for r in sorted((r for r in cols if r["pk"] is not None), key=lambda r: r["pk"])]
        sql, args = snapshot_query(spec.schema, spec.table, columns, bound)
        feed = self.feed
        decoder = Decoder(feed.types)
        numbers_as_text = feed.types.numbers_as_text
        limit = max(1, min(256, self.config.socket_queue_frames // 4))
        max_rows = self.config.snapshot_max_rows
        sent = 0
        cursor = await conn.cursor(sql, *args)
        while True:
            page = await cursor.fetch(PAGE_ROWS)
            if not page:
                return sent
            for values in page:
                if chan.closed or not chan.replaying:
                    return sent
                raw = row_message(spec.schema, spec.table, columns, pk, list(values), numbers_as_text)
                change = decoder.replay(raw, 0, timestamp)
                change.stream = feed.stream_id
                delivery = await self._decide(chan, spec, bound, change)
                if delivery is None:
                    continue
                if sent >= max_rows:
                    raise _Failed(
                        Code.SNAPSHOT_TOO_LARGE,
                        f"snapshot too large: more than {max_rows} rows (RELAY_SNAPSHOT_MAX_ROWS); "
                        "discard the rows received, narrow the filter, or subscribe without a snapshot",
                    )
                kind, error = delivery
                payload = snapshot_payload(
                    kind, error, spec.select if kind == CHANGE else None, spec.snapshot_type
                )
                cache = FrameCache(change, payload, max_data_bytes=self.config.max_change_bytes)
                chan.conn.deliver(cache, chan.topic, [spec.id])
                sent += 1
                if sent % limit == 0:  # paced by the socket: never more than its share queued
                    await self._paced(chan, limit)
            await self._paced(chan, limit)

    async def _paced(self, chan: Channel, limit: int) -> None:
        """Wait until the socket has taken the rows queued so far, at most the snapshot timeout:
        the snapshot's transaction is open meanwhile (and holds back vacuum)."""
        try:
            await asyncio.wait_for(chan.conn.drain(limit), self.config.snapshot_timeout)
        except TimeoutError:
            raise _Failed(Code.SNAPSHOT_TIMEOUT, _NOT_READ) from None

    async def _decide(
        self, chan: Channel, spec: BindingSpec, bound: BoundFilter | None, change: RowChange
    ) -> tuple[str, Denied | None] | None:
        """The binding's filter and the subscriber's policies for one row, as for a live INSERT."""
        row = change.record or {}
        if bound is not None and not bound.matches(row):
            return None
        memo = VerdictMemo(self.feed.authorizer, change.schema, change.table)
        verdict = memo.get(0, row, chan.claims, chan.claims_key)
        if verdict is ASK_POSTGRES:
            await self.feed.evaluator.resolve(change, memo, [(chan.claims, chan.claims_key, 0)])
            verdict = memo.get(0, row, chan.claims, chan.claims_key)
        if verdict is True:
            return CHANGE, None
        if isinstance(verdict, Denied):
            return ERROR, verdict
        return None

    async def _marker_position(
        self, req: SnapshotRequest, snap: PgSnapshot, start: int, fence_lsn: int, fenced: asyncio.Event
    ) -> int:
        """Step 4: the position a client resumes from after the marker.

        Once the stream has decoded the fence, every change committed before the snapshot is in
        the replay log.  Up to the fence, a retained change the snapshot holds (visible, on a
        table only snapshot bindings of this channel listen to) is behind the marker; the first
        one that is not (invisible, or wanted by another binding) is the first the client must
        still receive: the marker's position is just before it.  Past the fence nothing is
        visible, so with no such change the position is the fence's.
        """
        try:
            await asyncio.wait_for(fenced.wait(), self.config.snapshot_timeout)
        except TimeoutError:
            log.warning("snapshot of %s: the stream did not reach the fence in time", req.chan.topic)
            return start  # the safe side: a resume from here may repeat, never miss
        chan = req.chan
        decoder = Decoder(self.feed.types)
        last = seq_before(fence_lsn)
        for seq, _, timestamp, raw in self.feed.log.after(start, len(self.feed.log)):
            if seq > last:
                break
            change = decoder.replay(raw, seq, timestamp)
            wanted = _wanted(chan, req, change)
            if wanted is None:
                continue  # no binding of the channel looks at this table
            if wanted or not snap.visible(change.xid):
                return seq - 1
        return max(last, start)

    async def _catch_up(self, req: SnapshotRequest, snap: PgSnapshot | None, start: int, stream: str) -> None:
        """Step 5: replay what the hold skipped, minus what the snapshot holds; then go live.

        As a resume's replay (relay/server/feed.py): paced by the socket, and the hand-over to
        live happens in the step that finds the log exhausted, so nothing is missed or doubled.
        """
        chan, feed = req.chan, self.feed
        log_ = feed.log
        chan.cursor = min(chan.cursor, start)
        decoder = Decoder(feed.types)
        limit = max(1, min(256, self.config.socket_queue_frames // 4))
        while not chan.closed:
            if feed.stream_id != stream or not chan.replaying:
                return  # resynced by the feed meanwhile
            if not log_.covers(chan.cursor):
                feed._resync(chan, req.h0, "the snapshot took longer than the relay's replay window")
                return
            entries = log_.after(chan.cursor, limit)
            if not entries:
                self._go_live(chan)
                return
            for seq, _, timestamp, raw in entries:
                if chan.closed or feed.stream_id != stream or not chan.replaying:
                    return
                if chan.tx_end and chan.open_tx and commit_of(seq) != chan.open_tx:
                    feed._send_tx_end(chan)
                change = decoder.replay(raw, seq, timestamp)
                change.stream = stream
                await self._route(req, snap, change)
                if chan.cursor < seq:
                    chan.cursor = seq
            await chan.conn.drain(limit)

    async def _route(self, req: SnapshotRequest, snap: PgSnapshot | None, change: RowChange) -> None:
        """Route one held change to the channel, without the bindings whose snapshot holds it."""
        chan, feed = req.chan, self.feed
        memo, decide = feed._decider(change)
        only = {chan}
        deliveries, pending = feed.index.route(change, decide, only)
        for _ in range(2):  # an UPDATE may ask for the new row's verdict, then the old row's
            mine = [(c.claims, c.claims_key, w) for c, w in pending if c is chan]
            if not mine:
                break
            await feed.evaluator.resolve(change, memo, mine)
            deliveries, pending = feed.index.route(change, decide, only)
        held = snap is not None and snap.visible(change.xid)
        early = change.seq <= req.h0  # before the join: only for snapshots that miss it
        out: list[Delivery[Channel]] = []
        for d in deliveries:
            if d.sub is not chan:
                continue
            ids = [i for i in d.ids if (i in req.ok and not held) or (i not in req.ok and not early)]
            if ids:
                d.ids = ids
                out.append(d)
        feed._deliver(change, out, replay_for=chan)

    def _go_live(self, chan: Channel) -> None:
        """The hand-over (as a resume's, without its ``Resumed`` message)."""
        feed = self.feed
        chan.replaying = False
        if chan.tx_end and chan.open_tx:
            if feed.log.committed >= chan.open_tx:
                feed._send_tx_end(chan)
            else:
                feed.open_tx.add(chan)
        chan.conn.flush()

    def _error(self, chan: Channel, spec: BindingSpec, code: Code, message: str) -> None:
        log.info("snapshot of %s binding %s: %s (%s)", chan.topic, spec.id, message, code)
        chan.conn.queue_frame(chan.system("error", message, code=code, id=spec.id))


def _wanted(chan: Channel, req: SnapshotRequest, change: RowChange) -> bool | None:
    """Whether a binding of ``chan`` other than the served snapshots listens to the change's
    table (True), only served snapshot bindings do (False), or none does (None)."""
    found: bool | None = None
    for spec in chan.specs:
        if spec.schema != change.schema or spec.table not in (None, change.table):
            continue
        if spec.snapshot and spec.id not in req.failed:
            found = False if found is None else found
        else:
            return True
    return found


_NOT_READ = "snapshot timed out (RELAY_SNAPSHOT_TIMEOUT): the rows were not read in time"


def _alive(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection still works (the pool detaches one that died)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def _classify(exc: BaseException) -> tuple[Code, str]:
    """A failed snapshot statement as its code and a message for the client."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return Code.SNAPSHOT_TIMEOUT, "snapshot timed out (RELAY_SNAPSHOT_TIMEOUT): " + str(exc)
    if isinstance(exc, asyncpg.IdleInTransactionSessionTimeoutError):
        return Code.SNAPSHOT_TIMEOUT, _NOT_READ
    if isinstance(exc, TimeoutError):
        return Code.SNAPSHOT_TIMEOUT, "snapshot timed out (RELAY_SNAPSHOT_TIMEOUT): no connection was free"
    return Code.SNAPSHOT_FAILED, _describe(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.PostgresError):
        return f"snapshot failed: {exc}"
    return f"snapshot failed: the database could not be reached ({type(exc).__name__})"
