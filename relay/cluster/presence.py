"""Presence across nodes: each node's presences in Redis, kept alive by a heartbeat (issue 17).

Why one hash per node, with a TTL, rather than one per room: a node that dies (SIGKILL, a
partition) cannot say goodbye.  Its presences must leave on every other node within a bounded
time, so everything a node tracks lives under keys that expire unless the node refreshes them:

- ``relay:{<slot>}:presence:<node>`` (hash): ``s`` = the node's change number, and one field
  ``p:<phx_ref>`` = ``[channel name, private, presence key, meta]`` per presence;
- ``relay:{<slot>}:alive:<node>`` (string): exists while the node heartbeats;
- ``relay:{<slot>}:nodes`` (set): the nodes to look at (so a new node finds the others).

The node refreshes both keys every :data:`HEARTBEAT` seconds with a TTL of :data:`NODE_TTL`;
every node checks the ``alive`` key of every node it mirrors on the same beat.  A node that
stops heartbeating has its presences leave on the survivors within ``NODE_TTL + HEARTBEAT``
(12 s).  The expiry is Redis's clock, never a comparison of two machines' clocks.

``<node>`` is a node *instance* (RELAY_NODE_ID plus a random suffix per start): a node that
restarts under the same name is a new instance, and what its previous life tracked leaves like a
dead node's.  The braces put every key of one relay cluster in one Redis Cluster hash slot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.core.presence import UNENCODABLE
from relay.core.remote_presence import RemoteEntry

__all__ = [
    "HEARTBEAT",
    "NODE_TTL",
    "PresenceKeys",
    "decode_entry",
    "encode_entry",
    "entries_of",
    "entry_from",
    "parse_snapshot",
]

log = logging.getLogger("relay.cluster")

HEARTBEAT = 2.0  # seconds between a node's refreshes (and its checks of the others)
NODE_TTL = 10.0  # seconds a node's keys outlive its last heartbeat

SEQ_FIELD = b"s"
ENTRY_PREFIX = b"p:"


def encode_entry(e: RemoteEntry) -> bytes:
    """One presence as stored in a node's hash (``[name, private, key, meta]``)."""
    try:
        return orjson.dumps([e.room[0], e.room[1], e.key, e.meta])
    except TypeError:  # a meta that slipped past the checks: its placeholder, as locally
        meta = {k: e.meta[k] for k in ("phx_ref", "phx_ref_prev") if k in e.meta}
        return orjson.dumps([e.room[0], e.room[1], e.key, {**meta, "error": UNENCODABLE}])


def decode_entry(raw: bytes) -> RemoteEntry | None:
    try:
        return entry_from(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


def entry_from(obj: Any) -> RemoteEntry | None:
    """A stored or published ``[name, private, key, meta]``; None when malformed."""
    try:
        name, private, key, meta = obj
    except (ValueError, TypeError):
        return None
    if not (isinstance(name, str) and isinstance(private, bool) and isinstance(key, str)):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("phx_ref"), str):
        return None
    return RemoteEntry((name, private), key, meta)


def parse_snapshot(fields: Mapping[bytes, bytes]) -> tuple[int, dict[str, RemoteEntry]]:
    """A node's hash as (change number, {phx_ref: entry}); malformed fields are skipped."""
    try:
        seq = int(fields.get(SEQ_FIELD, b"0"))
    except ValueError:
        seq = 0
    entries: dict[str, RemoteEntry] = {}
    for name, raw in fields.items():
        if name.startswith(ENTRY_PREFIX):
            e = decode_entry(raw)
            if e is not None:
                entries[name[len(ENTRY_PREFIX) :].decode(errors="replace")] = e
    return seq, entries


class PresenceKeys:
    """The Redis keys and commands of cluster presence, for one slot's cluster."""

    def __init__(self, prefix: str, node: str, ttl: float = NODE_TTL) -> None:
        self.prefix = prefix
        self.node = node
        self.ttl_ms = int(ttl * 1000)
        self.nodes = f"{prefix}nodes"

    def hash(self, node: str) -> str:
        return f"{self.prefix}presence:{node}"

    def alive(self, node: str) -> str:
        return f"{self.prefix}alive:{node}"

    def stage_change(
        self, pipe: Pipeline, seq: int, joins: Iterable[RemoteEntry], leaves: Iterable[str]
    ) -> None:
        """Queue one change of this node's presences (in the writer's MULTI)."""
        key = self.hash(self.node)
        gone = [ENTRY_PREFIX + ref.encode() for ref in leaves]
        if gone:
            pipe.hdel(key, *gone)
        mapping: dict[bytes, bytes] = {SEQ_FIELD: str(seq).encode()}
        for e in joins:
            mapping[ENTRY_PREFIX + str(e.meta.get("phx_ref", "")).encode()] = encode_entry(e)
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.pexpire(key, self.ttl_ms)

    def stage_rewrite(self, pipe: Pipeline, seq: int, entries: Iterable[RemoteEntry]) -> None:
        """Queue a full rewrite of this node's hash (after a (re)connect: Redis may have lost it)."""
        key = self.hash(self.node)
        pipe.delete(key)
        mapping: dict[bytes, bytes] = {SEQ_FIELD: str(seq).encode()}
        for e in entries:
            mapping[ENTRY_PREFIX + str(e.meta.get("phx_ref", "")).encode()] = encode_entry(e)
        pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
        pipe.pexpire(key, self.ttl_ms)
        self.stage_alive(pipe)

    def stage_alive(self, pipe: Pipeline) -> None:
        pipe.set(self.alive(self.node), b"1", px=self.ttl_ms)
        pipe.sadd(self.nodes, self.node)

    async def beat(self, redis: Redis) -> tuple[bool, set[str]]:
        """Refresh this node's keys; returns (its hash still existed, the registered nodes).

        A hash that no longer exists means Redis lost it (a restart without the data, or an
        outage longer than the TTL): the caller rewrites it.
        """
        async with redis.pipeline(transaction=True) as pipe:
            pipe.pexpire(self.hash(self.node), self.ttl_ms)
            self.stage_alive(pipe)
            pipe.smembers(self.nodes)
            had, _, _, members = await pipe.execute()
        return bool(had), {m.decode(errors="replace") for m in members}

    async def alive_nodes(self, redis: Redis, nodes: list[str]) -> dict[str, bool]:
        if not nodes:
            return {}
        async with redis.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.exists(self.alive(n))
            found = await pipe.execute()
        return {n: bool(x) for n, x in zip(nodes, found, strict=True)}

    async def snapshot(self, redis: Redis, node: str) -> tuple[int, dict[str, RemoteEntry]] | None:
        """``node``'s presences, or None when it is not alive (its keys are cleaned up)."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.exists(self.alive(node))
            pipe.hgetall(self.hash(node))
            alive, fields = await pipe.execute()
        if not alive:
            return None
        return parse_snapshot(fields)

    async def forget(self, redis: Redis, node: str) -> None:
        """Remove a dead (or stopped) node's keys; any node may do it, more than once."""
        async with redis.pipeline(transaction=True) as pipe:
            pipe.srem(self.nodes, node)
            pipe.delete(self.hash(node), self.alive(node))
            await pipe.execute()


def entries_of(state: Mapping[str, Any], room: tuple[str, bool]) -> list[RemoteEntry]:
    """A local room's ``presence_state`` as entries (what a rewrite stores)."""
    return [RemoteEntry(room, key, meta) for key, section in state.items() for meta in section["metas"]]
