"""Broadcast and presence for joined topics: admission, fan-out and departure.

Why one hub: broadcast and presence share the room a channel joins, the topic policies that
admit it (private channels) and the moment it leaves (leave, socket close, heartbeat timeout).
Sends never await: a broadcast is queued on every member's socket in the call that received it,
so one sender's messages reach each member in send order, and a database message
(``realtime.send``) is queued in stream order with the row changes around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from relay.config import Config
from relay.core.broadcast import (
    Broadcast,
    BroadcastError,
    BroadcastFrames,
    checked,
    db_message_time,
    from_db_message,
)
from relay.core.broadcast_history import BroadcastHistory
from relay.core.errors import Code, RelayError
from relay.core.payload_limits import PayloadRejected, check_json
from relay.core.presence import Diff, PresenceError, repair_metas
from relay.core.protocol import Frame, dumps, encode, ws_text_frame
from relay.core.quotas import MESSAGES, PRESENCE_EVENTS, PRESENCE_KEYS
from relay.core.remote_presence import RemoteEntry, RemotePresence, RoomKey
from relay.core.rooms import Room, Rooms
from relay.postgres.availability import database_unreachable
from relay.postgres.topic_policies import PUBLIC_GRANTS, TopicAuthorizer, TopicGrants, TopicPolicyError
from relay.server.metrics import RelayMetrics
from relay.server.outbox import Outbox

if TYPE_CHECKING:
    from relay.server.channel import Channel
    from relay.server.feed import ChangeFeed

__all__ = ["JoinRefused", "RoomsLink", "TopicHub"]

log = logging.getLogger("relay.topics")


class JoinRefused(RelayError):
    """A private channel the token may not read; ``str()`` is the reply reason."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAUTHORIZED, message)


def read_denied(name: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {name}"


def write_denied(name: str) -> str:
    return f"Unauthorized: You do not have permissions to write to this Channel topic: {name}"


class RoomsLink(Protocol):
    """Cluster mode: what the hub asks of the link to the other nodes (relay/cluster/rooms.py).

    A protocol, so the serving side names no cluster module (the service wires the two).  The
    calls that send only queue: they never await, so a socket's pushes keep their order.
    """

    up: bool
    error: str | None
    remote: RemotePresence  # the other nodes' presences, as this node last heard of them

    def broadcast(self, name: str, private: bool, msg: Broadcast) -> bool: ...
    def presence(self, name: str, private: bool, diff: Diff) -> None: ...
    def room_for(self, n: int) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def ready_reasons(self) -> list[dict[str, str]]: ...


class TopicHub:
    """Rooms of the relay's joined channels, with their presence."""

    def __init__(
        self,
        config: Config,
        metrics: RelayMetrics,
        outbox: Outbox,
        feed: ChangeFeed,
        authorizer: TopicAuthorizer,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.outbox = outbox
        self.feed = feed  # for the live floor and the joined channels, never written to
        self.authorizer = authorizer
        self.rooms: Rooms[Channel] = Rooms()
        self.broadcasts = 0  # messages accepted (client, REST and database)
        self.db_broadcasts = 0
        self.history = BroadcastHistory()  # database broadcasts kept for broadcast.replay
        self.history.start(_now_ms())
        self.denied = 0
        self.refused = 0  # payloads over a limit, and presences beyond a bound
        self.presence_errors = 0  # stored metas replaced because they could not be encoded
        self._recheck: asyncio.Task[None] | None = None
        # cluster mode (RELAY_REDIS_URL): the link to the other nodes; None = this node is all
        self.cluster: RoomsLink | None = None
        self._told: weakref.WeakSet[Channel] = weakref.WeakSet()  # told "cluster unavailable"

    # -- admission ----------------------------------------------------------------------------
    async def grants(self, name: str, private: bool, claims: Mapping[str, Any]) -> TopicGrants:
        """What ``claims`` may do on a topic: everything on a public one, policies on a private one.

        ``service_role`` bypasses topic policies, as it bypasses row level security.
        """
        if not private or claims.get("role") == "service_role":
            return PUBLIC_GRANTS
        try:
            return await self.authorizer.grants(name, claims)
        except TopicPolicyError as exc:
            if database_unreachable(exc):
                raise  # not a refusal: the join answers "unable to connect", which clients retry
            log.error("topic policies for %s could not be evaluated: %s", name, exc)
            raise JoinRefused(f"Unauthorized: topic policies could not be checked: {exc}") from None

    async def admit(self, name: str, private: bool, claims: Mapping[str, Any]) -> TopicGrants:
        grants = await self.grants(name, private, claims)
        if not grants.can_join:
            self.denied += 1
            for err in grants.errors:
                log.warning("topic policy error for %s: %s", name, err)
            raise JoinRefused(read_denied(name))
        return grants

    def enter(self, chan: Channel) -> None:
        """Join the channel's room (after its join reply) and send it the presence state."""
        chan.room = self.rooms.join(chan.name, chan.private, chan)
        self.metrics.joined(chan.private, bool(chan.specs), chan.presence_enabled)
        if chan.presence_enabled and chan.grants.presence_read:
            self._send_state(chan)
        if self.cluster is not None and not self.cluster.up:
            self._tell_unavailable(chan)

    def leave(self, chan: Channel) -> None:
        """Leave the room; its presence leaves with it and the others are told."""
        room = chan.room
        if room is None:
            return
        chan.room = None
        diff = room.presence.untrack(chan)
        self.rooms.leave(room, chan)
        if diff is not None:
            self._local_diff(room, diff)

    # -- broadcast ----------------------------------------------------------------------------
    def client_broadcast(self, chan: Channel, f: Frame, msg: Broadcast) -> None:
        """A member's (parsed) broadcast push, text or binary: check, fan out, and ack if asked."""
        conn = chan.conn
        if not conn.within(conn.message_rate, f, MESSAGES):
            return
        if not chan.grants.broadcast_write:
            self.denied += 1
            conn.reply_error(f, write_denied(chan.name), Code.UNAUTHORIZED)
            return
        try:
            msg = checked(msg, self.config.payload_limits)
        except PayloadRejected as exc:
            self.refused += 1
            conn.reply_error(f, exc.reason, exc.code)
            return
        room = chan.room
        if room is not None:
            self.fan_out(room, msg, exclude=None if chan.bcast_self else chan)
            # the other nodes' members: after the local ones, in this socket's push order
            if self.cluster is not None and not self.cluster.broadcast(room.name, room.private, msg):
                self._tell_unavailable(chan)
        if chan.bcast_ack:
            conn.send_frame(Frame(f.topic, "phx_reply", {"status": "ok", "response": {}}, f.ref, f.join_ref))

    def fan_out(
        self, room: Room[Channel], msg: Broadcast, exclude: Channel | None = None, flush: bool = True
    ) -> int:
        """Queue ``msg`` on every member that may read it; returns how many got it.

        ``flush=False``: the caller ends the batch (:meth:`flush`), one write per socket for all
        the messages it queued.
        """
        self.broadcasts += 1
        frames = BroadcastFrames(f"realtime:{room.name}", msg)
        sent = 0
        for member in room.members:
            if member is exclude or member.closed or not member.grants.broadcast_read:
                continue
            conn = member.conn
            conn.push(frames.get(conn.vsn, conn.raw))
            sent += 1
        if flush:
            self.outbox.flush()
        return sent

    def flush(self) -> None:
        """End a batch of :meth:`remote_broadcast` calls: write what they queued."""
        self.outbox.flush()

    def publish(self, name: str, private: bool, msg: Broadcast, *, cluster: bool = False) -> int:
        """A broadcast with no sending member (REST, database): to every reader of the room.

        ``cluster``: also to the other nodes' members (REST; a database broadcast reaches every
        node through the change log, so it is never published again).
        """
        name = name.removeprefix("realtime:")
        if cluster and self.cluster is not None:
            self.cluster.broadcast(name, private, msg)
        room = self.rooms.get(name, private)
        if room is None:
            self.broadcasts += 1
            return 0
        return self.fan_out(room, msg)

    def cluster_unavailable(self, n: int = 1) -> str | None:
        """Why ``n`` broadcasts could not reach the other nodes now (None: they can, or no cluster)."""
        if self.cluster is None or self.cluster.room_for(n):
            return None
        if self.cluster.up:
            return "too many messages are waiting for Redis"
        return self.cluster.error or "Redis is unreachable"

    def db_message(self, msg: dict[str, Any], commit_seq: int) -> None:
        """``realtime.send`` from the WAL, at its place in commit order.

        A message committed before this relay started (the window Postgres decodes again after
        a restart) was already delivered, or was sent while nobody could receive it: never twice.
        """
        try:
            name, private, bmsg = from_db_message(msg)
            bmsg = checked(bmsg, self.config.payload_limits)
        except BroadcastError as exc:
            log.warning("ignoring malformed realtime.send message: %s", exc)
            return
        except PayloadRejected as exc:  # nobody to answer: say it in the log, never crash the stream
            self.refused += 1
            log.warning("ignoring realtime.send message to %r: %s", msg.get("topic"), exc)
            return
        if private:  # replayable (broadcast.replay is for private channels only, as upstream)
            ts = db_message_time(msg)
            self.history.record(name, ts if ts is not None else _now_ms(), bmsg)
        if commit_seq <= self.feed.live_floor:
            return
        self.db_broadcasts += 1
        self.publish(name, private, bmsg)

    def replay(self, chan: Channel, since: int, limit: int) -> None:
        """``config.broadcast.replay``: the recent database broadcasts, before any live one.

        Called in the same step as the join reply (no await in between), so every later live
        message follows the replayed ones.  When the relay no longer holds everything asked
        for, the channel is told so (``broadcast_replay_incomplete``) rather than left guessing.
        """
        if not chan.grants.broadcast_read:
            return
        found = self.history.since(chan.name, since, limit, _now_ms())
        conn = chan.conn
        for msg in found.messages:
            conn.push(BroadcastFrames(chan.topic, msg.replayed()).get(conn.vsn, conn.raw))
        if not found.complete:
            conn.queue_frame(
                chan.system(
                    "ok",
                    "broadcast replay incomplete: the relay holds this topic's messages only since "
                    f"{found.complete_from} (ms since the epoch)",
                    extension="broadcast",
                    code=Code.BROADCAST_REPLAY_INCOMPLETE,
                    complete_from=found.complete_from,
                )
            )
        self.outbox.flush()

    # -- presence -----------------------------------------------------------------------------
    def presence_push(self, chan: Channel, f: Frame) -> None:
        """``track`` / ``untrack`` from a member (realtime-py omits ``type``)."""
        conn = chan.conn
        payload = f.payload if isinstance(f.payload, dict) else {}
        event = payload.get("event")
        if event not in ("track", "untrack"):
            conn.reply_error(f, 'a presence push has "event": "track" or "untrack"', Code.PRESENCE_INVALID)
            return
        if not conn.within(conn.presence_rate, f, PRESENCE_EVENTS):
            return
        meta = payload.get("payload", {})
        max_keys = self.config.max_presence_keys
        if event == "track" and max_keys and isinstance(meta, dict) and len(meta) > max_keys:
            conn.refuse(f, PRESENCE_KEYS)
            return
        self.metrics.presence_events[event] += 1
        if event == "track" and not chan.grants.presence_write:  # leaving is always allowed
            self.denied += 1
            conn.reply_error(f, write_denied(chan.name), Code.UNAUTHORIZED)
            return
        room = chan.room
        if room is None:
            conn.reply_error(f, "unmatched topic", Code.UNMATCHED_TOPIC)
            return
        if event == "track":
            try:
                diff: Diff | None = self._track(chan, room, meta)
            except PayloadRejected as exc:
                self.refused += 1
                conn.reply_error(f, exc.reason, exc.code)
                return
            except PresenceError as exc:
                if exc.code != Code.PRESENCE_INVALID:
                    self.refused += 1
                conn.reply_error(f, exc.reason, exc.code)
                return
        else:
            diff = room.presence.untrack(chan)
        conn.send_frame(Frame(f.topic, "phx_reply", {"status": "ok", "response": {}}, f.ref, f.join_ref))
        if diff is not None:
            self._local_diff(room, diff)

    def _track(self, chan: Channel, room: Room[Channel], meta: Any) -> Diff:
        """Check ``meta`` and the bounds, then track it: nothing is stored unless all pass.

        Why bounds per socket as well as per payload: one anonymous socket tracking a 200 kB
        meta on 400 channels grew the relay by 141 MiB.  A socket's presences (count and encoded
        bytes, over all its channels) and a room's presences are bounded; beyond, the track is
        refused with a code and the previous presence, if any, stays.
        """
        if not isinstance(meta, dict):
            raise PresenceError("a presence payload (the tracked state) must be a JSON object")
        cfg = self.config
        size = len(check_json(meta, cfg.payload_limits, "presence payload"))
        count, total = 1, size
        for other in chan.conn.channels.values():
            if other is not chan and other.room is not None:
                n = other.room.presence.size_of(other)
                if n is not None:
                    count, total = count + 1, total + n
        if count > cfg.max_socket_presences:
            raise PresenceError(
                f"this socket already tracks its limit of {cfg.max_socket_presences} presences "
                "(untrack one first)",
                Code.TOO_MANY_PRESENCES,
            )
        if total > cfg.max_socket_presence_bytes:
            raise PresenceError(
                f"presence payloads of this socket would total {total} bytes, over the limit of "
                f"{cfg.max_socket_presence_bytes}",
                Code.PRESENCE_TOO_LARGE,
            )
        if self.cluster is not None and room.presence.key_of(chan) is None:
            # the room's limit is cluster-wide: other nodes' presences count (as this node
            # knows them; two nodes admitting the last place at the same moment may overshoot)
            held = len(room.presence) + self.cluster.remote.count((room.name, room.private))
            if held >= cfg.max_room_presences:
                raise PresenceError(
                    f"this room already holds its limit of {cfg.max_room_presences} presences",
                    Code.ROOM_PRESENCE_FULL,
                )
        if not chan.presence_enabled:
            # tracking turns presence on for this channel (its listeners were added after the
            # join): it needs the state before the first diff
            chan.presence_enabled = True
            if chan.grants.presence_read:
                self._send_state(chan)
        return room.presence.track(chan, chan.presence_key, meta, size, cfg.max_room_presences)

    def presence_state(self, room: Room[Channel]) -> dict[str, Any]:
        """The room's ``presence_state``, guaranteed encodable (unencodable entries repaired)."""
        state = self._state(room)
        try:
            dumps(state)
        except TypeError:
            self._repair(room)
            state = self._state(room)
        return state

    def _state(self, room: Room[Channel]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """This node's presences of the room, and in cluster mode the other nodes' after them."""
        state = room.presence.state()
        if self.cluster is not None:
            for key, section in self.cluster.remote.state((room.name, room.private)).items():
                mine = state.get(key)
                state[key] = section if mine is None else {"metas": mine["metas"] + section["metas"]}
        return state

    def _repair(self, room: Room[Channel]) -> None:
        n = room.presence.repair()
        self.presence_errors += n
        log.error("room %s: %d presence meta(s) could not be encoded and were replaced", room.name, n)

    def _send_state(self, chan: Channel) -> None:
        room = chan.room
        if room is None:
            chan.conn.send_frame(Frame(chan.topic, "presence_state", {}))
            return
        try:
            chan.conn.send_frame(Frame(chan.topic, "presence_state", self._state(room)))
        except TypeError:  # a stored meta that cannot be encoded: repair the room, never break it
            self._repair(room)
            chan.conn.send_frame(Frame(chan.topic, "presence_state", self._state(room)))

    def _local_diff(self, room: Room[Channel], diff: Diff) -> None:
        """A change of this node's presences: to its members, and to the other nodes."""
        self._send_diff(room, diff)
        if self.cluster is not None:
            self.cluster.presence(room.name, room.private, diff)

    def _send_diff(self, room: Room[Channel], diff: Diff) -> None:
        topic = f"realtime:{room.name}"
        frame = Frame(topic, "presence_diff", diff)
        cache: dict[tuple[str, bool], bytes | str] = {}
        for member in room.members:
            if member.closed or not member.presence_enabled or not member.grants.presence_read:
                continue
            conn = member.conn
            key = (conn.vsn, conn.raw)
            out = cache.get(key)
            if out is None:
                try:
                    text = encode(frame, conn.vsn)
                except TypeError:  # defence in depth, as in _send_state: placeholders, counted
                    self.presence_errors += repair_metas(diff["joins"]) + repair_metas(diff["leaves"])
                    room.presence.repair()
                    log.error(
                        "room %s: presence diff metas could not be encoded and were replaced", room.name
                    )
                    text = encode(frame, conn.vsn)
                out = cache[key] = ws_text_frame(text.encode()) if conn.raw else text
            conn.push(out)
        self.outbox.flush()

    # -- policy changes -------------------------------------------------------------------------
    def policies_changed(self, xid: str | None = None) -> None:
        """A topic policy was created or dropped (by transaction ``xid``): re-check private channels."""
        if self._recheck is not None and not self._recheck.done():
            self._recheck.cancel()
        self._recheck = asyncio.get_running_loop().create_task(self._after(xid), name="topic-recheck")

    async def _after(self, xid: str | None) -> None:
        if xid:
            try:
                if not await self.authorizer.wait_visible(xid):
                    log.warning("topic policy change %s not visible after 5 s; re-checking anyway", xid)
            except Exception as exc:  # the re-check below reports what is wrong with Postgres
                log.warning("cannot wait for topic policy change %s: %s", xid, exc)
        await self.recheck()

    async def recheck(self, chans: Iterable[Channel] | None = None) -> None:
        """Re-evaluate private channels' grants; a channel that may no longer read is closed."""
        todo = list(chans) if chans is not None else [ch for ch in list(self.feed.channels) if ch.private]
        for chan in todo:
            if chan.closed:
                continue
            try:
                grants = await self.grants(chan.name, chan.private, chan.claims)
            except JoinRefused as exc:
                log.error("keeping %s: %s", chan.topic, exc)
                continue
            if chan.closed:
                continue
            if not grants.can_join:
                chan.conn.revoke(chan, read_denied(chan.name), Code.UNAUTHORIZED)
                continue
            self._regrant(chan, grants)

    def _regrant(self, chan: Channel, grants: TopicGrants) -> None:
        """Apply new grants to a joined channel, so what it sees matches what it may do.

        Losing presence read empties its presence view (an empty ``presence_state``: every key
        leaves); gaining it sends the current state.  Losing presence write withdraws what it
        tracked, and the room is told.
        """
        old, chan.grants = chan.grants, grants
        room = chan.room
        if room is None:
            return
        if old.presence_write and not grants.presence_write:
            diff = room.presence.untrack(chan)
            if diff is not None:
                self._local_diff(room, diff)
        if chan.presence_enabled and old.presence_read != grants.presence_read:
            if grants.presence_read:
                self._send_state(chan)
            else:
                chan.conn.send_frame(Frame(chan.topic, "presence_state", {}))

    # -- cluster mode: what the other nodes send (relay/cluster/rooms.py) -----------------------
    def remote_broadcast(self, name: str, private: bool, msg: Broadcast) -> None:
        """A client or REST broadcast sent on another node: to this node's readers of the room.

        Queued only: the link calls :meth:`flush` after each batch it read from Redis.
        """
        room = self.rooms.get(name, private)
        if room is not None:
            self.fan_out(room, msg, flush=False)

    def remote_presence(self, changes: dict[RoomKey, Diff]) -> None:
        """Other nodes' presences changed (tracked, left, node gone, re-synced): tell the rooms."""
        for (name, private), diff in changes.items():
            room = self.rooms.get(name, private)
            if room is not None:
                self._send_diff(room, diff)

    def remote_state(self, name: str, private: bool) -> dict[str, Any]:
        """Other nodes' presences of a room with no member here ({} without a cluster)."""
        return {} if self.cluster is None else self.cluster.remote.state((name, private))

    def local_presences(self) -> list[RemoteEntry]:
        """Every presence this node holds, as the other nodes store it (a full rewrite)."""
        out: list[RemoteEntry] = []
        for room in self.rooms:
            key = (room.name, room.private)
            for pkey, section in room.presence.state().items():
                out.extend(RemoteEntry(key, pkey, meta) for meta in section["metas"])
        return out

    def cluster_notice(self, restored: bool) -> None:
        """This node lost Redis (or got it back): every joined channel is told, never left guessing."""
        if not restored:
            for room in self.rooms:
                for chan in list(room.members):
                    self._tell_unavailable(chan)
            return
        for chan in list(self._told):
            if not chan.closed:
                chan.conn.send_frame(
                    chan.system(
                        "ok",
                        "cluster restored: broadcasts and presence reach every relay node again; "
                        "broadcasts sent on other nodes while Redis was unreachable were not received",
                        extension="broadcast",
                        code=Code.CLUSTER_RESTORED,
                    )
                )
        self._told = weakref.WeakSet()

    def _tell_unavailable(self, chan: Channel) -> None:
        """Once per outage per channel: broadcasts and presence are this node's only for now."""
        if chan in self._told or chan.closed:
            return
        self._told.add(chan)
        chan.conn.send_frame(
            chan.system(
                "ok",
                "cluster unavailable: this relay node cannot reach Redis; broadcasts and presence "
                "reach (and come from) members on this node only until it is back",
                extension="broadcast",
                code=Code.CLUSTER_UNAVAILABLE,
            )
        )

    # -- statistics -----------------------------------------------------------------------------
    def room_stats(self) -> list[dict[str, Any]]:
        """This node's rooms; in cluster mode with the room's presences on every node."""
        remote = self.cluster.remote if self.cluster is not None else None
        out: list[dict[str, Any]] = []
        for room in sorted(self.rooms, key=lambda r: (r.name, r.private)):
            row: dict[str, Any] = {
                "topic": room.name,
                "private": room.private,
                "members": len(room.members),
                "presences": len(room.presence),
            }
            if remote is not None:
                row["cluster_presences"] = len(room.presence) + remote.count((room.name, room.private))
            out.append(row)
        return out

    def room_users(self, name: str, private: bool) -> dict[str, Any] | None:
        room = self.rooms.get(name, private)
        if room is None:
            return None
        return {
            "topic": room.name,
            "private": room.private,
            "members": [
                {
                    "sub": ch.claims.get("sub"),
                    "role": ch.claims.get("role"),
                    "presence_key": room.presence.key_of(ch),
                    "peer": ch.conn.peer,
                    "joined_at": ch.joined_at,
                }
                for ch in room.members
            ],
            "presence": self.presence_state(room),
        }


def _now_ms() -> int:
    return int(time.time() * 1000)
