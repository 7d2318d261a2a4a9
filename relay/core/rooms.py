"""Topics as rooms: which channels are joined to a topic, for broadcast and presence.

Why a registry of its own: postgres_changes are routed by table and row (the subscription
index), but broadcast and presence are routed by topic alone.  A private channel and a public
channel of the same name are different rooms (as in Supabase): a message sent with
``private = true`` never reaches a public channel, so a policy cannot be bypassed by joining the
public twin.  Pure: members are whatever the server uses for a joined channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from relay.core.presence import Presence

__all__ = ["Room", "Rooms"]

M = TypeVar("M", bound=Hashable)


class Room(Generic[M]):
    """The members of one (name, private) topic, in join order, and its presence."""

    __slots__ = ("members", "name", "presence", "private")

    def __init__(self, name: str, private: bool) -> None:
        self.name = name
        self.private = private
        self.members: dict[M, None] = {}  # an ordered set: delivery follows join order
        self.presence: Presence[M] = Presence()


class Rooms(Generic[M]):
    """Every non-empty room; a room exists while it has members."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[tuple[str, bool], Room[M]] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def __iter__(self) -> Iterator[Room[M]]:
        return iter(list(self._rooms.values()))

    def get(self, name: str, private: bool) -> Room[M] | None:
        return self._rooms.get((name, private))

    def join(self, name: str, private: bool, member: M) -> Room[M]:
        room = self._rooms.get((name, private))
        if room is None:
            room = self._rooms[(name, private)] = Room(name, private)
        room.members[member] = None
        return room

    def leave(self, room: Room[M], member: M) -> None:
        """Remove ``member`` (its presence is the caller's to untrack first, to tell the others)."""
        room.members.pop(member, None)
        room.presence.untrack(member)
        if not room.members and self._rooms.get((room.name, room.private)) is room:
            del self._rooms[(room.name, room.private)]
