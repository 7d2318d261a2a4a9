"""One channel's protocol state: its bindings, its join on the current socket, its position.

Why a pure state machine: "no gaps, no duplicates across reconnects" comes down to a few rules
that must hold however frames and disconnects interleave — join with the last *processed*
position, accept a change only if its position is after it, never let a stale reply or the
``phx_close`` of a replaced join touch the current one, retry a refused rejoin but not a refused
first join.  Keeping them here, free of I/O, lets the unit tests drive every interleaving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from relay_client.codes import RETRYABLE_JOIN_CODES
from relay_client.options import ChannelOptions
from relay_client.protocol import (
    ChannelClosedByServer,
    Frame,
    Refusal,
    Resumed,
    SnapshotFailed,
    Subscribed,
    SystemEvent,
    binding_ids,
    join_frame,
    leave_frame,
    parse_reply,
    topic_of,
)
from relay_client.types import Binding, ChannelStates, ResyncNeeded, SnapshotComplete

__all__ = ["ChannelState", "ChannelStats", "ReplyOutcome", "same_stream"]


def same_stream(a: str, b: str) -> bool:
    """Whether two positions belong to one stream, and so compare as strings.

    Positions are ``"<stream id>/<lsn>:<index>"`` (legacy ones have no ``<stream id>/``); the
    stream id changes when the database behind the relay is another history, whose positions
    say nothing about ours.
    """
    return a.rpartition("/")[0] == b.rpartition("/")[0]


@dataclass(slots=True)
class ChannelStats:
    """Counters an application (or a test) can read to see what the channel went through."""

    joins: int = 0  # ok join replies (first join and rejoins)
    resumes: int = 0  # "Resumed" events: a rejoin caught up without a gap
    replayed: int = 0  # changes the relay replayed on resumes
    resyncs: int = 0  # "resync needed" events
    refusals: int = 0  # error join replies
    timeouts: int = 0  # joins that got no reply in time
    server_closes: int = 0  # the relay closed the channel (token expiry, refused token)
    changes: int = 0  # changes delivered to the application
    duplicates: int = 0  # changes dropped because their position was not after the last one
    broadcasts: int = 0  # broadcasts received
    broadcasts_sent: int = 0  # send_broadcast() calls that wrote their frame
    retracks: int = 0  # tracks the SDK sent by itself on a (re)join (the last tracked state)
    dropped: int = 0  # broadcast / presence stream items dropped because a stream was full
    snapshot_rows: int = 0  # snapshot rows delivered
    snapshots: int = 0  # snapshots completed (one per binding and join that asked)
    snapshot_errors: int = 0  # snapshots the relay could not send (snapshot_too_large, ...)


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """What a ``phx_reply`` meant for this channel."""

    kind: Literal["joined", "refused", "left"]
    reason: str | None = None
    final: bool = False  # refused and will not be retried (the very first join)
    code: str | None = None  # the refusal's code (relay_client.codes.Code)


@dataclass(slots=True)
class ChannelState:
    """Join bookkeeping of one channel; the I/O layer sends the frames it builds."""

    name: str
    position: str | None = None  # last processed position: what a rejoin resumes from
    options: ChannelOptions = field(default_factory=ChannelOptions)
    bindings: list[Binding] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)  # relay's id of each binding (last join)
    state: ChannelStates = ChannelStates.CLOSED
    wanted: bool = False  # subscribe() called and not unsubscribed: keep it joined
    joined_once: bool = False
    join_ref: str | None = None
    join_push: str | None = None  # ref of the phx_join awaiting its reply
    leave_push: str | None = None
    token_error: bool = False  # the relay closed us over the token: refresh before rejoining
    stats: ChannelStats = field(default_factory=ChannelStats)
    # Snapshots: which bindings still need their current rows (asked with snapshot=True, or all
    # of them after a resync with resync_snapshot), which ones the current join asked for, and
    # the number of the last join that asked (stamped on snapshot events).
    resync_snapshot: bool = False  # on_resync="snapshot": rejoin with a snapshot after a resync
    snapshot_due: set[int] = field(default_factory=set)
    snapshot_join: frozenset[int] = frozenset()
    snapshot_seq: int = 0

    @property
    def topic(self) -> str:
        return topic_of(self.name)

    # -- configuration ------------------------------------------------------------------
    def add_binding(self, binding: Binding) -> int:
        if self.wanted or self.joined_once:
            raise RuntimeError("add on_postgres_changes() bindings before subscribe()")
        self.bindings.append(binding)
        self.ids.append(None)
        if binding.snapshot:
            self.snapshot_due.add(len(self.bindings) - 1)
        return len(self.bindings) - 1

    def needs_join(self) -> bool:
        return self.wanted and self.state in (ChannelStates.CLOSED, ChannelStates.ERRORED)

    # -- join / leave ---------------------------------------------------------------------
    def begin_join(self, ref: str, join_ref: str, token: str | None, presence: bool = False) -> Frame:
        """The ``phx_join`` to send now; resumes from the last processed position if any.

        ``presence``: ask for the room's presence state and diffs from the join on.

        Snapshots: every binding whose snapshot has not completed yet asks for one again — a
        join lost during its snapshot restarts the snapshot, it never resumes past it.  When
        every binding asks, the join is a fresh one (no ``resume_from``: the snapshots hold
        everything before their point); otherwise the other bindings resume from the channel's
        position in the same join (the relay serves both).  Either way the marker's position,
        after which the relay sends every change the channel still needs, becomes the channel's.
        """
        self.state = ChannelStates.JOINING
        self.join_ref, self.join_push = join_ref, ref
        self.token_error = False
        self.snapshot_join = frozenset(self.snapshot_due)
        if self.snapshot_join:
            self.snapshot_seq += 1
        fresh = bool(self.bindings) and len(self.snapshot_join) == len(self.bindings)
        opts = self.options
        return join_frame(
            self.topic,
            ref,
            join_ref,
            self.bindings,
            token,
            None if fresh else self.position,
            broadcast_self=opts.broadcast_self,
            broadcast_ack=opts.broadcast_ack,
            presence_key=opts.presence_key,
            presence_enabled=presence,
            private=opts.private,
            snapshot=self.snapshot_join,
        )

    def force_rejoin(self) -> bool:
        """Join again on the same socket (the relay replaces the current join); True if it will.

        Used to turn presence on when listeners are added to a joined channel, as the official
        client does.  The rejoin resumes from the last processed position, so no change is lost.
        """
        if not self.wanted or self.state is not ChannelStates.JOINED:
            return False
        self.state = ChannelStates.ERRORED
        return True

    def begin_leave(self, ref: str) -> Frame | None:
        """Stop wanting the channel; the ``phx_leave`` to send, if it is joined (or joining)."""
        self.wanted = False
        if self.state in (ChannelStates.JOINED, ChannelStates.JOINING):
            self.state = ChannelStates.LEAVING
            self.join_push, self.leave_push = None, ref
            return leave_frame(self.topic, ref, self.join_ref)
        self.state = ChannelStates.CLOSED
        return None

    def on_reply(self, ref: str | None, payload: Any) -> ReplyOutcome | None:
        """A ``phx_reply`` on our topic; None if it answers nothing current (stale ref)."""
        if ref is not None and ref == self.join_push:
            self.join_push = None
            ok, response = parse_reply(payload)
            if ok:
                self.state = ChannelStates.JOINED
                self.ids = binding_ids(response, len(self.bindings))
                self.joined_once = True
                self.stats.joins += 1
                return ReplyOutcome("joined")
            self.stats.refusals += 1
            refusal: Refusal = response
            # A first join's refusal is final (a bad binding stays bad), unless its code says
            # it passes by itself (Postgres unreachable): that one is retried with backoff.
            final = not self.joined_once and refusal.code not in RETRYABLE_JOIN_CODES
            if final:
                self.wanted = False
            self.state = ChannelStates.ERRORED if self.wanted else ChannelStates.CLOSED
            return ReplyOutcome("refused", refusal.reason, final, refusal.code)
        if ref is not None and ref == self.leave_push:
            self.leave_push = None
            self.state = ChannelStates.CLOSED
            return ReplyOutcome("left")
        return None

    def on_close(self, ref: str | None) -> bool:
        """``phx_close``: True if it closed our current join (not a replaced one)."""
        if ref is None or ref != self.join_ref or self.state == ChannelStates.CLOSED:
            return False
        self.join_push = None
        if self.state == ChannelStates.LEAVING:
            self.leave_push = None
            self.state = ChannelStates.CLOSED
            return True
        self.stats.server_closes += 1
        self.state = ChannelStates.ERRORED if self.wanted else ChannelStates.CLOSED
        return True

    def join_timed_out(self) -> bool:
        if self.state != ChannelStates.JOINING:
            return False
        self.stats.timeouts += 1
        self.join_push = None
        self.state = ChannelStates.ERRORED
        return True

    def on_disconnect(self) -> None:
        """The socket is gone: every join on it is gone too."""
        self.join_push = self.leave_push = None
        if self.state == ChannelStates.LEAVING or not self.wanted:
            self.state = ChannelStates.CLOSED
        elif self.state in (ChannelStates.JOINED, ChannelStates.JOINING):
            self.state = ChannelStates.ERRORED

    # -- positions --------------------------------------------------------------------------
    def _advance(self, position: str | None) -> None:
        if position is None:
            return
        if self.position is None or not same_stream(position, self.position) or position > self.position:
            self.position = position

    def on_system(self, event: SystemEvent) -> None:
        """Track where the channel stands after Subscribed / Resumed / resync events."""
        if isinstance(event, Subscribed):
            self._advance(event.position)  # fresh join: changes after it come
        elif isinstance(event, Resumed):
            self.stats.resumes += 1
            self.stats.replayed += event.replayed
            self._advance(event.position)
        elif isinstance(event, ResyncNeeded):
            self.stats.resyncs += 1
            # The relay continues live after its position, which may compare *lower* than ours:
            # ours may come from another stream (database restored, failed over, replaced) or
            # from the future.  Taken as is, or every later change would look like a duplicate.
            if event.position is not None:
                self.position = event.position
            if self.resync_snapshot:
                self.snapshot_due = set(range(len(self.bindings)))
        elif isinstance(event, SnapshotComplete):
            self.stats.snapshots += 1
            self.snapshot_due.difference_update(self._indexes_of(event.binding_id))
            if event.position is not None:
                # Every change the channel still needs comes after the marker (the relay's
                # promise, for the bindings that resume in the same join too): it is the
                # channel's position, whatever it held before (maybe of another stream).
                self.position = event.position
        elif isinstance(event, SnapshotFailed):
            self.stats.snapshot_errors += 1
            # Not asked again on the next join: the same query would fail the same way.
            self.snapshot_due.difference_update(self._indexes_of(event.binding_id))
        elif isinstance(event, ChannelClosedByServer):
            self.token_error = event.token

    def is_new(self, position: str) -> bool:
        """Whether a change at ``position`` comes after everything processed (else: a duplicate)."""
        if self.position is not None and same_stream(position, self.position) and position <= self.position:
            self.stats.duplicates += 1
            return False
        return True

    def processed(self, position: str) -> None:
        """The change at ``position`` reached the application: rejoins resume after it."""
        self._advance(position)
        self.stats.changes += 1

    def _indexes_of(self, binding_id: int | None) -> list[int]:
        """Our bindings a snapshot event is about (all the current join asked for, if no id)."""
        if binding_id is None:
            return sorted(self.snapshot_join)
        return [i for i, bid in enumerate(self.ids) if bid == binding_id]

    def binding_indexes(self, ids: tuple[int, ...]) -> list[int]:
        """Which of our bindings a change's ``ids`` matched."""
        wanted = set(ids)
        return [i for i, bid in enumerate(self.ids) if bid is not None and bid in wanted]
