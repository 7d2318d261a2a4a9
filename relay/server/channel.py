"""The ``Channel`` record (a joined topic on one socket) and what it may ask of its socket.

Why a module of its own, below the feed, the topic hub and the connection: the feed indexes
channels and the hub keeps them in rooms, and both send to a channel's socket.  With the record
in connection.py both named the module above them (a back-reference); here they name only this
record and :class:`Socket`, the narrow face of a connection they may use (queue, flush, reply,
refuse, revoke), while :class:`~relay.server.connection.Connection` implements it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.core.authorize import claims_key
from relay.core.errors import Code
from relay.core.protocol import Frame
from relay.core.quotas import Quota, TokenBucket
from relay.core.rooms import Room
from relay.core.subscriptions import BindingSpec, FrameCache
from relay.core.tokens import Claims
from relay.postgres.topic_policies import PUBLIC_GRANTS, TopicGrants

__all__ = ["Channel", "Socket"]


class Socket(Protocol):
    """What the feed and the topic hub use of a channel's socket (a ``Connection``)."""

    vsn: str
    peer: str
    raw: bool  # frames are prebuilt WebSocket bytes (see Connection)
    channels: dict[str, Channel]
    message_rate: TokenBucket
    presence_rate: TokenBucket

    def deliver(self, cache: FrameCache, topic: str, ids: list[int]) -> None: ...
    def push(self, text: bytes | str) -> None: ...
    def queue_frame(self, frame: Frame) -> None: ...
    def send_frame(self, frame: Frame) -> None: ...
    def flush(self) -> None: ...
    async def drain(self, below: int) -> None: ...
    def reply_error(self, f: Frame, reason: str, code: Code) -> None: ...
    def refuse(self, f: Frame, quota: Quota) -> None: ...
    def within(self, bucket: TokenBucket, f: Frame, quota: Quota) -> bool: ...
    def revoke(self, chan: Channel, message: str, code: Code) -> None: ...


@dataclass(eq=False)
class Channel:
    """A joined topic on one socket: the subscriber the index and the fan-out see.

    ``claims`` are this channel's own (its join or ``access_token`` token): never shared with
    other channels or sockets.  ``claims_key`` (canonical bytes) lets the fan-out evaluate
    policies once per distinct claims.
    """

    conn: Socket
    topic: str
    join_ref: str | None
    _claims: Claims
    specs: list[BindingSpec] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None  # the token's next event: expiry warning, then end
    claims_key: bytes = b""
    # Position of the last change this channel was given (or passed over while replaying): the
    # fan-out never delivers a change at or before it, which is what makes the switch from
    # replay to live free of gaps and duplicates.
    cursor: int = -1
    replaying: bool = False  # a resume is being served from the replay log; live skips it
    tx_end: bool = False  # the client asked for tx_end events
    open_tx: int = 0  # commit LSN of the transaction it is receiving (tx_end bookkeeping)
    open_count: int = 0
    open_pos: int = -1
    open_ts: str = ""
    closed: bool = False
    task: asyncio.Task[None] | None = None
    # Broadcast and presence (see relay/server/topics.py).  A private channel's grants come
    # from the topic policies at join (and again on a new token or a policy change).
    private: bool = False
    grants: TopicGrants = PUBLIC_GRANTS
    bcast_self: bool = False
    bcast_ack: bool = False
    presence_key: str = ""
    presence_enabled: bool = False
    room: Room[Channel] | None = None
    joined_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.claims_key = claims_key(self._claims)

    @property
    def claims(self) -> Claims:
        return self._claims

    @claims.setter
    def claims(self, value: Claims) -> None:
        self._claims = value
        self.claims_key = claims_key(value)

    @property
    def vsn(self) -> str:
        return self.conn.vsn

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")

    def system(self, status: str, message: str, extension: str = "postgres_changes", **extra: Any) -> Frame:
        """A ``system`` event for this channel (the shape both official clients parse)."""
        payload = {"channel": self.name, "extension": extension, "status": status, "message": message}
        return Frame(self.topic, "system", {**payload, **extra})
