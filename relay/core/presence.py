"""Presence of one topic: who is tracked under which key, and the diffs clients apply.

Why pure and shaped like Phoenix.Presence: both official clients merge ``presence_state`` and
``presence_diff`` with Phoenix's algorithm, keyed by ``phx_ref``; the relay only has to keep the
same state and emit the same diffs.  State is per topic and in memory: presence is about who is
connected *now*, so it dies with the sockets that made it.

Each member (a joined channel) holds at most one presence, under its configured key; several
members may share a key (one user, two tabs), which is why a key maps to a list of metas.
Tracking again replaces the member's meta: the diff then leaves the old meta and joins the new
one, which carries ``phx_ref_prev``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from relay.core.errors import Code, RelayError
from relay.core.protocol import dumps

__all__ = ["UNENCODABLE", "Diff", "Presence", "PresenceError", "repair_metas"]

M = TypeVar("M", bound=Hashable)
Diff = dict[str, dict[str, dict[str, list[dict[str, Any]]]]]

_PREFIX = os.urandom(4).hex()  # refs stay unique across relay restarts
_counter = itertools.count(1)


UNENCODABLE = "presence_unencodable"


class PresenceError(RelayError, ValueError):
    """A presence push that cannot be applied; ``str()`` is safe to show the client.

    ``code`` is stable for clients to act on: ``presence_invalid`` (not an object) or
    ``room_presence_full`` (the room holds its limit of presences).
    """

    def __init__(self, message: str, code: Code | str = Code.PRESENCE_INVALID) -> None:
        super().__init__(code, message)


def _new_ref() -> str:
    return f"{_PREFIX}{next(_counter):x}"


@dataclass(slots=True)
class _Entry:
    key: str
    meta: dict[str, Any]  # includes phx_ref (and phx_ref_prev after an update)
    size: int  # encoded bytes of the client's meta, for the per-socket budget


class Presence(Generic[M]):
    """Tracked presences of one topic, in tracking order."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[M, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, member: M, key: str, meta: Any, size: int = 0, max_entries: int | None = None) -> Diff:
        """Track (or update) ``member``'s presence; returns the diff to send to the topic.

        ``max_entries`` bounds the room: a new presence beyond it is refused (an update of one
        already tracked is not a new one), so the ``presence_state`` every joiner receives stays
        bounded.
        """
        if not isinstance(meta, dict):
            raise PresenceError("a presence payload (the tracked state) must be a JSON object")
        if max_entries is not None and member not in self._entries and len(self._entries) >= max_entries:
            raise PresenceError(
                f"this room already holds its limit of {max_entries} presences", Code.ROOM_PRESENCE_FULL
            )
        if "phx_ref" in meta or "phx_ref_prev" in meta:
            meta = {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}
        old = self._entries.get(member)
        new_meta = {**meta, "phx_ref": _new_ref()}
        leaves: dict[str, dict[str, list[dict[str, Any]]]] = {}
        if old is not None:
            leaves[old.key] = {"metas": [old.meta]}
            if old.key == key:
                new_meta["phx_ref_prev"] = old.meta["phx_ref"]
            del self._entries[member]  # re-insert: an update moves to the end, as in Phoenix
        self._entries[member] = _Entry(key, new_meta, size)
        return {"joins": {key: {"metas": [new_meta]}}, "leaves": leaves}

    def untrack(self, member: M) -> Diff | None:
        """Forget ``member``'s presence; None when it had none (nothing to tell anyone)."""
        old = self._entries.pop(member, None)
        if old is None:
            return None
        return {"joins": {}, "leaves": {old.key: {"metas": [old.meta]}}}

    def key_of(self, member: M) -> str | None:
        entry = self._entries.get(member)
        return None if entry is None else entry.key

    def size_of(self, member: M) -> int | None:
        """Encoded size of ``member``'s tracked meta; None when it tracks nothing."""
        entry = self._entries.get(member)
        return None if entry is None else entry.size

    def repair(self) -> int:
        """Replace every meta that cannot be encoded by a placeholder; returns how many.

        Defence in depth: payloads are checked before they are tracked, but if one ever slipped
        through, one bad entry must not make the whole room's state unreadable for every later
        joiner (and for the member's own departure).  The placeholder keeps the ``phx_ref`` so
        clients can still match the leave.
        """
        n = 0
        for entry in self._entries.values():
            if not _encodes(entry.meta):
                entry.meta = _placeholder(entry.meta)
                n += 1
        return n

    def state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The ``presence_state`` payload: ``{key: {"metas": [meta, ...]}}``."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for entry in self._entries.values():
            out.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
        return out


def _encodes(meta: Any) -> bool:
    try:
        dumps(meta)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return False
    return True


def _placeholder(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: meta[k] for k in ("phx_ref", "phx_ref_prev") if k in meta}
    out["error"] = UNENCODABLE
    return out


def repair_metas(section: dict[str, dict[str, list[dict[str, Any]]]]) -> int:
    """Replace unencodable metas in one ``{key: {"metas": [...]}}`` section; returns how many.

    A section is a ``presence_state`` payload or a diff's ``joins`` / ``leaves``.  Its lists are
    rebuilt, so stored entries are untouched (:meth:`Presence.repair` is for those).
    """
    n = 0
    for key, value in section.items():
        metas = value["metas"]
        fixed = [m if _encodes(m) else _placeholder(m) for m in metas]
        bad = sum(1 for a, b in zip(fixed, metas, strict=True) if a is not b)
        if bad:
            section[key] = {**value, "metas": fixed}
            n += bad
    return n
