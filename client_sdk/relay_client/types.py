"""The values an application sees: changes, resync signals, states and bindings.

Why their own module: they are the SDK's public vocabulary, shared by the pure protocol code and
the I/O code, and they must import nothing heavier than the standard library.  Enum names and
values are those of the official ``realtime`` client, so code written against it reads the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "Binding",
    "Broadcast",
    "BroadcastCallback",
    "Change",
    "ChangeCallback",
    "ChangeType",
    "ChannelStates",
    "Presence",
    "PresenceEvent",
    "PresenceJoin",
    "PresenceJoinCallback",
    "PresenceLeave",
    "PresenceLeaveCallback",
    "PresenceState",
    "PresenceSync",
    "PresenceSyncCallback",
    "RealtimePostgresChangesListenEvent",
    "RealtimeSubscribeStates",
    "ResyncCallback",
    "ResyncNeeded",
    "SnapshotComplete",
    "SnapshotRow",
    "SubscribeCallback",
]

ChangeType = Literal["INSERT", "UPDATE", "DELETE"]


class RealtimePostgresChangesListenEvent(StrEnum):
    """Which row events a binding asks for (same names as the official client)."""

    All = "*"
    Insert = "INSERT"
    Update = "UPDATE"
    Delete = "DELETE"


class ChannelStates(StrEnum):
    """Where a channel's join stands on the current socket (same values as the official client)."""

    JOINED = "joined"
    CLOSED = "closed"
    ERRORED = "errored"  # not joined now, will rejoin (socket lost, join refused, server closed it)
    JOINING = "joining"
    LEAVING = "leaving"


class RealtimeSubscribeStates(StrEnum):
    """What ``subscribe(callback)`` reports, on the first join and on every rejoin."""

    SUBSCRIBED = "SUBSCRIBED"
    TIMED_OUT = "TIMED_OUT"
    CLOSED = "CLOSED"
    CHANNEL_ERROR = "CHANNEL_ERROR"


@dataclass(frozen=True, slots=True)
class Binding:
    """One ``postgres_changes`` subscription of a channel, as sent in the join."""

    event: str = "*"
    schema: str = "public"
    table: str | None = None
    filter: str | None = None
    snapshot: bool = False  # the first join asks for the current rows (docs/protocol.md, Snapshot)

    def wire(self, snapshot: bool = False) -> dict[str, Any]:
        """The binding object of a join; ``snapshot``: ask for the current rows on this join."""
        out: dict[str, Any] = {"event": self.event, "schema": self.schema}
        if self.table is not None:
            out["table"] = self.table
        if self.filter is not None:
            out["filter"] = self.filter
        if snapshot:
            out["snapshot"] = True
        return out


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, delivered once, in commit order.

    ``record`` is empty for DELETE and ``old_record`` empty for INSERT (rather than None), so
    handlers index them without a None check.  ``position`` is the relay's resume position,
    ``"<stream id>/<lsn>:<index>"``: strings of one stream compare in commit order.
    """

    channel: str
    type: ChangeType
    schema: str
    table: str
    commit_timestamp: str
    position: str
    record: Mapping[str, Any] = field(default_factory=dict)
    old_record: Mapping[str, Any] = field(default_factory=dict)
    columns: tuple[Mapping[str, Any], ...] = ()
    errors: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    moved_out: bool = False


@dataclass(frozen=True, slots=True)
class ResyncNeeded:
    """The relay could not give this channel every change it missed: refetch, then go on.

    The channel stays joined and continues live after ``position``: a snapshot read now
    contains everything up to at least ``position``.
    """

    channel: str
    message: str
    position: str | None
    resume_from: str | None = None
    retained_from: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """One row of a binding's snapshot: the row as it was at the snapshot's consistent point.

    Shaped like an INSERT :class:`Change` (``record``, ``columns``, ``errors``, ``ids``) so
    handlers read it the same way, but a distinct type: it is the table's *state*, not an event
    that happened, and it has no position (the :class:`SnapshotComplete` that follows carries
    the one live changes continue from).  ``snapshot`` numbers the joins of this channel that
    asked for a snapshot: a reconnect during a snapshot restarts it under a new number, so a
    consumer that sees a new number drops the rows it collected for the old one.
    """

    channel: str
    schema: str
    table: str
    commit_timestamp: str
    record: Mapping[str, Any]
    snapshot: int
    columns: tuple[Mapping[str, Any], ...] = ()
    errors: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    type: Literal["SNAPSHOT"] = "SNAPSHOT"
    old_record: Mapping[str, Any] = field(default_factory=dict)  # always empty, as for INSERT


@dataclass(frozen=True, slots=True)
class SnapshotComplete:
    """A binding's snapshot is complete: ``rows`` rows were sent, live changes follow.

    ``position``: every change committed after the snapshot's point arrives after this event,
    once; none the snapshot already contained.  The channel resumes from it after a reconnect.
    ``binding_id``: the relay's id of the binding (as in ``Change.ids``).
    """

    channel: str
    binding_id: int | None
    rows: int
    position: str | None
    snapshot: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Broadcast:
    """One broadcast message received on a channel (ephemeral: never replayed after a disconnect).

    ``payload`` is the sender's JSON value, or ``bytes`` when the sender sent a binary payload
    (a realtime-js ``ArrayBuffer``): the relay hands those to vsn 1.0.0 clients as
    ``{"base64": ...}`` with ``meta["encoding"] == "base64"``, and the SDK decodes them.
    """

    channel: str
    event: str
    payload: Any
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_binary(self) -> bool:
        return isinstance(self.payload, bytes)


Presence = dict[str, Any]
"""One tracked presence: the state a member tracked, plus ``presence_ref`` (the relay's id of it)."""

PresenceState = dict[str, list[Presence]]
"""``channel.presence_state()``: presence key -> the presences tracked under it (one per member)."""


@dataclass(frozen=True, slots=True)
class PresenceJoin:
    """Presences joined under ``key``; ``current_presences`` are the ones it already had."""

    channel: str
    key: str
    current_presences: tuple[Presence, ...]
    new_presences: tuple[Presence, ...]


@dataclass(frozen=True, slots=True)
class PresenceLeave:
    """Presences left ``key``; ``current_presences`` are the ones it still has."""

    channel: str
    key: str
    current_presences: tuple[Presence, ...]
    left_presences: tuple[Presence, ...]


@dataclass(frozen=True, slots=True)
class PresenceSync:
    """The presence state changed (after a ``presence_state`` or a diff); ``state`` is a snapshot."""

    channel: str
    state: PresenceState


PresenceEvent = PresenceJoin | PresenceLeave | PresenceSync

ChangeCallback = Callable[[Change], Awaitable[None] | None]
BroadcastCallback = Callable[[Broadcast], Awaitable[None] | None]
PresenceSyncCallback = Callable[[], Awaitable[None] | None]
PresenceJoinCallback = Callable[[str, list[Presence], list[Presence]], Awaitable[None] | None]
PresenceLeaveCallback = Callable[[str, list[Presence], list[Presence]], Awaitable[None] | None]
ResyncCallback = Callable[[ResyncNeeded], Awaitable[None] | None]
SubscribeCallback = Callable[[RealtimeSubscribeStates, Exception | None], Awaitable[None] | None]
