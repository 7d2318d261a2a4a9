"""Broadcast and presence across relay nodes, through Redis Pub/Sub (issue 17, item 4).

Why Pub/Sub and not a stream per topic: client broadcasts are ephemeral by contract (members
connected when a message is sent receive it; they are not part of the resume window), so a
stream's replay would buy nothing a client can ask for, and would cost Redis memory and a
trimming policy per topic.  Pub/Sub delivers a publishing connection's messages to every
subscriber in the order they were published, which is exactly "in send order per sender" when
each node publishes through one connection, from one writer task, in the order its sockets'
pushes arrived.  What Pub/Sub does not give (delivery while a subscriber is disconnected) is not
hidden: a node that loses Redis tells its channels (``system`` ``cluster_unavailable``), and again
when it is back (``cluster_restored``).

One channel per cluster (``relay:{<slot>}:rooms``): every node receives every client broadcast
and presence change and keeps what concerns its own members (a node drops a broadcast for a
room it has no member in).  Per-topic channels would save that filtering but add a SUBSCRIBE per
room join and a window at the first join where messages are missed.

Delivery: the sender's node fans out to its own members exactly as without Redis (``self``,
``ack``, order, all unchanged) and publishes; every *other* node fans the message out to its
members; a node ignores its own messages, so nobody receives one twice.  Database broadcasts
(``realtime.send``) are never published here: every node reads them from the shared change log.
Presence: see relay/cluster/presence.py (what Redis holds) and relay/core/remote_presence.py
(what each node mirrors).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.cluster.presence import HEARTBEAT, NODE_TTL, PresenceKeys, encode_entry, entry_from
from relay.core.broadcast import Broadcast
from relay.core.presence import Diff
from relay.core.protocol import dumps
from relay.core.remote_presence import RemoteEntry, RemotePresence, RoomKey, diff_entries
from relay.logs import redact
from relay.pipeline import backoff_delay

if TYPE_CHECKING:
    from relay.config import Config

__all__ = [
    "Bye",
    "ClusterRooms",
    "Hello",
    "PresenceChange",
    "RemoteBroadcast",
    "RoomsHub",
    "decode",
    "encode_broadcast",
    "encode_control",
    "encode_presence",
    "key_prefix",
    "node_names",
]

log = logging.getLogger("relay.cluster")

MAX_PENDING = 10_000  # messages waiting for Redis; beyond, broadcasts stay on this node (and say so)
BATCH = 256  # messages per MULTI
MAX_BACKOFF = 5.0


def key_prefix(slot: str) -> str:
    """``relay:{<slot>}:``: the braces keep one cluster's keys in one Redis Cluster hash slot."""
    return f"relay:{{{slot}}}:"


def node_names(config: Config) -> tuple[str, str]:
    """(node name, node instance): RELAY_NODE_ID (or host-pid), and that plus a per-start suffix.

    Why an instance: two relays in one process (tests) or a node restarted under the same name
    must not take each other's messages for their own, and a restarted node's previous
    presences must leave like a dead node's.
    """
    name = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
    return name, f"{name}/{os.urandom(3).hex()}"


# -- wire format: a JSON header, NUL, then the broadcast payload's bytes (if any) -----------------
@dataclass(frozen=True, slots=True)
class RemoteBroadcast:
    node: str
    name: str
    private: bool
    msg: Broadcast


@dataclass(frozen=True, slots=True)
class PresenceChange:
    node: str
    seq: int
    joins: list[RemoteEntry]
    leaves: list[str]


@dataclass(frozen=True, slots=True)
class Hello:
    """A node (re)wrote its whole presence hash at change ``seq``: reload it."""

    node: str
    seq: int


@dataclass(frozen=True, slots=True)
class Bye:
    """A node stopped cleanly: its presences leave now, not after the TTL."""

    node: str


Message = RemoteBroadcast | PresenceChange | Hello | Bye


def encode_broadcast(node: str, name: str, private: bool, msg: Broadcast) -> bytes:
    """The payload's bytes travel as they are (never re-parsed): what members get is what was sent."""
    head: dict[str, Any] = {"k": "b", "n": node, "t": name, "p": private, "e": msg.event, "c": msg.encoding}
    if msg.meta:
        head["m"] = msg.meta
    payload = msg.raw if msg.raw is not None else dumps(msg.value)
    return orjson.dumps(head) + b"\0" + payload


def encode_presence(node: str, seq: int, joins: list[RemoteEntry], leaves: list[str]) -> bytes:
    body = b",".join(encode_entry(e) for e in joins)
    head = orjson.dumps({"k": "p", "n": node, "s": seq, "l": leaves})
    return head[:-1] + b',"j":[' + body + b"]}\0"


def encode_control(kind: str, node: str, seq: int = 0) -> bytes:
    return orjson.dumps({"k": kind, "n": node, "s": seq}) + b"\0"


def decode(data: bytes) -> Message | None:
    """One published message, or None when it is not one of ours (or malformed: logged)."""
    head_raw, sep, payload = data.partition(b"\0")
    if not sep:
        return None
    try:
        head = orjson.loads(head_raw)
        kind, node = head["k"], head["n"]
        if not isinstance(node, str):
            return None
        if kind == "b":
            encoding = int(head["c"])
            meta = head.get("m")
            # value stays None: members get the bytes as they came (raw), nothing re-encodes them
            msg = Broadcast(str(head["e"]), None, payload, encoding, meta if isinstance(meta, dict) else None)
            return RemoteBroadcast(node, str(head["t"]), bool(head["p"]), msg)
        if kind == "p":
            joins = [e for e in (entry_from(j) for j in head["j"]) if e is not None]
            return PresenceChange(node, int(head["s"]), joins, [str(r) for r in head["l"]])
        if kind == "h":
            return Hello(node, int(head["s"]))
        if kind == "x":
            return Bye(node)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring a malformed cluster message: %s", exc)
    return None


class RoomsHub(Protocol):
    """What the link asks of this node's rooms (``relay.server.topics.TopicHub``, wired by the service)."""

    def remote_broadcast(self, name: str, private: bool, msg: Broadcast) -> None: ...
    def flush(self) -> None: ...
    def remote_presence(self, changes: dict[RoomKey, Diff]) -> None: ...
    def local_presences(self) -> list[RemoteEntry]: ...
    def cluster_notice(self, restored: bool) -> None: ...


@dataclass(slots=True)
class _Item:
    data: bytes
    seq: int = 0  # a presence change's number (0: a broadcast)
    joins: list[RemoteEntry] | None = None
    leaves: list[str] | None = None


def _redis(url: str, timeout: float | None) -> Redis:
    # No retries inside redis-py: its Pub/Sub would reconnect and resubscribe on its own, and a
    # gap in delivery would go unnoticed.  A failure ends the session; run() reconnects and says so.
    return Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class ClusterRooms:
    """This node's link to the others: publishes its rooms' traffic, applies theirs to its members.

    The hub calls :meth:`broadcast` and :meth:`presence` synchronously (they only queue), so a
    socket's pushes are queued for Redis in the order they arrived; one writer task sends them,
    in order, over one connection.
    """

    def __init__(
        self, config: Config, hub: RoomsHub, *, heartbeat: float = HEARTBEAT, node_ttl: float = NODE_TTL
    ) -> None:
        if not config.redis_url:
            raise ValueError("cluster rooms need RELAY_REDIS_URL")
        self.url = config.redis_url
        self.name, self.node = node_names(config)
        self.prefix = key_prefix(config.slot)
        self.channel = f"{self.prefix}rooms"
        self.keys = PresenceKeys(self.prefix, self.node, node_ttl)
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.hub = hub
        self.remote = RemotePresence()
        self.up = False
        self.error: str | None = "not connected to Redis yet"
        self.down_since = time.monotonic()
        self.outages = 0
        self.published = 0  # messages written to Redis
        self.received = 0  # broadcasts from other nodes delivered here
        self.local_only = 0  # client broadcasts that could reach this node's members only
        self._out: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._seq = 0
        self._rewrite = False
        self._was_up = False
        self._warned = False

    # -- from the hub (synchronous: never awaits) --------------------------------------------
    def broadcast(self, name: str, private: bool, msg: Broadcast) -> bool:
        """Queue a client (or REST) broadcast for the other nodes; False when it cannot go."""
        if not self.up or len(self._out) >= MAX_PENDING:
            self.local_only += 1
            return False
        self._out.append(_Item(encode_broadcast(self.node, name, private, msg)))
        self._wake.set()
        return True

    def presence(self, name: str, private: bool, diff: Diff) -> None:
        """A local presence change.  While Redis is away nothing is queued: the rewrite on
        reconnect carries the whole local state."""
        if not self.up:
            return
        if len(self._out) >= MAX_PENDING:
            self._rewrite = True  # too far behind: send the whole state instead of each change
            self._wake.set()
            return
        joins, leaves = diff_entries((name, private), diff)
        self._seq += 1
        data = encode_presence(self.node, self._seq, joins, leaves)
        self._out.append(_Item(data, self._seq, joins, leaves))
        self._wake.set()

    def room_for(self, n: int) -> bool:
        """Whether ``n`` more broadcasts can be queued for the other nodes right now."""
        return self.up and len(self._out) + n <= MAX_PENDING

    def ready_reasons(self) -> list[dict[str, str]]:
        if self.up:
            return []
        return [{"code": "redis_unavailable", "message": self.error or "Redis is unreachable"}]

    def stats(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "instance": self.node,
            "redis": "up" if self.up else "down",
            "error": None if self.up else self.error,
            "other_nodes": sorted(self.remote.nodes()),
            "remote_presences": self.remote.total(),
            "published": self.published,
            "received": self.received,
            "local_only": self.local_only,
            "outages": self.outages,
        }

    # -- the link ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, serve, and on any Redis failure say so and reconnect with backoff, until stopped."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._session(stop)
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
                attempt += 1
            except Exception as exc:  # a bug here must not end cross-node delivery for good
                log.exception("cluster rooms: unexpected error; reconnecting")
                self._down(exc)
                attempt += 1
            else:
                attempt = 0
            if stop.is_set():
                break
            try:
                async with asyncio.timeout(backoff_delay(attempt, MAX_BACKOFF)):
                    await stop.wait()
            except TimeoutError:
                pass
            self._expire_mirror()

    async def _session(self, stop: asyncio.Event) -> None:
        redis = _redis(self.url, 5.0)
        sub = _redis(self.url, None)
        pubsub = sub.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # wait for the confirmation: from here on nothing published is missed
            async with asyncio.timeout(5.0):
                while (await pubsub.get_message(timeout=1.0)) is None:
                    pass
            await self._sync(redis)
            self._up()
            tasks = [
                asyncio.create_task(self._reader(pubsub, redis), name="cluster-reader"),
                asyncio.create_task(self._writer(redis), name="cluster-writer"),
                asyncio.create_task(self._beat(redis), name="cluster-heartbeat"),
                asyncio.create_task(stop.wait(), name="cluster-stop"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            if stop.is_set():
                await self._goodbye(redis)
        finally:
            with suppress(Exception):
                await pubsub.aclose()
            with suppress(Exception):
                await sub.aclose()
            with suppress(Exception):
                await redis.aclose()

    async def _sync(self, redis: Redis) -> None:
        """(Re)connected: store our whole state, announce it, and load every other node's."""
        self._out.clear()
        self._rewrite = False
        await self._write_all(redis)
        members = await redis.smembers(self.keys.nodes)
        others = {m.decode(errors="replace") if isinstance(m, bytes) else m for m in members}
        others |= set(self.remote.nodes())
        others.discard(self.node)
        for n in sorted(others):
            await self._reload(redis, n)

    async def _write_all(self, redis: Redis) -> None:
        self._seq += 1
        seq = self._seq
        async with redis.pipeline(transaction=True) as pipe:
            self.keys.stage_rewrite(pipe, seq, self.hub.local_presences())
            pipe.publish(self.channel, encode_control("h", self.node, seq))
            await pipe.execute()
        self.published += 1

    async def _reload(self, redis: Redis, node: str) -> None:
        self.hub.flush()  # what the reader queued so far goes out before this round trip
        snap = await self.keys.snapshot(redis, node)
        if snap is None:
            self._apply(self.remote.drop(node))
            await self.keys.forget(redis, node)
            return
        seq, entries = snap
        self._apply(self.remote.replace(node, seq, entries))

    async def _reader(self, pubsub: PubSub, redis: Redis) -> None:
        """Apply what the other nodes publish; the sockets are written once per batch read.

        Why batches: a message per socket write costs a system call per member per message;
        everything Pub/Sub has already buffered (up to :data:`BATCH`) is queued first, then
        each touched socket is written once.  Order is unchanged (queues are per socket).
        """
        while True:
            raw = await pubsub.get_message(timeout=None)
            n = 0
            while raw is not None:
                await self._handle(raw, redis)
                n += 1
                if n >= BATCH:
                    break
                raw = await pubsub.get_message(timeout=0.0)
            self.hub.flush()

    async def _handle(self, raw: dict[str, Any], redis: Redis) -> None:
        if raw.get("type") != "message":
            return
        msg = decode(raw["data"])
        if msg is None or msg.node == self.node:
            return
        if type(msg) is RemoteBroadcast:
            self.received += 1
            self.hub.remote_broadcast(msg.name, msg.private, msg.msg)
        elif type(msg) is PresenceChange:
            changes = self.remote.apply(msg.node, msg.seq, msg.joins, msg.leaves)
            if changes is None:  # a change was missed: take the node's whole state
                await self._reload(redis, msg.node)
            else:
                self._apply(changes)
        elif type(msg) is Hello:
            held = self.remote.seq(msg.node)
            if held is None or held < msg.seq:
                await self._reload(redis, msg.node)
        elif type(msg) is Bye:
            self._apply(self.remote.drop(msg.node))

    async def _writer(self, redis: Redis) -> None:
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # cancelled (a stop) while a publish was in flight, and the Redis client took the
                # cancellation back: end now, or the stop waits on ``_wake`` for ever
                raise asyncio.CancelledError
            if self._rewrite:
                self._rewrite = False
                # the whole state supersedes the queued presence changes (they are in it)
                self._out = deque(i for i in self._out if i.seq == 0)
                await self._write_all(redis)
            if not self._out:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._out.popleft() for _ in range(min(BATCH, len(self._out)))]
            async with redis.pipeline(transaction=True) as pipe:
                for item in batch:
                    if item.seq:
                        self.keys.stage_change(pipe, item.seq, item.joins or [], item.leaves or [])
                    pipe.publish(self.channel, item.data)
                await pipe.execute()
            self.published += len(batch)

    async def _beat(self, redis: Redis) -> None:
        """Keep this node alive in Redis, and find the nodes that are not any more."""
        while True:
            await asyncio.sleep(self.heartbeat)
            had, members = await self.keys.beat(redis)
            if not had:  # Redis lost our hash (restarted empty): write it again
                log.warning("cluster presence: Redis lost this node's presences; writing them again")
                self._rewrite = True
                self._wake.set()
            others = sorted((members | set(self.remote.nodes())) - {self.node})
            alive = await self.keys.alive_nodes(redis, others)
            for n, ok in alive.items():
                if not ok:
                    changes = self.remote.drop(n)
                    if changes:
                        log.info("cluster presence: node %s stopped heartbeating; its presences leave", n)
                    self._apply(changes)
                    await self.keys.forget(redis, n)
                elif self.remote.seq(n) is None:
                    await self._reload(redis, n)

    async def _goodbye(self, redis: Redis) -> None:
        """A clean stop: the others drop our presences now instead of after the TTL."""
        with suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await self.keys.forget(redis, self.node)
                await redis.publish(self.channel, encode_control("x", self.node))

    # -- state changes -------------------------------------------------------------------------
    def _apply(self, changes: dict[RoomKey, Diff]) -> None:
        if changes:
            self.hub.remote_presence(changes)

    def _up(self) -> None:
        self.up = True
        self.error = None
        if self._was_up or self._warned:
            log.warning("cluster rooms: Redis is reachable again; broadcasts and presence are cluster-wide")
        # every channel told "unavailable" (also one that joined before the first connect) hears
        # that it is over
        self.hub.cluster_notice(restored=True)
        self._was_up = True
        self._warned = False

    def _down(self, exc: BaseException) -> None:
        text = redact(str(exc)) or type(exc).__name__
        was_up = self.up
        self.up = False
        self.error = f"Redis unreachable: {text}"
        self._out.clear()
        if was_up:
            self.outages += 1
            self.down_since = time.monotonic()
            self.hub.cluster_notice(restored=False)
        if was_up or not self._warned:
            self._warned = True
            log.warning("cluster rooms: %s; broadcasts reach this node's members only, retrying", self.error)

    def _expire_mirror(self) -> None:
        """Away from Redis longer than a node's TTL: nothing vouches for the others' presences."""
        if self.up or time.monotonic() - self.down_since < self.node_ttl:
            return
        for n in self.remote.nodes():
            self._apply(self.remote.drop(n))
