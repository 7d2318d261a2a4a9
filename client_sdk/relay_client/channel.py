"""A channel: its bindings, its consumers (callbacks, ``changes()`` streams) and frame handling.

Why the channel delivers and the client only routes: everything that must happen in order for
one channel — a join reply, the ``Subscribed``/``Resumed`` events, each change, a resync — is
handled here, by the socket's single reader task, one frame at a time.  A change's position is
recorded as processed only after every consumer got it, and the reader is never cancelled while
delivering, so a rejoin resumes exactly after the last change the application saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from relay_client.backoff import Backoff
from relay_client.errors import ClientClosedError, JoinError
from relay_client.join_state import ChannelState, ChannelStats
from relay_client.link import LinkClosed
from relay_client.protocol import (
    ChannelClosedByServer,
    Frame,
    ProtocolError,
    access_token_frame,
    parse_change,
    parse_system,
)
from relay_client.streams import Buffer, ChangeStream
from relay_client.types import (
    Binding,
    Change,
    ChangeCallback,
    ChannelStates,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
    ResyncCallback,
    ResyncNeeded,
    SubscribeCallback,
)

if TYPE_CHECKING:
    from relay_client.client import RelayClient
    from relay_client.link import Link

__all__ = ["RealtimeChannel"]

log = logging.getLogger("relay_client")

ChannelEvent = Change | ResyncNeeded


async def _call(cb: Any, arg: Any, *more: Any) -> None:
    """Run an application callback (sync or async); its failure is logged, never propagated."""
    try:
        result = cb(arg, *more)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("callback %r failed", cb)


class RealtimeChannel:
    """``client.channel(name)``: declare bindings, then ``await subscribe()``."""

    def __init__(self, client: RelayClient, name: str, resume_from: str | None) -> None:
        self._client = client
        self._state = ChannelState(name, position=resume_from)
        self._callbacks: list[ChangeCallback | None] = []  # one per binding
        self._resync_callbacks: list[ResyncCallback] = []
        self._subscribe_callbacks: list[SubscribeCallback] = []
        self._buffers: list[tuple[Buffer[Any], bool]] = []
        self._backoff = Backoff(client.options.backoff)
        self.retry_at = 0.0  # loop time before which the joiner does not (re)join us
        self.join_deadline: float | None = None
        self._joined_at = 0.0
        self._subscribed: asyncio.Future[None] | None = None
        self._left: asyncio.Future[None] | None = None
        self._join_token: str | None = None  # the token the pending/current join was sent with
        self._finished = False  # unsubscribed, refused for good, or the client closed
        self._finish_error: Exception | None = None

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
        callback: ChangeCallback | None = None,
        table: str | None = None,
        schema: str | None = None,
        filter: str | None = None,
    ) -> Self:
        """Subscribe to row changes; ``callback`` (optional: see ``changes()``) gets each :class:`Change`.

        Call before ``subscribe()``: bindings are part of the join.
        """
        ev = event.value if isinstance(event, RealtimePostgresChangesListenEvent) else str(event).upper()
        self._state.add_binding(Binding(ev, schema or "public", table, filter))
        self._callbacks.append(callback)
        return self

    def on_resync(self, callback: ResyncCallback) -> Self:
        """Called when the relay cannot replay what this channel missed: refetch, then go on."""
        self._resync_callbacks.append(callback)
        return self

    @overload
    def changes(self, *, resync: Literal[True] = ...) -> ChangeStream[Change | ResyncNeeded]: ...
    @overload
    def changes(self, *, resync: Literal[False]) -> ChangeStream[Change]: ...
    def changes(self, *, resync: bool = True) -> ChangeStream[Any]:
        """Every change of this channel, once, in order, as an async iterator.

        With ``resync=True`` (default) a :class:`ResyncNeeded` is yielded in the stream where it
        happened.  Create it before ``subscribe()`` to see the very first change; it holds at
        most ``queue_size`` items (then the socket reader waits: see the README's overflow
        policy).  It ends when the channel is unsubscribed or the client closed.
        """
        buf: Buffer[Any] = Buffer(self._client.options.queue_size)
        if self._finished or self._client.closing:
            buf.close(self._finish_error)
        self._buffers.append((buf, resync))
        return ChangeStream(buf)

    # -- subscribe / unsubscribe ------------------------------------------------------------
    async def subscribe(
        self,
        callback: SubscribeCallback | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the official client's name)
    ) -> Self:
        """Join (connecting the client if needed) and wait until joined.

        ``callback(state, error)`` is told about every (re)join, refusal, timeout and close.
        Raises :class:`JoinError` if the relay refuses the first join (it is not retried), or
        TimeoutError after ``timeout`` seconds (None: no limit) while the channel keeps trying.
        """
        if self._client.closing:
            raise ClientClosedError("the client is closed")
        if self._finished:
            if isinstance(self._finish_error, JoinError):
                raise self._finish_error
            raise RuntimeError(f"channel {self.name!r} is closed; create a new one with client.channel()")
        if not self._state.bindings:
            raise ValueError("add at least one on_postgres_changes() binding before subscribe()")
        if callback is not None and callback not in self._subscribe_callbacks:
            self._subscribe_callbacks.append(callback)
        if not self._state.wanted:
            if self._state.joined_once:
                raise RuntimeError("a channel subscribes once; create a new one with client.channel()")
            self._client._register(self)  # raises if another open channel has this name
            self._state.wanted = True
            self._subscribed = asyncio.get_running_loop().create_future()
            await self._client.connect(wait=False)
            self._client._wake_joiner()
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
        link = self._client._link
        frame = self._state.begin_leave(self._client._ref())
        if frame is not None and link is not None:
            self._left = asyncio.get_running_loop().create_future()
            try:
                await link.send(frame)
                if not self._client.in_callback():
                    await asyncio.wait_for(asyncio.shield(self._left), self._client.options.timeout)
            except Exception as exc:  # no reply: the relay forgets the channel with the socket
                log.debug("leave of %s not confirmed: %s", self.topic, exc)
        self._state.on_disconnect()  # whatever happened, we are not joined any more
        self._client._forget(self)
        await self._finish(None, RealtimeSubscribeStates.CLOSED)

    # -- called by the client ----------------------------------------------------------------
    def wants_join(self) -> bool:
        return self._state.needs_join()

    def join_frame(self, ref: str, join_ref: str, token: str | None) -> Frame:
        self.join_deadline = asyncio.get_running_loop().time() + self._client.options.timeout
        self._join_token = token
        return self._state.begin_join(ref, join_ref, token)

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
                await self._on_change(parse_change(self.name, frame.payload))
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
        await self._put(change, resync_item=False)
        st.processed(change.position)

    async def _put(self, item: ChannelEvent, resync_item: bool) -> int:
        delivered = 0
        for entry in list(self._buffers):
            buf, wants_resync = entry
            if buf.closed:
                self._buffers.remove(entry)
            elif wants_resync or not resync_item:
                delivered += await buf.put(item)
        return delivered

    async def _on_reply(self, frame: Frame, link: Link) -> None:
        out = self._state.on_reply(frame.ref, frame.payload)
        if out is None:
            return
        loop = asyncio.get_running_loop()
        if out.kind == "joined":
            self.join_deadline = None
            self._joined_at = loop.time()
            token = self._client._token
            if token is not None and token != self._join_token:  # set_auth() while we were joining
                push = self.access_token_frame(self._client._ref(), token)
                if push is not None:
                    with contextlib.suppress(LinkClosed):
                        await link.send(push)
            if self._subscribed is not None and not self._subscribed.done():
                self._subscribed.set_result(None)
            await self._notify(RealtimeSubscribeStates.SUBSCRIBED, None)
        elif out.kind == "left":
            if self._left is not None and not self._left.done():
                self._left.set_result(None)
        else:
            err = JoinError(self.name, out.reason or "refused")
            self.join_deadline = None
            if out.final:
                log.error("%s", err)
                if self._subscribed is not None and not self._subscribed.done():
                    self._subscribed.set_exception(err)
                    self._subscribed.exception()  # retrieved: subscribe() re-raises it
                self._client._forget(self)
                await self._finish(err, RealtimeSubscribeStates.CHANNEL_ERROR)
            else:
                self.retry_at = loop.time() + self._backoff.next_delay()
                log.warning("%s; retrying", err)
                await self._notify(RealtimeSubscribeStates.CHANNEL_ERROR, err)
                self._client._wake_joiner()

    async def _on_system(self, payload: Any) -> None:
        event = parse_system(self.name, payload)
        self._state.on_system(event)
        if isinstance(event, ResyncNeeded):
            log.warning("resync needed on %s: %s", self.topic, event.message)
            for cb in list(self._resync_callbacks):
                await _call(cb, event)
            if not await self._put(event, resync_item=True) and not self._resync_callbacks:
                log.error("resync needed on %s but nobody listens (on_resync / changes())", self.topic)
        elif isinstance(event, ChannelClosedByServer):
            log.warning("relay is closing %s: %s", self.topic, event.message)

    async def _on_close(self, ref: str | None) -> None:
        if not self._state.on_close(ref):
            return
        if self._left is not None and not self._left.done():
            self._left.set_result(None)
        if self._state.state is ChannelStates.ERRORED:  # closed by the relay: rejoin
            loop = asyncio.get_running_loop()
            self._backoff.connection_ended(loop.time() - self._joined_at)
            delay = 0.0 if self._state.token_error else self._backoff.next_delay()
            self.retry_at = loop.time() + delay
            await self._notify(RealtimeSubscribeStates.CHANNEL_ERROR, None)
            self._client._wake_joiner()

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
        for buf, _ in self._buffers:
            buf.close(error)
        self._buffers.clear()
        if state is not None:
            await self._notify(state, error)
        self._callbacks = [None] * len(self._callbacks)
        self._resync_callbacks.clear()
        self._subscribe_callbacks.clear()

    def close_streams(self) -> None:
        """End the ``changes()`` streams after what they hold (the client is closing)."""
        for buf, _ in self._buffers:
            buf.close()

    def finish_now(self, error: Exception | None) -> Awaitable[None]:
        """For the client's close: state CLOSED, then :meth:`_finish`."""
        self._state.wanted = False
        self._state.on_disconnect()
        return self._finish(error, RealtimeSubscribeStates.CLOSED)
