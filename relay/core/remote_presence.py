"""Presences tracked on *other* relay nodes, as this node last heard of them (cluster mode).

Why a mirror in memory: a channel's ``presence_state`` is sent in the same step as its join
reply (no await in between, so no diff can slip between state and reply).  Asking Redis at that
moment would break that, so every node keeps a copy of every other node's presences, fed by the
nodes' diffs (Redis Pub/Sub) and repaired from their snapshots (one Redis hash per node).

Why sequence numbers: Pub/Sub delivers a node's diffs in order but may lose them (a dropped
connection), and a snapshot read races with diffs in flight.  Each node numbers its changes; a
snapshot carries the number it is current to.  A diff at or below what is held was already
applied (skip it), the next one is applied, and one further ahead means something was missed:
the caller reloads that node's snapshot.  Joins and leaves are keyed by ``phx_ref``, so the
same change applied twice is harmless.

Pure: no I/O.  Every method returns the ``presence_diff`` payloads to send to this node's
members, per room, so the caller only has to deliver them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.presence import Diff

__all__ = ["RemoteEntry", "RemotePresence", "RoomKey", "diff_entries"]

RoomKey = tuple[str, bool]  # (channel name, private)


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One presence on another node: its room, its presence key and its meta (with ``phx_ref``)."""

    room: RoomKey
    key: str
    meta: dict[str, Any]


@dataclass(slots=True)
class _Node:
    seq: int = 0
    entries: dict[str, RemoteEntry] = field(default_factory=dict)  # phx_ref -> entry


class _Changes:
    """Accumulates per-room joins and leaves, in the order they happened."""

    def __init__(self) -> None:
        self.rooms: dict[RoomKey, Diff] = {}

    def _diff(self, room: RoomKey) -> Diff:
        d = self.rooms.get(room)
        if d is None:
            d = self.rooms[room] = {"joins": {}, "leaves": {}}
        return d

    def join(self, e: RemoteEntry) -> None:
        self._diff(e.room)["joins"].setdefault(e.key, {"metas": []})["metas"].append(e.meta)

    def leave(self, e: RemoteEntry) -> None:
        self._diff(e.room)["leaves"].setdefault(e.key, {"metas": []})["metas"].append(e.meta)


class RemotePresence:
    """Other nodes' presences by node and by room; the node itself is never in here."""

    __slots__ = ("_nodes", "_rooms")

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        # per room, in arrival order: (node, phx_ref) -> entry
        self._rooms: dict[RoomKey, dict[tuple[str, str], RemoteEntry]] = {}

    # -- reading -------------------------------------------------------------------------------
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def seq(self, node: str) -> int | None:
        n = self._nodes.get(node)
        return None if n is None else n.seq

    def count(self, room: RoomKey) -> int:
        """Presences other nodes hold in ``room`` (for the room's limit, which is cluster-wide)."""
        return len(self._rooms.get(room, ()))

    def total(self) -> int:
        return sum(len(n.entries) for n in self._nodes.values())

    def rooms(self) -> dict[RoomKey, int]:
        return {room: len(entries) for room, entries in self._rooms.items()}

    def state(self, room: RoomKey) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Other nodes' part of the room's ``presence_state``: ``{key: {"metas": [...]}}``."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for e in self._rooms.get(room, {}).values():
            out.setdefault(e.key, {"metas": []})["metas"].append(e.meta)
        return out

    # -- changing --------------------------------------------------------------------------------
    def apply(
        self, node: str, seq: int, joins: Iterable[RemoteEntry], leaves: Iterable[str]
    ) -> dict[RoomKey, Diff] | None:
        """Change number ``seq`` of ``node``; None when an earlier one was missed (reload it)."""
        n = self._nodes.get(node)
        held = 0 if n is None else n.seq
        if seq <= held:
            return {}
        if seq != held + 1:
            return None
        if n is None:
            n = self._nodes[node] = _Node()
        n.seq = seq
        out = _Changes()
        for ref in leaves:
            old = self._remove(node, n, ref)
            if old is not None:
                out.leave(old)
        for e in joins:
            ref = str(e.meta.get("phx_ref", ""))
            if ref in n.entries:
                continue
            self._add(node, n, ref, e)
            out.join(e)
        return out.rooms

    def replace(self, node: str, seq: int, entries: Mapping[str, RemoteEntry]) -> dict[RoomKey, Diff]:
        """``node``'s snapshot (current to change ``seq``): what differs from the mirror is sent.

        An older snapshot than what is held is ignored (its diffs were already applied).
        """
        n = self._nodes.get(node)
        if n is not None and seq < n.seq:
            return {}
        if n is None:
            n = self._nodes[node] = _Node()
        n.seq = seq
        out = _Changes()
        for ref in [r for r in n.entries if r not in entries]:
            old = self._remove(node, n, ref)
            if old is not None:
                out.leave(old)
        for ref, e in entries.items():
            had = n.entries.get(ref)
            if had is not None and had == e:
                continue
            if had is not None:
                self._remove(node, n, ref)
                out.leave(had)
            self._add(node, n, ref, e)
            out.join(e)
        return out.rooms

    def drop(self, node: str) -> dict[RoomKey, Diff]:
        """``node`` is gone (stopped, or its heartbeat expired): all its presences leave."""
        n = self._nodes.pop(node, None)
        if n is None:
            return {}
        out = _Changes()
        for ref in list(n.entries):
            old = self._remove(node, n, ref)
            if old is not None:
                out.leave(old)
        return out.rooms

    def _add(self, node: str, n: _Node, ref: str, e: RemoteEntry) -> None:
        n.entries[ref] = e
        self._rooms.setdefault(e.room, {})[(node, ref)] = e

    def _remove(self, node: str, n: _Node, ref: str) -> RemoteEntry | None:
        old = n.entries.pop(ref, None)
        if old is None:
            return None
        room = self._rooms.get(old.room)
        if room is not None:
            room.pop((node, ref), None)
            if not room:
                del self._rooms[old.room]
        return old


def diff_entries(room: RoomKey, diff: Diff) -> tuple[list[RemoteEntry], list[str]]:
    """A local ``presence_diff`` as (joins, refs that left): what a node tells the others."""
    joins = [
        RemoteEntry(room, key, meta) for key, section in diff["joins"].items() for meta in section["metas"]
    ]
    leaves = [
        str(meta.get("phx_ref", "")) for section in diff["leaves"].values() for meta in section["metas"]
    ]
    return joins, leaves
