"""A channel: its bindings, its consumers (callbacks, ``changes()`` streams) and frame handling.

Why the channel delivers and the client only routes: everything that must happen in order for
one channel — a join reply, the ``Subscribed``/``Resumed`` events, each change, a resync — is
handled here, by the socket's single reader task, one frame at a time.  A change's position is
recorded as processed only after every consumer got it, and the reader is never cancelled while
delivering, so a rejoin resumes exactly after the last change the application saw.

Broadcast and presence ride on the same join.  Pushes (``send_broadcast``, ``track``,
``untrack``) carry a ref; their replies are matched here.  The last tracked presence is part of
the channel's wanted state, like its bindings: every (re)join tracks it again, so a service stays
present across network drops, until ``untrack()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, Self, TypeVar, overload

from relay_client.backoff import Backoff
from relay_client.errors import (
    ChannelError,
    ClientClosedError,
    JoinError,
    NotJoinedError,
    SendError,
    SendTimeoutError,
    SnapshotError,
)
from relay_client.join_state import ChannelState, ChannelStats
from relay_client.link import Link, LinkClosed
from relay_client.options import ChannelOptions, ClientOptions
from relay_client.presence import Presences
from relay_client.protocol import (
    ChannelClosedByServer,
    Frame,
    ProtocolError,
    Refusal,
    SnapshotFailed,
    TokenExpiring,
    access_token_frame,
    broadcast_frame,
    is_snapshot_row,
    parse_broadcast,
    parse_change,
    parse_reply,
    parse_snapshot_row,
    parse_system,
    presence_frame,
)
from relay_client.status import Status
from relay_client.streams import Buffer, ChangeStream
from relay_client.types import (
    Binding,
    Broadcast,
    BroadcastCallback,
    Change,
    ChangeCallback,
    ChannelStates,
    PresenceEvent,
    PresenceJoin,
    PresenceJoinCallback,
    PresenceLeave,
    PresenceLeaveCallback,
    PresenceState,
    PresenceSyncCallback,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
    ResyncCallback,
    ResyncNeeded,
    SnapshotComplete,
    SnapshotRow,
    SubscribeCallback,
)

__all__ = ["ChannelHost", "EventCallback", "RealtimeChannel", "SnapshotEvent"]

log = logging.getLogger("relay_client")

SnapshotEvent = SnapshotRow | SnapshotComplete | SnapshotError
ChannelEvent = Change | ResyncNeeded | SnapshotEvent
EventCallback = Callable[[Change | SnapshotEvent], Awaitable[None] | None]
"""A binding callback that also takes snapshot events (``snapshot=True`` or ``on_resync="snapshot"``)."""
T = TypeVar("T")
ReplyStatus = Literal["ok", "error", "lost"]
PushResult = tuple[ReplyStatus, str, str | None]  # (status, reason, the relay's code if it refused)


class ChannelHost(Protocol):
    """What a channel needs from the client that owns it, and nothing more.

    Why a protocol: the channel used to reach into six private members of ``RelayClient``, so
    neither could change without the other.  The client hands each channel a small object
    implementing this (``client._ChannelHost``); the channel never imports the client.
    """

    @property
    def options(self) -> ClientOptions: ...

    @property
    def closing(self) -> bool:
        """``close()`` was called (or the client gave up)."""
        ...

    @property
    def status(self) -> Status: ...

    @property
    def link(self) -> Link | None:
        """The current socket, if one is up."""
        ...

    @property
    def token(self) -> str | None:
        """The token the client uses now (a join sent with an older one gets it pushed)."""
        ...

    def next_ref(self) -> str:
        """A fresh ``ref`` for a frame (unique on the socket)."""
        ...

    def in_callback(self) -> bool:
        """Whether the caller runs in the reader or joiner task (it cannot await a reply)."""
        ...

    def wake_joiner(self) -> None:
        """Look at the channels' join needs now."""
        ...

    def register(self, channel: RealtimeChannel) -> None:
        """The channel wants to be joined (raises if another open channel has its name)."""
        ...

    def forget(self, channel: RealtimeChannel) -> None:
        """The channel is over: stop routing frames to it."""
        ...

    async def connect(self) -> None:
        """Start connecting if not yet (without waiting until online)."""
        ...

    def token_expiring(self, topic: str, expires_at: float | None) -> None:
        """The relay warned that the token expires soon (``token_expiring``)."""
        ...


async def _call(cb: Any, *args: Any) -> None:
    """Run an application callback (sync or async); its failure is logged, never propagated."""
    try:
        result = cb(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("callback %r failed", cb)


@dataclass(slots=True)
class _Push:
    """A push awaiting its ``phx_reply``: ``future`` is None when nobody waits (log errors only)."""

    what: str  # "broadcast 'e'", "track", "untrack", "re-track"
    future: asyncio.Future[PushResult] | None


@dataclass(slots=True)
class _Sub(Generic[T]):
    """One drop-oldest broadcast / presence stream (``event``: the broadcast event it wants)."""

    buffer: Buffer[T]
    event: str = "*"
    warned: bool = field(default=False)


def _event_matches(wanted: str, event: str) -> bool:
    """Broadcast event filters: ``*`` or the name, case-insensitively (as both official clients)."""
    return wanted == "*" or wanted.lower() == event.lower()


class RealtimeChannel:
    """``client.channel(name)``: declare bindings, then ``await subscribe()``."""

    def __init__(
        self,
        host: ChannelHost,
        name: str,
        resume_from: str | None,
        options: ChannelOptions | None = None,
    ) -> None:
        self._host = host
        self.options = options or ChannelOptions()
        self._state = ChannelState(name, position=resume_from, options=self.options)
        self._callbacks: list[ChangeCallback | EventCallback | None] = []  # one per binding
        self._resync_callbacks: list[ResyncCallback] = []
        self._subscribe_callbacks: list[SubscribeCallback] = []
        self._buffers: list[tuple[Buffer[Any], bool, bool]] = []  # (buffer, resync?, snapshot?)
        self._broadcast_callbacks: list[tuple[str, BroadcastCallback]] = []
        self._broadcast_subs: list[_Sub[Broadcast]] = []
        self._sync_callbacks: list[PresenceSyncCallback] = []
        self._join_callbacks: list[PresenceJoinCallback] = []
        self._leave_callbacks: list[PresenceLeaveCallback] = []
        self._presence_subs: list[_Sub[PresenceEvent]] = []
        self._presence = Presences(self._state.name, host.options.queue_size)
        self._presence_listen = False  # presence callbacks or streams registered
        self._presence_used = False  # track() was called: keep presence on in every join
        self._join_presence = False  # presence asked for in the current (or pending) join
        self._tracked: dict[str, Any] | None = None  # tracked again on every (re)join
        self._pending: dict[str, _Push] = {}  # pushes awaiting their reply, by ref
        self._backoff = Backoff(host.options.backoff)
        self.retry_at = 0.0  # loop time before which the joiner does not (re)join us
        self.join_deadline: float | None = None
        self._joined_at = 0.0
        self._subscribed: asyncio.Future[None] | None = None
        self._left: asyncio.Future[None] | None = None
        self._join_token: str | None = None  # the token the pending/current join was sent with
        self._finished = False  # unsubscribed, refused for good, or the client closed
        self._finish_error: Exception | None = None
        self._close_reason: str | None = None  # the relay's system error before its phx_close
        self._close_code: str | None = None  # ... and its code

    # -- read-only view ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._state.name

    @property
    def topic(self) -> str:
        return self._state.topic

    @property
    def state(self) -> ChannelStates:
        return self._state.state

    @property
    def position(self) -> str | None:
        """Last processed position: persist it and pass ``resume_from=`` to continue after a restart."""
        return self._state.position

    @property
    def stats(self) -> ChannelStats:
        return self._state.stats

    @property
    def is_joined(self) -> bool:
        return self._state.state is ChannelStates.JOINED

    @property
    def is_closed(self) -> bool:
        return self._state.state is ChannelStates.CLOSED

    def __repr__(self) -> str:
        return f"<RealtimeChannel {self.name!r} {self.state.value} at {self.position}>"

    # -- configuration (official client names) ----------------------------------------------
    def on_postgres_changes(
        self,
        event: RealtimePostgresChangesListenEvent | str,
        callback: ChangeCallback | EventCallback | None = None,
        table: str | None = None,
        schema: str | None = None,
        filter: str | None = None,
        *,
        snapshot: bool = False,
    ) -> Self:
        """Subscribe to row changes; ``callback`` (optional: see ``changes()``) gets each :class:`Change`.

        Call before ``subscribe()``: bindings are part of the join.  ``snapshot=True``: the join
        also asks for the rows that match now (filter and policies), as of one consistent point:
        ``callback`` then gets a :class:`SnapshotRow` per row, then a :class:`SnapshotComplete`
        (or a :class:`SnapshotError`), then the changes committed after that point, each once.
        """
        ev = event.value if isinstance(event, RealtimePostgresChangesListenEvent) else str(event).upper()
        self._state.add_binding(Binding(ev, schema or "public", table, filter, snapshot))
        self._callbacks.append(callback)
        return self

    def on_resync(self, callback: ResyncCallback) -> Self:
        """Called when the relay cannot replay what this channel missed: refetch, then go on."""
        self._resync_callbacks.append(callback)
        return self

    def snapshot_on_resync(self) -> Self:
        """After a ``resync_needed``, rejoin asking every binding for a fresh snapshot.

        What ``client.channel(..., on_resync="snapshot")`` sets.  The :class:`ResyncNeeded` is
        still delivered (callbacks, streams); then the channel joins again, each binding's
        callback gets snapshot events, and the channel continues from the new snapshot's
        position: consistent again in one step, with no refetch by hand.
        """
        self._state.resync_snapshot = True
        return self

    def request_snapshot(self) -> bool:
        """Ask every binding for a fresh snapshot: the channel joins again now (resuming nothing
        a snapshot replaces), or with its next join if it is not joined; True if it rejoins now.

        For a snapshot the relay could not send in time (``snapshot_timeout``: its connections
        were busy, or the query ran too long), or to start over on purpose.  The bindings'
        callbacks get snapshot events, as with ``snapshot=True``.
        """
        self._check_open("request_snapshot")
        self._state.snapshot_due = set(range(len(self._state.bindings)))
        if self._state.force_rejoin():
            self.retry_at = 0.0
            self._host.wake_joiner()
            return True
        return False

    @property
    def resync_snapshot(self) -> bool:
        """Whether a ``resync_needed`` makes the channel rejoin with snapshots."""
        return self._state.resync_snapshot

    @overload
    def changes(
        self, *, resync: Literal[True] = ..., snapshot: Literal[False] = ...
    ) -> ChangeStream[Change | ResyncNeeded]: ...
    @overload
    def changes(self, *, resync: Literal[False], snapshot: Literal[False] = ...) -> ChangeStream[Change]: ...
    @overload
    def changes(
        self, *, resync: Literal[True] = ..., snapshot: Literal[True]
    ) -> ChangeStream[Change | ResyncNeeded | SnapshotEvent]: ...
    @overload
    def changes(
        self, *, resync: Literal[False], snapshot: Literal[True]
    ) -> ChangeStream[Change | SnapshotEvent]: ...
    def changes(self, *, resync: bool = True, snapshot: bool = False) -> ChangeStream[Any]:
        """Every change of this channel, once, in order, as an async iterator.

        With ``resync=True`` (default) a :class:`ResyncNeeded` is yielded in the stream where it
        happened; with ``snapshot=True`` the snapshot events too (:class:`SnapshotRow`,
        :class:`SnapshotComplete`, :class:`SnapshotError`), in their place before the changes
        that follow them.  Create it before ``subscribe()`` to see the very first change; it
        holds at most ``queue_size`` items (then the socket reader waits: see the README's
        overflow policy).  It ends when the channel is unsubscribed or the client closed.
        """
        buf: Buffer[Any] = Buffer(self._host.options.queue_size)
        if self._finished or self._host.closing:
            buf.close(self._finish_error)
        self._buffers.append((buf, resync, snapshot))
        return ChangeStream(buf)

    # -- broadcast ---------------------------------------------------------------------------
    def on_broadcast(self, event: str, callback: BroadcastCallback) -> Self:
        """``callback(broadcast)`` for each :class:`Broadcast` of ``event`` (``"*"``: every event).

        Event names match case-insensitively, as in the official clients.  May be called at any
        time; broadcasts are ephemeral (one sent while the client is offline is never received).
        """
        self._broadcast_callbacks.append((event, callback))
        return self

    def broadcasts(self, event: str = "*") -> ChangeStream[Broadcast]:
        """Broadcasts of ``event`` (``"*"``: all) as an async iterator.

        Holds at most ``queue_size``; when full the **oldest is dropped** (counted in
        ``stats.dropped``), so a slow reader never pauses the socket.  Ends when the channel is
        unsubscribed or the client closed.
        """
        return ChangeStream(self._new_sub(self._broadcast_subs, event))

    async def send_broadcast(
        self,
        event: str,
        payload: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a reply deadline, not one block)
    ) -> None:
        """Send ``payload`` (any JSON value) as ``event`` to the channel's other members.

        With ``broadcast_ack`` it returns once the relay confirmed it was queued to every member
        (``SendError`` if refused, e.g. a private channel without write permission;
        ``SendTimeoutError`` after ``timeout``, default the client's ``timeout``); without, once
        the frame is written (a refusal is then only logged).  ``NotJoinedError`` if the channel
        is not joined right now (before ``subscribe()``, offline, rejoining): nothing is queued
        while offline.  ``SendError`` if the connection is lost before the acknowledgement.
        Bytes cannot be sent: this SDK speaks vsn 1.0.0, whose frames are JSON.
        """
        if not isinstance(event, str) or not event or len(event.encode()) > 255:
            raise ValueError("a broadcast event is a non-empty string of at most 255 bytes")
        if isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("binary broadcast payloads need protocol vsn 2.0.0; this SDK sends JSON")
        what = f"broadcast {event!r}"
        link = self._joined_link(what)
        frame = broadcast_frame(self.topic, self._host.next_ref(), self._state.join_ref, event, payload)
        status, reason, code = await self._push(link, frame, what, self.options.broadcast_ack, timeout)
        if status == "lost":
            raise SendError(self.name, what, f"connection lost before the relay acknowledged it ({reason})")
        if status == "error":
            raise SendError(self.name, what, reason, code=code)
        self._state.stats.broadcasts_sent += 1

    # -- presence ------------------------------------------------------------------------------
    def on_presence_sync(self, callback: PresenceSyncCallback) -> Self:
        """``callback()`` after every change of :meth:`presence_state` (a state or a diff applied)."""
        self._sync_callbacks.append(callback)
        self._want_presence()
        return self

    def on_presence_join(self, callback: PresenceJoinCallback) -> Self:
        """``callback(key, current_presences, new_presences)`` when presences join ``key``."""
        self._join_callbacks.append(callback)
        self._want_presence()
        return self

    def on_presence_leave(self, callback: PresenceLeaveCallback) -> Self:
        """``callback(key, current_presences, left_presences)`` when presences leave ``key``."""
        self._leave_callbacks.append(callback)
        self._want_presence()
        return self

    def presence_events(self) -> ChangeStream[PresenceEvent]:
        """:class:`PresenceJoin`, :class:`PresenceLeave` and :class:`PresenceSync` as an async iterator.

        Same drop-oldest policy as :meth:`broadcasts`; each ``PresenceSync`` carries the whole
        state, so a reader that lost events still ends up right.
        """
        stream = ChangeStream(self._new_sub(self._presence_subs, "*"))
        self._want_presence()
        return stream

    def presence_state(self) -> PresenceState:
        """Who is present: key -> presences (each the tracked state plus ``presence_ref``).

        A copy.  Kept while offline (it is what the channel last knew) and replaced by the
        relay's fresh state after every rejoin.
        """
        return self._presence.snapshot()

    @property
    def tracked(self) -> dict[str, Any] | None:
        """The state this channel tracks (again on every rejoin), or None."""
        return None if self._tracked is None else dict(self._tracked)

    async def track(
        self,
        state: Mapping[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a reply deadline, not one block)
    ) -> None:
        """Be present in the channel with ``state`` (a JSON object); tracking again replaces it.

        If the channel is joined, returns once the relay confirmed (``SendError`` if refused,
        e.g. no presence write permission on a private channel; the previous state then stays
        tracked; ``SendTimeoutError`` after ``timeout``).  Otherwise (before ``subscribe()``
        returned, offline, rejoining) the state is remembered and tracked as soon as the channel
        joins.  Every rejoin tracks the last state again, until :meth:`untrack`.
        """
        if not isinstance(state, Mapping):
            raise TypeError("track() takes the presence state as a dict (a JSON object)")
        self._check_open("track")
        meta = dict(state)
        previous = self._tracked
        self._tracked = meta
        self._presence_used = True
        status, reason, code = await self._presence_push("track", meta, timeout)
        if status == "error":
            if self._tracked is meta:  # (unless tracked again meanwhile)
                self._tracked = previous
            raise SendError(self.name, "track", reason, code=code)

    async def untrack(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a reply deadline, not one block)
    ) -> None:
        """Stop being present; rejoins no longer track.  Waits for the relay's reply if joined."""
        self._check_open("untrack")
        self._tracked = None
        status, reason, code = await self._presence_push("untrack", None, timeout)
        if status == "error":
            raise SendError(self.name, "untrack", reason, code=code)

    async def _presence_push(
        self, event: str, meta: dict[str, Any] | None, reply_timeout: float | None
    ) -> PushResult:
        link = self._host.link
        if link is None or link.stopping or not self.is_joined:
            return "lost", "not joined", None  # applied by the next join (or gone with the last one)
        if event == "track":
            self._join_presence = True  # the relay turns presence on for this join with a track
        frame = presence_frame(self.topic, self._host.next_ref(), self._state.join_ref, event, meta)
        return await self._push(link, frame, event, True, reply_timeout)

    # -- pushes --------------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if self._host.closing:
            raise ClientClosedError("the client is closed")
        if self._finished:
            raise NotJoinedError(self.name, what, "the channel is closed (unsubscribed or refused)")

    def _joined_link(self, what: str) -> Link:
        self._check_open(what)
        link = self._host.link
        if link is None or link.stopping or not self.is_joined:
            raise NotJoinedError(
                self.name,
                what,
                f"the channel is not joined (channel {self.state.value}, client {self._host.status})",
            )
        return link

    async def _push(
        self, link: Link, frame: Frame, what: str, wait: bool, reply_timeout: float | None
    ) -> PushResult:
        """Send a push; with ``wait``, until its reply: ("ok"|"error"|"lost", reason, code).

        From inside a callback (the reader runs it, so it cannot also read the reply) the push
        is sent and not awaited: ("ok", "") is returned and a refusal is logged.
        """
        ref = frame.ref
        assert ref is not None
        fut: asyncio.Future[PushResult] | None = None
        if wait:
            if not self._host.in_callback():
                fut = asyncio.get_running_loop().create_future()
            self._pending[ref] = _Push(what, fut)
        try:
            await link.send(frame)
        except LinkClosed as exc:
            self._pending.pop(ref, None)
            return "lost", str(exc), None
        if fut is None:
            return "ok", "", None
        try:
            return await asyncio.wait_for(asyncio.shield(fut), reply_timeout or self._host.options.timeout)
        except TimeoutError:
            self._pending.pop(ref, None)
            raise SendTimeoutError(self.name, what, "no reply from the relay in time") from None

    def _settle_pending(self, status: ReplyStatus, reason: str) -> None:
        """Every push still awaiting a reply gets ``status`` (the connection or the join ended)."""
        pending, self._pending = self._pending, {}
        for push in pending.values():
            if push.future is not None and not push.future.done():
                push.future.set_result((status, reason, None))

    def _new_sub(self, subs: list[_Sub[T]], event: str) -> Buffer[T]:
        buf: Buffer[T] = Buffer(self._host.options.queue_size)
        if self._finished or self._host.closing:
            buf.close(self._finish_error)
        subs.append(_Sub(buf, event))
        return buf

    def _offer(self, subs: list[_Sub[T]], item: T, event: str = "*") -> None:
        for sub in list(subs):
            if sub.buffer.closed:
                subs.remove(sub)
            elif _event_matches(sub.event, event) and sub.buffer.offer(item):
                self._state.stats.dropped += 1
                if not sub.warned:
                    sub.warned = True
                    log.warning("a stream of %s is full: dropping its oldest items", self.topic)

    def _want_presence(self) -> None:
        """Presence listeners exist: if the current join did not ask for presence, join again."""
        self._presence_listen = True
        if not self._join_presence and self._state.force_rejoin():
            log.info("rejoining %s to receive presence (listeners added after subscribe)", self.topic)
            self.retry_at = 0.0
            self._host.wake_joiner()

    # -- subscribe / unsubscribe ------------------------------------------------------------
    async def subscribe(
        self,
        callback: SubscribeCallback | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the official client's name)
    ) -> Self:
        """Join (connecting the client if needed) and wait until joined.

        A channel needs no bindings: one for broadcast and presence only is fine.

        ``callback(state, error)`` is told about every (re)join, refusal, timeout and close.
        Raises :class:`JoinError` if the relay refuses the first join (it is not retried), or
        TimeoutError after ``timeout`` seconds (None: no limit) while the channel keeps trying.
        """
        if self._host.closing:
            raise ClientClosedError("the client is closed")
        if self._finished:
            if isinstance(self._finish_error, JoinError):
                raise self._finish_error
            raise RuntimeError(f"channel {self.name!r} is closed; create a new one with client.channel()")
        if callback is not None and callback not in self._subscribe_callbacks:
            self._subscribe_callbacks.append(callback)
        if not self._state.wanted:
            if self._state.joined_once:
                raise RuntimeError("a channel subscribes once; create a new one with client.channel()")
            self._host.register(self)  # raises if another open channel has this name
            self._state.wanted = True
            self._subscribed = asyncio.get_running_loop().create_future()
            await self._host.connect()
            self._host.wake_joiner()
        if self._subscribed is not None and not self._subscribed.done():
            await asyncio.wait_for(asyncio.shield(self._subscribed), timeout)
        elif self._subscribed is not None:
            self._subscribed.result()  # re-raise a final refusal
        return self

    async def unsubscribe(self) -> None:
        """Leave the channel; its ``changes()`` streams end after what they already hold.

        From inside a callback the leave is sent but its reply not awaited (the reply is read by
        the task running the callback).
        """
        link = self._host.link
        self._tracked = None  # leaving removes our presence; nothing to track again
        frame = self._state.begin_leave(self._host.next_ref())
        if frame is not None and link is not None:
            self._left = asyncio.get_running_loop().create_future()
            try:
                await link.send(frame)
                if not self._host.in_callback():
                    await asyncio.wait_for(asyncio.shield(self._left), self._host.options.timeout)
            except Exception as exc:  # no reply: the relay forgets the channel with the socket
                log.debug("leave of %s not confirmed: %s", self.topic, exc)
        self._state.on_disconnect()  # whatever happened, we are not joined any more
        self._host.forget(self)
        await self._finish(None, RealtimeSubscribeStates.CLOSED)

    # -- called by the client ----------------------------------------------------------------
    def wants_join(self) -> bool:
        return self._state.needs_join()

    def join_frame(self, ref: str, join_ref: str, token: str | None) -> Frame:
        self.join_deadline = asyncio.get_running_loop().time() + self._host.options.timeout
        self._join_token = token
        self._join_presence = self._presence_listen or self._presence_used or self._tracked is not None
        self._presence.begin_join()
        return self._state.begin_join(ref, join_ref, token, self._join_presence)

    @property
    def needs_token_refresh(self) -> bool:
        return self._state.token_error

    async def check_join_timeout(self, now: float) -> float | None:
        """Time the pending join times out; handles a timeout that has passed."""
        if self._state.state is not ChannelStates.JOINING or self.join_deadline is None:
            return None
        if now < self.join_deadline:
            return self.join_deadline
        if self._state.join_timed_out():
            self.retry_at = now + self._backoff.next_delay()
            log.warning("join of %s timed out; retrying", self.topic)
            await self._notify(RealtimeSubscribeStates.TIMED_OUT, TimeoutError("join timed out"))
        return None

    def on_disconnect(self) -> None:
        self._state.on_disconnect()
        self._settle_pending("lost", "connection lost")
        self.retry_at = 0.0
        self.join_deadline = None
        if self._left is not None and not self._left.done():
            self._left.set_result(None)

    def access_token_frame(self, ref: str, token: str) -> Frame | None:
        if self._state.state is not ChannelStates.JOINED:
            return None
        return access_token_frame(self.topic, ref, self._state.join_ref, token)

    async def handle(self, frame: Frame, link: Link) -> None:
        """One frame for this channel, in socket order (called by the reader task only)."""
        ev = frame.event
        try:
            if ev == "postgres_changes":
                if is_snapshot_row(frame.payload):
                    row = parse_snapshot_row(self.name, frame.payload, self._state.snapshot_seq)
                    await self._on_snapshot_event(row, row.ids)
                else:
                    await self._on_change(parse_change(self.name, frame.payload))
            elif ev == "broadcast":
                await self._on_broadcast(parse_broadcast(self.name, frame.payload))
            elif ev == "presence_state":
                await self._on_presence(self._presence.on_state(frame.payload, bool(self._presence_subs)))
            elif ev == "presence_diff":
                await self._on_presence(self._presence.on_diff(frame.payload, bool(self._presence_subs)))
            elif ev == "phx_reply":
                await self._on_reply(frame, link)
            elif ev == "system":
                await self._on_system(frame.payload)
            elif ev in ("phx_close", "phx_error"):
                await self._on_close(frame.ref)
        except ProtocolError as exc:
            log.warning("ignoring a bad %s frame on %s: %s", ev, self.topic, exc)

    async def _on_change(self, change: Change) -> None:
        st = self._state
        if not st.is_new(change.position):
            log.debug("dropping duplicate %s on %s", change.position, self.topic)
            return
        indexes = st.binding_indexes(change.ids)
        if not indexes and all(i is None for i in st.ids):
            indexes = list(range(len(self._callbacks)))  # no ids to route by: every binding
        for i in indexes:
            cb = self._callbacks[i]
            if cb is not None:
                await _call(cb, change)
        await self._put(change)
        st.processed(change.position)

    async def _on_snapshot_event(self, item: SnapshotEvent, ids: tuple[int, ...]) -> None:
        """A snapshot row, marker or failure: to its binding's callback and snapshot streams.

        Rows are the table's state, not changes: they are neither de-duplicated against nor
        recorded as the channel's position (the marker's position is, in ``on_system``).
        """
        indexes = self._state.binding_indexes(ids)
        if not indexes:  # no id to route by: every binding this join asked a snapshot for
            indexes = sorted(self._state.snapshot_join)
        if isinstance(item, SnapshotRow):
            self._state.stats.snapshot_rows += 1
        for i in indexes:
            cb = self._callbacks[i]
            if cb is not None:
                await _call(cb, item)
        await self._put(item, kind="snapshot")

    async def _on_broadcast(self, msg: Broadcast) -> None:
        self._state.stats.broadcasts += 1
        for event, cb in list(self._broadcast_callbacks):
            if _event_matches(event, msg.event):
                await _call(cb, msg)
        self._offer(self._broadcast_subs, msg, msg.event)

    async def _on_presence(self, events: list[PresenceEvent]) -> None:
        for item in events:
            if isinstance(item, PresenceJoin):
                for jcb in list(self._join_callbacks):
                    await _call(jcb, item.key, list(item.current_presences), list(item.new_presences))
            elif isinstance(item, PresenceLeave):
                for lcb in list(self._leave_callbacks):
                    await _call(lcb, item.key, list(item.current_presences), list(item.left_presences))
            else:
                for scb in list(self._sync_callbacks):
                    await _call(scb)
            self._offer(self._presence_subs, item)

    async def _put(self, item: ChannelEvent, kind: Literal["change", "resync", "snapshot"] = "change") -> int:
        delivered = 0
        for entry in list(self._buffers):
            buf, wants_resync, wants_snapshot = entry
            if buf.closed:
                self._buffers.remove(entry)
            elif (
                kind == "change"
                or (kind == "resync" and wants_resync)
                or (kind == "snapshot" and wants_snapshot)
            ):
                delivered += await buf.put(item)
        return delivered

    async def _on_reply(self, frame: Frame, link: Link) -> None:
        waiting = self._pending.pop(frame.ref, None) if frame.ref is not None else None
        if waiting is not None:
            self._on_push_reply(waiting, frame.payload)
            return
        out = self._state.on_reply(frame.ref, frame.payload)
        if out is None:
            ok, response = parse_reply(frame.payload)
            if not ok:  # e.g. a broadcast without ack that the relay refused
                log.warning("the relay refused a push on %s: %s", self.topic, response.reason)
            return
        loop = asyncio.get_running_loop()
        if out.kind == "joined":
            self.join_deadline = None
            self._joined_at = loop.time()
            self._close_reason = self._close_code = None
            self._presence.joined()
            if self._tracked is not None:  # stay present across reconnects and rejoins
                retrack = presence_frame(
                    self.topic, self._host.next_ref(), self._state.join_ref, "track", self._tracked
                )
                assert retrack.ref is not None
                self._pending[retrack.ref] = _Push("re-track", None)
                try:
                    await link.send(retrack)
                    self._state.stats.retracks += 1
                except LinkClosed:
                    self._pending.pop(retrack.ref, None)
            token = self._host.token
            if token is not None and token != self._join_token:  # set_auth() while we were joining
                push = self.access_token_frame(self._host.next_ref(), token)
                if push is not None:
                    with contextlib.suppress(LinkClosed):
                        await link.send(push)
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
            await self._notify(RealtimeSubscribeStates.SUBSCRIBED, None)
            if self._presence_listen:
                self._want_presence()  # (listeners added while this join was on its way)
        elif out.kind == "left":
            if self._left is not None and not self._left.done():
                self._left.set_result(None)
        else:
            err = JoinError(self.name, out.reason or "refused", code=out.code)
            self.join_deadline = None
            if out.final:
                log.error("%s", err)
                if self._subscribed is not None and not self._subscribed.done():
                    self._subscribed.set_exception(err)
                    self._subscribed.exception()  # retrieved: subscribe() re-raises it
                self._host.forget(self)
                await self._finish(err, RealtimeSubscribeStates.CHANNEL_ERROR)
            else:
                self.retry_at = loop.time() + self._backoff.next_delay()
                log.warning("%s; retrying", err)
                await self._notify(RealtimeSubscribeStates.CHANNEL_ERROR, err)
                self._host.wake_joiner()

    def _on_push_reply(self, push: _Push, payload: Any) -> None:
        ok, response = parse_reply(payload)
        refusal = response if isinstance(response, Refusal) else Refusal("")
        if push.future is not None and not push.future.done():
            push.future.set_result(("ok", "", None) if ok else ("error", refusal.reason, refusal.code))
        elif not ok and push.what == "re-track":
            log.error(
                "presence on %s could not be tracked again after the rejoin: %s", self.topic, refusal.reason
            )
        elif not ok:
            log.warning("%s on %s refused: %s", push.what, self.topic, refusal.reason)

    async def _on_system(self, payload: Any) -> None:
        event = parse_system(self.name, payload, self._state.snapshot_seq)
        self._state.on_system(event)
        if isinstance(event, ResyncNeeded):
            log.warning("resync needed on %s: %s", self.topic, event.message)
            for cb in list(self._resync_callbacks):
                await _call(cb, event)
            delivered = await self._put(event, kind="resync")
            if self._state.resync_snapshot:
                if self._state.force_rejoin():
                    log.info("rejoining %s with a snapshot after the resync", self.topic)
                    self.retry_at = 0.0
                    self._host.wake_joiner()
            elif not delivered and not self._resync_callbacks:
                log.error("resync needed on %s but nobody listens (on_resync / changes())", self.topic)
        elif isinstance(event, SnapshotComplete):
            log.debug("snapshot of %s complete: %d rows, at %s", self.topic, event.rows, event.position)
            await self._on_snapshot_event(event, () if event.binding_id is None else (event.binding_id,))
        elif isinstance(event, SnapshotFailed):
            log.warning("snapshot on %s failed (%s): %s", self.topic, event.code, event.message)
            err = SnapshotError(
                self.name,
                event.message,
                code=event.code,
                binding_id=event.binding_id,
                snapshot=self._state.snapshot_seq,
            )
            await self._on_snapshot_event(err, () if event.binding_id is None else (event.binding_id,))
        elif isinstance(event, ChannelClosedByServer):
            log.warning("relay is closing %s: %s", self.topic, event.message)
            self._close_reason = event.message
            self._close_code = event.code
        elif isinstance(event, TokenExpiring):
            self._host.token_expiring(self.topic, event.expires_at)

    async def _on_close(self, ref: str | None) -> None:
        if not self._state.on_close(ref):
            return
        reason, self._close_reason = self._close_reason, None
        code, self._close_code = self._close_code, None
        self._settle_pending("lost", "channel closed by the relay")
        if self._left is not None and not self._left.done():
            self._left.set_result(None)
        if self._state.state is ChannelStates.ERRORED:  # closed by the relay: rejoin
            loop = asyncio.get_running_loop()
            self._backoff.connection_ended(loop.time() - self._joined_at)
            delay = 0.0 if self._state.token_error else self._backoff.next_delay()
            self.retry_at = loop.time() + delay
            error = None if reason is None else ChannelError(self.name, reason, code=code)
            await self._notify(RealtimeSubscribeStates.CHANNEL_ERROR, error)
            self._host.wake_joiner()

    async def _notify(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        for cb in list(self._subscribe_callbacks):
            await _call(cb, state, error)

    async def _finish(self, error: Exception | None, state: RealtimeSubscribeStates | None) -> None:
        """The channel is over: end its streams, tell subscribe callbacks, forget every callback."""
        self._finished = True
        self._finish_error = error
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_exception(error or ClientClosedError("the channel was closed"))
            self._subscribed.exception()
        for buf, _, _ in self._buffers:
            buf.close(error)
        self._buffers.clear()
        for bsub in self._broadcast_subs:
            bsub.buffer.close(error)
        for psub in self._presence_subs:
            psub.buffer.close(error)
        self._broadcast_subs.clear()
        self._presence_subs.clear()
        self._tracked = None
        self._settle_pending("lost", "channel closed")
        if state is not None:
            await self._notify(state, error)
        self._callbacks = [None] * len(self._callbacks)
        self._resync_callbacks.clear()
        self._subscribe_callbacks.clear()
        self._broadcast_callbacks.clear()
        self._sync_callbacks.clear()
        self._join_callbacks.clear()
        self._leave_callbacks.clear()
        self._presence.clear()

    def close_streams(self) -> None:
        """End every stream after what it holds (the client is closing)."""
        for buf, _, _ in self._buffers:
            buf.close()
        for bsub in self._broadcast_subs:
            bsub.buffer.close()
        for psub in self._presence_subs:
            psub.buffer.close()

    def finish_now(self, error: Exception | None) -> Awaitable[None]:
        """For the client's close: state CLOSED, then :meth:`_finish`."""
        self._state.wanted = False
        self._state.on_disconnect()
        return self._finish(error, RealtimeSubscribeStates.CLOSED)
