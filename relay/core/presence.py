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

__all__ = ["Diff", "Presence", "PresenceError"]

M = TypeVar("M", bound=Hashable)
Diff = dict[str, dict[str, dict[str, list[dict[str, Any]]]]]

_PREFIX = os.urandom(4).hex()  # refs stay unique across relay restarts
_counter = itertools.count(1)


class PresenceError(ValueError):
    """A presence push that cannot be applied; ``str()`` is safe to show the client."""


def _new_ref() -> str:
    return f"{_PREFIX}{next(_counter):x}"


@dataclass(slots=True)
class _Entry:
    key: str
    meta: dict[str, Any]  # includes phx_ref (and phx_ref_prev after an update)


class Presence(Generic[M]):
    """Tracked presences of one topic, in tracking order."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[M, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, member: M, key: str, meta: Any) -> Diff:
        """Track (or update) ``member``'s presence; returns the diff to send to the topic."""
        if not isinstance(meta, dict):
            raise PresenceError("a presence payload (the tracked state) must be a JSON object")
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
        self._entries[member] = _Entry(key, new_meta)
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

    def state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The ``presence_state`` payload: ``{key: {"metas": [meta, ...]}}``."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for entry in self._entries.values():
            out.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
        return out
