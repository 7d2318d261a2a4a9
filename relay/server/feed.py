"""The change feed: who is subscribed to which rows, and getting each change to them in order.

Why its own object: the fan-out, the authorization index, transactions (``tx_end``) and resume
all turn around the same state — the subscription index, each channel's cursor, the replay log
and the stream's positions — and none of it is about sockets or HTTP.  The server owns one feed;
connections attach and detach their channels; the pipeline's sink calls :meth:`dispatch` for
every change, synchronously, so by the time it returns every frame is queued on its socket (that
is what "handed to the fan-out" means when the pipeline confirms an LSN), and the
:class:`~relay.server.outbox.Outbox` writes each touched socket once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from relay.config import Config
from relay.core.authorize import Authorizer, TableIndex, VerdictMemo
from relay.core.changes import Action, Commit, Lsn, RowChange, format_position, seq_before
from relay.core.errors import Code
from relay.core.filters import BoundFilter
from relay.core.position import commit_of
from relay.core.protocol import Frame
from relay.core.quotas import CHANGE_TOO_LARGE
from relay.core.replay_log import ReplayLog
from relay.core.sqltypes import TypeRegistry
from relay.core.stream import StreamIdentity
from relay.core.subscriptions import (
    CHANGE,
    ERROR,
    BindingSpec,
    Decide,
    Delivery,
    FrameCache,
    SubscriptionIndex,
)
from relay.core.wal2json import Decoder
from relay.postgres.policy_eval import PolicyEvaluator
from relay.postgres.replication import SlotInfo
from relay.server.metrics import RelayMetrics
from relay.server.outbox import Outbox

if TYPE_CHECKING:
    from relay.server.channel import Channel

__all__ = ["ChangeFeed"]

log = logging.getLogger("relay.server")

_ACTION_KIND = {Action.INSERT: "insert", Action.UPDATE: "update", Action.DELETE: "delete"}


class ChangeFeed:
    """Subscription index, table index, replay log, cursors, ``tx_end`` and resume."""

    def __init__(
        self,
        config: Config,
        authorizer: Authorizer,
        evaluator: PolicyEvaluator,
        metrics: RelayMetrics,
        outbox: Outbox,
    ) -> None:
        self.config = config
        self.authorizer = authorizer
        self.evaluator = evaluator
        self.metrics = metrics
        self.outbox = outbox
        self.channels: set[Channel] = set()  # every joined channel (attach/detach)
        self.index: SubscriptionIndex[Channel] = SubscriptionIndex()
        self.table_index: dict[tuple[str, str], TableIndex[Channel]] = {}
        self.authorizer.listeners.append(self._reindex_all)
        self.changes_seen = 0
        self.frames_queued = 0
        self.policy_errors = 0
        self.value_errors = 0  # column values sent as null with an errors marker (see column_error)
        self._change_audited = -1e9  # when a trimmed postgres change was last audited
        # Resume: the replay log, the first position that is "live" for a fresh join, and the
        # channels with a transaction open for tx_end.
        self.log = ReplayLog(config.resume_window, config.resume_max_bytes)
        self.types = TypeRegistry()  # the pipeline's registry (set by the service) for re-decoding
        self.live_floor = -1
        self.floors_ready = asyncio.Event()
        # replication_ready asked before the first stream (weak: closed channels just vanish)
        self._awaiting_ready: weakref.WeakSet[Channel] = weakref.WeakSet()
        # Which database history positions belong to (set by on_slot; "" until then, or when
        # the pipeline cannot tell), and the highest WAL position known to exist in it.
        self.stream: StreamIdentity | None = None
        self.stream_id = ""
        self.wal_end = 0
        self.open_tx: set[Channel] = set()
        self.resumes = 0
        self.resyncs = 0
        # Cluster mode: wait until this node has read the shared log as far as the cluster has
        # issued positions (a client may resume here with a position another node gave it).
        self.catch_up: Callable[[], Awaitable[None]] | None = None

    # -- channels -------------------------------------------------------------------------
    def attach(self, chan: Channel, bound: list[tuple[BindingSpec, BoundFilter | None]]) -> None:
        """A channel joined: register its bindings (with their bound filters) and its claims."""
        for spec, flt in bound:
            self.index.add(spec, chan, flt)
        self.channels.add(chan)
        self.index_channel(chan)

    def detach(self, chan: Channel) -> None:
        """A channel left (or its socket went): it is forgotten everywhere the feed looks."""
        self.open_tx.discard(chan)
        self.index.remove_owner(chan)
        self.unindex_channel(chan)
        self.channels.discard(chan)

    # -- fan-out --------------------------------------------------------------------------
    def dispatch(self, change: RowChange) -> Awaitable[None] | None:
        """Queue ``change`` for every channel that matches and may see it.

        Returns None when everything was decided in-process (the common case: frames are
        queued when this returns).  When a policy must be evaluated in Postgres it returns an
        awaitable that the pipeline awaits before the next change, so commit order holds and
        the LSN is confirmed only after delivery.
        """
        self.changes_seen += 1
        if change.errors:
            self._value_errors(change, change.errors)
        change.stream = self.stream_id
        seq = change.seq
        self.log.append(seq, change.commit_timestamp, change.raw)
        memo, decide = self._decider(change)
        owners = self._owners(change)
        deliveries, pending = self.index.route(change, decide, owners)
        if pending:
            # only channels that will take this change are worth a trip to Postgres (not those
            # replaying, nor those that start after it: e.g. the window decoded after a restart)
            pending = [(c, w) for c, w in pending if not c.replaying and c.cursor < seq]
        if pending:
            return self._dispatch_slow(change, memo, decide, pending)
        self._deliver(change, deliveries)
        return None

    def _decider(self, change: RowChange) -> tuple[VerdictMemo, Decide[Channel]]:
        """The verdict function route() asks, memoized per distinct claims for this change."""
        memo = VerdictMemo(self.authorizer, change.schema, change.table, source=change)
        return memo, memo.decide

    async def _dispatch_slow(
        self,
        change: RowChange,
        memo: VerdictMemo,
        decide: Decide[Channel],
        pending: list[tuple[Channel, int]],
    ) -> None:
        self.outbox.flush()  # what earlier changes queued goes out while Postgres evaluates
        known = len(change.errors or ())
        # An UPDATE asks for the new row's verdict first, then (once it is known) the old row's:
        # a second round, or the change was dropped for every subscriber needing Postgres on both.
        for _ in range(2):
            await self.evaluator.resolve(change, memo, [(c.claims, c.claims_key, w) for c, w in pending])
            deliveries, still = self.index.route(change, decide, self._owners(change))
            pending = [(c, w) for c, w in still if not c.replaying and c.cursor < change.seq and not c.closed]
            if not pending:
                break
        if change.errors and len(change.errors) > known:  # a value the evaluator could not encode
            self._value_errors(change, change.errors[known:])
        for chan, _ in still:  # e.g. a new token while we awaited: never guess
            if chan.replaying or chan.cursor >= change.seq or chan.closed:
                continue  # joined after this change, or its replay will decide it
            log.warning(
                "policy verdict for %s unresolved; change %s not delivered to it",
                chan.topic,
                change.commit_lsn,
            )
        self._deliver(change, deliveries)

    # -- authorization index ----------------------------------------------------------------
    def _owners(self, change: RowChange) -> set[Channel]:
        """Channels of the change's table that may see its row(s), from the index."""
        out: set[Channel] = set()
        ti = self.table_index.get((change.schema, change.table))
        if ti is not None:
            if not ti.by_key:  # nobody indexed by a column: the rows need not be built
                if change.has_record or change.has_old_record:
                    out |= ti.always
                return out
            if change.record is not None:
                ti.candidates(change.record, out)
            if change.old_record is not None:
                ti.candidates(change.old_record, out)
        return out

    def index_channel(self, chan: Channel) -> None:
        """(Re)register a channel's claims in the index of each table it binds (join, new token)."""
        self.unindex_channel(chan)
        for spec in chan.specs:
            if spec.table is None:
                continue
            key = (spec.schema, spec.table)
            ti = self.table_index.get(key)
            if ti is None:
                ti = self.table_index[key] = TableIndex()
            ti.add(chan, chan.claims, self.authorizer.policies(*key))

    def unindex_channel(self, chan: Channel) -> None:
        for spec in chan.specs:
            if spec.table is not None:
                ti = self.table_index.get((spec.schema, spec.table))
                if ti is not None:
                    ti.remove(chan)

    def _reindex_all(self) -> None:
        """Policies changed: every channel's candidacy may have changed."""
        self.table_index.clear()
        for chan in list(self.channels):
            self.index_channel(chan)

    def _deliver(
        self, change: RowChange, deliveries: list[Delivery[Channel]], replay_for: Channel | None = None
    ) -> None:
        """Queue the frames; a channel gets a change only once, and only after its cursor."""
        if not deliveries:
            return
        seq = change.seq
        cache: FrameCache | None = None
        sent = 0
        variants = 0  # moved_in / moved_out / error deliveries, counted by kind below
        # The plain frame of the last (topic, ids, vsn) seen: consecutive deliveries of a change
        # mostly share it (one channel topic, one binding), and then every socket gets the same
        # bytes object without a cache lookup per socket.
        last_ids: list[int] | None = None
        last_topic = last_vsn = ""
        last_wire = b""
        for d in deliveries:
            chan = d.sub
            if seq <= chan.cursor or (chan.replaying and chan is not replay_for) or chan.closed:
                continue
            chan.cursor = seq
            if chan.tx_end:
                self._track_tx(chan, change, seq)
            if cache is None:
                cache = FrameCache(change, max_data_bytes=self.config.max_change_bytes)
                if cache.repaired:
                    self._value_errors(change, cache.repaired)
                if cache.trimmed:  # counted per change; audited at most once a second
                    now = time.monotonic()
                    audited = now - self._change_audited >= 1.0
                    if audited:
                        self._change_audited = now
                    self.metrics.quota_hit(CHANGE_TOO_LARGE, "-", f"{change.schema}.{change.table}", audited)
            sent += 1
            conn = chan.conn
            kind = d.kind
            if kind == CHANGE:
                if d.select is None and conn.raw:
                    if d.ids != last_ids or chan.topic != last_topic or conn.vsn != last_vsn:
                        last_ids, last_topic, last_vsn = d.ids, chan.topic, conn.vsn
                        last_wire = cache.wire(last_topic, last_ids, last_vsn)
                    conn.push(last_wire)
                    continue
            else:
                variants += 1
                self.metrics.deliveries[kind] += 1
                if kind == ERROR and d.error is not None:
                    self.policy_errors += 1
                    log.warning(
                        "%s: policy %s failed for a subscriber of %s on %s.%s: %s",
                        d.error.code,
                        d.error.policy,
                        chan.topic,
                        change.schema,
                        change.table,
                        d.error.message,
                    )
            conn.deliver(cache.variant(kind, d.error, d.select), chan.topic, d.ids)
        self.frames_queued += sent
        if sent > variants:
            self.metrics.deliveries[_ACTION_KIND[change.action]] += sent - variants

    def _value_errors(self, change: RowChange, markers: list[str]) -> None:
        """Count and log values sent as null: table and marker (column, exception type), no value."""
        self.value_errors += len(markers)
        for marker in markers:
            log.warning("%s.%s at %s: %s", change.schema, change.table, change.position, marker)

    # -- transactions -----------------------------------------------------------------------
    def on_commit(self, commit: Commit) -> None:
        """The pipeline saw a transaction end: tell channels that asked (``tx_end``)."""
        self.log.commit(commit.commit_lsn)
        if not self.open_tx:
            return
        chans, self.open_tx = self.open_tx, set()
        for chan in chans:
            if chan.open_tx == commit.commit_lsn and not chan.replaying and not chan.closed:
                self._send_tx_end(chan)
            elif chan.open_tx > commit.commit_lsn:
                self.open_tx.add(chan)

    def _track_tx(self, chan: Channel, change: RowChange, seq: int) -> None:
        lsn = int(change.commit_lsn)
        if chan.open_tx != lsn:
            if chan.open_tx:
                self._send_tx_end(chan)  # its end was not signalled yet (replay)
            chan.open_tx, chan.open_count, chan.open_ts = lsn, 0, change.commit_timestamp
        chan.open_count += 1
        chan.open_pos = seq
        if not chan.replaying:
            self.open_tx.add(chan)

    def _send_tx_end(self, chan: Channel) -> None:
        payload = {
            "commit_lsn": str(Lsn(chan.open_tx)),
            "commit_timestamp": chan.open_ts,
            "position": self.position(chan.open_pos),
            "changes": chan.open_count,
        }
        chan.open_tx, chan.open_count = 0, 0
        chan.conn.queue_frame(Frame(chan.topic, "tx_end", payload))
        self.outbox.mark(chan.conn)

    # -- resume ---------------------------------------------------------------------------
    def position(self, seq: int) -> str:
        """The wire form of ``seq`` in the current stream (carrying its identity)."""
        return format_position(seq, self.stream_id)

    def fresh_cursor(self) -> int:
        """Where a join without ``resume_from`` starts: after everything already fanned out.

        After a restart the slot first replays the window (changes committed before this relay
        started); those are history for a fresh join, which starts at ``live_floor``.
        """
        return max(self.log.head, self.live_floor)

    def hold(self) -> Lsn | None:
        """For the pipeline: drop what left the window, then the LSN the slot must keep."""
        self.log.evict()
        return self.log.hold_lsn()

    def on_slot(self, info: SlotInfo, first: bool) -> None:
        """A stream is starting: set the floors (first start) or recover from a lost slot or a
        changed stream identity (failover, restore, another cluster behind the same address)."""
        floor = seq_before(info.confirmed_flush)
        old_id = self.stream_id
        self.stream = info.stream
        self.stream_id = info.stream.id if info.stream is not None else ""
        changed = not first and self.stream_id != old_id
        self.wal_end = int(info.current) if changed else max(self.wal_end, int(info.current))
        if changed:
            # Positions of the old stream mean nothing here, even (especially) higher ones.
            log.warning(
                "stream identity changed from %s to %s: every subscriber resyncs", old_id, self.stream_id
            )
            self.log.restart(floor)
            self.live_floor = seq_before(info.current)
            for chan in list(self.channels):
                if chan.specs:
                    self._resync(
                        chan,
                        chan.cursor,
                        "the database's stream changed (failover, restore or another cluster)",
                        resume_from=format_position(chan.cursor, old_id),
                        restart=True,
                    )
        elif first:
            self.log.reset(floor)
            self.live_floor = seq_before(info.current)
            for chan in self.channels:  # joined before the database was reachable
                if not chan.replaying and chan.cursor < self.live_floor:
                    chan.cursor = self.live_floor
            self.floors_ready.set()
            for chan in list(self._awaiting_ready):
                if not chan.closed:
                    self._send_replication_ready(chan)
            self._awaiting_ready.clear()
        elif info.created:
            # The slot was lost: changes between what we had and the new slot are gone.  (In
            # cluster mode also: the shared change log lost entries, reason "log_lost".)
            self.log.reset(floor)
            why = (
                "the cluster's change log lost entries (Redis lost data)"
                if info.reason == "log_lost"
                else "the replication slot was lost and recreated"
            )
            for chan in list(self.channels):
                if chan.specs and not chan.replaying:
                    self._resync(chan, chan.cursor, why)

    def replication_ready(self, chan: Channel) -> None:
        """``config.broadcast.replication_ready``: tell the channel once the stream is up.

        Supabase's end-to-end tests wait for this before writing, so a write is never made
        before the relay can see it.  Sent at once when the first stream already started.
        """
        if self.floors_ready.is_set():
            self._send_replication_ready(chan)
        else:
            self._awaiting_ready.add(chan)

    def _send_replication_ready(self, chan: Channel) -> None:
        chan.conn.queue_frame(chan.system("ok", "Replication connection established", extension="system"))
        chan.conn.flush()

    async def replay(self, chan: Channel, after: int, stream: str = "", text: str | None = None) -> None:
        """Serve a resume: the log after ``after``, paced by the socket, then hand over to live.

        Live fan-out skips the channel while ``replaying``; the hand-over happens in the same
        step that finds the log exhausted, and every delivery checks the channel's cursor, so
        nothing is missed or repeated at the switch.

        ``stream`` is the stream id the position carried (``""``: legacy form), ``text`` the
        position as the client sent it.  A position of another stream, or one beyond the WAL
        this stream has written, was not issued here: comparing it with this stream's positions
        would skip changes, so the answer is ``resync_needed`` (checked once the stream is known).
        """
        try:
            await self.floors_ready.wait()
            if self.catch_up is not None:
                await self.catch_up()
            current = self.stream_id
            if stream != current:
                why = (
                    f"the position belongs to another stream ({stream}, this relay streams {current}): "
                    "the database was restored, failed over or replaced, or the slot changed"
                    if stream
                    else "the position carries no stream id (the legacy form), so it cannot be trusted"
                )
                self._resync(chan, after, why, resume_from=text, restart=True)
                return
            if commit_of(after) > max(self.wal_end, commit_of(self.log.head), commit_of(self.live_floor)):
                self._resync(
                    chan,
                    after,
                    "the position is ahead of the database's WAL, so it was not issued by this stream",
                    resume_from=text,
                    restart=True,
                )
                return
            log = self.log
            decoder = Decoder(self.types)
            limit = max(1, min(256, self.config.socket_queue_frames // 4))
            replayed = 0
            while not chan.closed:
                if self.stream_id != current:
                    return  # on_slot told the channel to resync
                if not log.covers(chan.cursor):
                    self._resync(chan, after, "the position is older than the relay's replay window")
                    return
                entries = log.after(chan.cursor, limit)
                if not entries:
                    self._go_live(chan, after, replayed)
                    return
                for seq, _, timestamp, raw in entries:
                    if chan.closed or self.stream_id != current:
                        return  # (a stream change while awaiting below: on_slot resynced it)
                    if chan.tx_end and chan.open_tx and commit_of(seq) != chan.open_tx:
                        self._send_tx_end(chan)
                    change = decoder.replay(raw, seq, timestamp)
                    change.stream = current
                    before = chan.cursor
                    await self._route_one(change, chan)
                    if chan.cursor > before:
                        replayed += 1
                    elif chan.cursor < seq:
                        chan.cursor = seq
                await chan.conn.drain(limit)
        except Exception:
            log_exc = logging.getLogger("relay.resume")
            log_exc.exception("resume of %s failed", chan.topic)
            if not chan.closed:
                self._resync(chan, after, "internal error while replaying")
        finally:
            chan.replaying = False

    async def _route_one(self, change: RowChange, chan: Channel) -> None:
        """Route ``change`` for one channel only (replay), evaluating in Postgres if needed."""
        memo, decide = self._decider(change)
        only = {chan}
        deliveries, pending = self.index.route(change, decide, only)
        for _ in range(2):  # an UPDATE may ask for the new row's verdict, then the old row's
            mine = [(c, w) for c, w in pending if c is chan]
            if not mine:
                break
            await self.evaluator.resolve(change, memo, [(c.claims, c.claims_key, w) for c, w in mine])
            deliveries, pending = self.index.route(change, decide, only)
        self._deliver(change, [d for d in deliveries if d.sub is chan], replay_for=chan)

    def _go_live(self, chan: Channel, after: int, replayed: int) -> None:
        chan.replaying = False
        if chan.tx_end and chan.open_tx:
            if self.log.committed >= chan.open_tx:
                self._send_tx_end(chan)
            else:
                self.open_tx.add(chan)  # the rest of its transaction comes live
        self.resumes += 1
        chan.conn.queue_frame(
            chan.system(
                "ok",
                f"Resumed: {replayed} changes replayed after {self.position(after)}",
                resumed_from=self.position(after),
                replayed=replayed,
                position=self.position(chan.cursor),
            )
        )
        chan.conn.flush()

    def _resync(
        self, chan: Channel, after: int, why: str, *, resume_from: str | None = None, restart: bool = False
    ) -> None:
        """Tell a channel it missed changes it cannot be given: refetch, then continue live.

        ``restart``: the channel's cursor is not a position of this stream (foreign, future or
        legacy): it continues from the fresh-join position, never from its own cursor (which
        may compare higher than every change to come).  ``resume_from``: the position to echo
        (the client's own text when it is not of this stream).
        """
        chan.replaying = False
        chan.cursor = self.fresh_cursor() if restart else max(chan.cursor, self.fresh_cursor())
        if resume_from is None:
            resume_from = self.position(after)
        chan.open_tx = 0
        self.resyncs += 1
        log.info("resync needed for %s on %s: %s", chan.topic, chan.conn.peer, why)
        chan.conn.queue_frame(
            chan.system(
                "error",
                f"resync needed: {why}; changes after {resume_from} may be missing. "
                f"Refetch, then continue from position {self.position(chan.cursor)}",
                code=Code.RESYNC_NEEDED,
                resume_from=resume_from,
                retained_from=self.position(self.log.retained_from),
                position=self.position(chan.cursor),
            )
        )
        chan.conn.flush()
