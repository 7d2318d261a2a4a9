"""A channel's view of its room's presence: Phoenix's merge of ``presence_state`` and ``presence_diff``.

Why pure and Phoenix's algorithm: the relay (like Supabase Realtime) sends a full
``presence_state`` after a join, then ``presence_diff`` events with ``joins`` and ``leaves``;
every official client merges them the way ``phoenix.js``'s ``Presence.syncState`` /
``syncDiff`` do, matching presences by ``phx_ref``.  Doing exactly that here, free of I/O, lets
the unit tests drive every interleaving: a fresh state after a reconnect replaces the old one
(what is gone leaves, what is new joins, what stayed is untouched), an update (``phx_ref_prev``)
is a leave plus a join, and diffs from a join the channel replaced are never applied.

Join phases, as in ``phoenix.js``: from sending a join until its reply, presence frames belong to
the previous join on this socket and are ignored; from the reply until that join's
``presence_state``, diffs are held (at most ``max_pending``) and applied after the state.

What applications see follows the official clients: each presence is the tracked state plus
``presence_ref`` (``phx_ref`` renamed, ``phx_ref_prev`` dropped).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

from relay_client.protocol import ProtocolError
from relay_client.types import (
    Presence,
    PresenceEvent,
    PresenceJoin,
    PresenceLeave,
    PresenceState,
    PresenceSync,
)

__all__ = ["Presences", "parse_presence_diff", "parse_presence_state", "public_presence"]

RawMeta = dict[str, Any]  # as the relay sends it: the tracked state plus phx_ref (and phx_ref_prev)
RawState = dict[str, list[RawMeta]]


def parse_presence_state(payload: Any) -> RawState:
    """``{key: {"metas": [meta, ...]}}`` -> ``{key: [meta, ...]}`` (keys without metas dropped)."""
    if not isinstance(payload, dict):
        raise ProtocolError("presence state is not an object")
    out: RawState = {}
    for key, entry in payload.items():
        metas = entry.get("metas") if isinstance(entry, dict) else None
        if not isinstance(metas, list):
            raise ProtocolError(f"presence entry {key!r} without metas")
        for meta in metas:
            if not isinstance(meta, dict) or not isinstance(meta.get("phx_ref"), str):
                raise ProtocolError(f"presence meta of {key!r} without phx_ref")
        if metas:
            out[str(key)] = [dict(m) for m in metas]
    return out


def parse_presence_diff(payload: Any) -> tuple[RawState, RawState]:
    """``{"joins": state, "leaves": state}`` -> (joins, leaves)."""
    if not isinstance(payload, dict):
        raise ProtocolError("presence diff is not an object")
    joins, leaves = payload.get("joins"), payload.get("leaves")
    return parse_presence_state({} if joins is None else joins), parse_presence_state(
        {} if leaves is None else leaves
    )


def public_presence(meta: RawMeta) -> Presence:
    """A presence as applications see it: ``presence_ref`` first, then the tracked state."""
    out: Presence = {"presence_ref": meta["phx_ref"]}
    out.update((k, v) for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev"))
    return out


def _public(metas: list[RawMeta]) -> tuple[Presence, ...]:
    return tuple(public_presence(m) for m in metas)


class Presences:
    """The presence state of one channel and the join/leave/sync events each frame produces."""

    def __init__(self, channel: str, max_pending: int = 1000) -> None:
        self.channel = channel
        self._state: RawState = {}
        self._pending: deque[tuple[RawState, RawState]] = deque(maxlen=max(1, max_pending))
        self.phase: Literal["joining", "awaiting_state", "synced"] = "synced"

    # -- join phases --------------------------------------------------------------------------
    def begin_join(self) -> None:
        """A join was sent: presence frames before its reply belong to the previous join."""
        self.phase = "joining"
        self._pending.clear()

    def joined(self) -> None:
        """The join's ok reply: hold diffs until its ``presence_state``."""
        self.phase = "awaiting_state"

    def clear(self) -> None:
        """Forget everything (the channel is over)."""
        self._state.clear()
        self._pending.clear()
        self.phase = "synced"

    # -- frames -------------------------------------------------------------------------------
    def on_state(self, payload: Any, snapshot: bool = True) -> list[PresenceEvent]:
        """A ``presence_state``: it replaces the state (as joins and leaves), then held diffs apply.

        The events end with a :class:`PresenceSync`; it carries a snapshot of the state only
        with ``snapshot`` (copying a big room's state on every diff is for those who read it).
        """
        new = parse_presence_state(payload)
        if self.phase == "joining":
            return []
        events = self._sync_state(new)
        pending = list(self._pending)
        self._pending.clear()
        self.phase = "synced"
        for joins, leaves in pending:
            events += self._sync_diff(joins, leaves)
        events.append(self._sync_event(snapshot))
        return events

    def on_diff(self, payload: Any, snapshot: bool = True) -> list[PresenceEvent]:
        """A ``presence_diff``: applied now, held until the state arrives, or ignored (old join)."""
        joins, leaves = parse_presence_diff(payload)
        if self.phase == "joining":
            return []
        if self.phase == "awaiting_state":
            self._pending.append((joins, leaves))
            return []
        events = self._sync_diff(joins, leaves)
        events.append(self._sync_event(snapshot))
        return events

    def snapshot(self) -> PresenceState:
        """key -> presences (fresh copies: the caller may keep or change them)."""
        return {key: list(_public(metas)) for key, metas in self._state.items()}

    @property
    def raw(self) -> RawState:
        """The state as merged, with ``phx_ref`` (for tests)."""
        return self._state

    # -- Phoenix's algorithm --------------------------------------------------------------------
    def _sync_state(self, new: RawState) -> list[PresenceEvent]:
        joins: RawState = {}
        leaves: RawState = {key: metas for key, metas in self._state.items() if key not in new}
        for key, new_metas in new.items():
            current = self._state.get(key)
            if current:
                new_refs = {m["phx_ref"] for m in new_metas}
                cur_refs = {m["phx_ref"] for m in current}
                joined = [m for m in new_metas if m["phx_ref"] not in cur_refs]
                left = [m for m in current if m["phx_ref"] not in new_refs]
                if joined:
                    joins[key] = joined
                if left:
                    leaves[key] = left
            else:
                joins[key] = new_metas
        return self._sync_diff(joins, leaves)

    def _sync_diff(self, joins: RawState, leaves: RawState) -> list[PresenceEvent]:
        events: list[PresenceEvent] = []
        for key, new_metas in joins.items():
            current = self._state.get(key, [])
            joined_refs = {m["phx_ref"] for m in new_metas}
            kept = [m for m in current if m["phx_ref"] not in joined_refs]
            self._state[key] = kept + list(new_metas)
            events.append(PresenceJoin(self.channel, key, _public(current), _public(new_metas)))
        for key, left_metas in leaves.items():
            had = self._state.get(key)
            if not had:
                continue
            refs = {m["phx_ref"] for m in left_metas}
            remaining = [m for m in had if m["phx_ref"] not in refs]
            events.append(PresenceLeave(self.channel, key, _public(remaining), _public(left_metas)))
            if remaining:
                self._state[key] = remaining
            else:
                del self._state[key]
        return events

    def _sync_event(self, snapshot: bool) -> PresenceSync:
        return PresenceSync(self.channel, self.snapshot() if snapshot else {})
