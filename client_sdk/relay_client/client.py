"""The async client: one supervised WebSocket, reconnected with backoff, channels rejoined with resume.

Why a supervisor task: connecting, serving, noticing the link died and waiting before the next
attempt are one loop with one owner, so there is never more than one socket, the status is
reported from one place, and ``close()`` has one task to stop.  While a link is up three tasks
serve it — the reader (frames to channels, in order), the heartbeat (dead-link detection) and
the joiner ((re)joins with ``resume_from``, join timeouts, per-channel retry backoff) — and the
first of them to end ends the link.

Tokens: ``set_auth(token)`` pushes a new token to every joined channel and uses it for every
later connect and join.  With a ``token_provider`` the client asks for a new token before the
current one expires (see :mod:`relay_client.tokens`), after a handshake is refused, and before
rejoining a channel the relay closed over its token.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, Self

import aiohttp

from relay_client.backoff import Backoff
from relay_client.channel import RealtimeChannel
from relay_client.errors import ClientClosedError, GaveUpError
from relay_client.link import GOING_AWAY, AuthRejected, Link, LinkClosed, describe_error
from relay_client.options import ChannelOptions, ClientOptions
from relay_client.protocol import socket_url, topic_of
from relay_client.status import ClientState, Status, StatusBoard, StatusCallback
from relay_client.tokens import refresh_at, token_expiry

__all__ = ["RelayClient", "TokenProvider"]

log = logging.getLogger("relay_client")

TokenProvider = Callable[[], Awaitable[str]]


class RelayClient:
    """Async client of the change relay.  Use ``async with RelayClient(url, token) as client:``.

    ``url``: ``ws://host:4000/realtime/v1`` (``http(s)://`` and a trailing ``/websocket`` are
    accepted).  ``token``: the JWT to connect and join with.  ``token_provider``: async function
    returning a fresh JWT, called before expiry.  Every other option is a
    :class:`~relay_client.options.ClientOptions` field, by keyword.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        token_provider: TokenProvider | None = None,
        auto_reconnect: bool = True,
        params: Mapping[str, str] | None = None,
        hb_interval: float = 15.0,
        hb_timeout: float | None = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 15.0,
        stable_after: float = 10.0,
        max_retries: int | None = None,
        timeout: float = 10.0,
        queue_size: int = 1000,
        token_refresh_margin: float = 60.0,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.url = socket_url(url)
        self.options = ClientOptions(
            auto_reconnect=auto_reconnect,
            params=dict(params or {}),
            hb_interval=hb_interval,
            hb_timeout=hb_timeout,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            stable_after=stable_after,
            max_retries=max_retries,
            timeout=timeout,
            queue_size=queue_size,
            token_refresh_margin=token_refresh_margin,
            max_message_bytes=max_message_bytes,
        )
        self._token = token
        self._token_provider = token_provider
        self._token_lock = asyncio.Lock()
        self._token_changed = asyncio.Event()
        self._force_refresh = False
        self._token_generation = 0
        self._channels: dict[str, RealtimeChannel] = {}
        self._status = StatusBoard()
        self._backoff = Backoff(self.options.backoff)
        self._refs = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._token_task: asyncio.Task[None] | None = None
        self._link: Link | None = None
        self._reader: asyncio.Task[str | None] | None = None  # these two run callbacks
        self._joiner: asyncio.Task[str] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # skip the backoff wait (reconnect(), close())
        self._join_wake = asyncio.Event()
        self.closing = False
        self._closed = asyncio.Event()
        self._give_up_error: GaveUpError | None = None
        self._host = _ChannelHost(self)  # all a channel may use of this client

    # -- status ---------------------------------------------------------------------------------
    @property
    def status(self) -> Status:
        """connecting, online, offline (with ``reason``) or closed."""
        return self._status.current

    @property
    def is_connected(self) -> bool:
        return self._status.current.online

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call ``callback(status)`` on every change; returns a function that unregisters it."""
        return self._status.subscribe(callback)

    def status_changes(self) -> AsyncIterator[Status]:
        """Async iterator of status changes (keeps the latest 32 if you fall behind); ends at close."""
        return self._status.stream()

    async def wait_online(self, timeout: float | None = None) -> Status:  # noqa: ASYNC109 (the official client's name)
        """Until the client is online; TimeoutError after ``timeout`` s, ClientClosedError if closed."""

        def ready(s: Status) -> bool:
            return s.online or self.closing

        status = await self._status.wait_for(ready, timeout)
        if not status.online:
            raise self._give_up_error or ClientClosedError("the client is closed")
        return status

    # -- lifecycle -------------------------------------------------------------------------------
    async def connect(self, *, wait: bool = True, timeout: float | None = None) -> None:  # noqa: ASYNC109 (the official client's name)
        """Start connecting (once); with ``wait``, until online (see :meth:`wait_online`)."""
        if self.closing:
            raise self._give_up_error or ClientClosedError("the client is closed")
        if self._supervisor is None:
            self._session = aiohttp.ClientSession()
            self._status.set(ClientState.CONNECTING, None, 1)
            self._supervisor = asyncio.create_task(self._run(), name="relay-client")
            if self._token_provider is not None:
                self._token_task = asyncio.create_task(self._token_loop(), name="relay-client-token")
        if wait:
            await self.wait_online(timeout)

    async def reconnect(self) -> None:
        """Drop the current connection (if any) and connect again now, without backoff."""
        if self.closing:
            raise ClientClosedError("the client is closed")
        self._backoff.reset()
        link = self._link
        if link is not None:
            link.request_stop("reconnect requested")
        self._wake.set()
        if self._supervisor is None:
            await self.connect(wait=False)

    async def close(self) -> None:
        """Close the socket, end every stream and iterator, stop every task; idempotent.

        Nothing is delivered once it is called.  From inside a callback it returns at once and
        the close completes when the callback has returned (the reader runs the callback).
        """
        if self._close_task is None:
            self.closing = True
            for ch in self._channels.values():
                ch.close_streams()  # they end after what they hold; a reader blocked on one wakes
            link = self._link
            if link is not None:
                link.request_stop("closed by client")
                link.stopping = True
            self._wake.set()
            self._close_task = asyncio.create_task(self._close(), name="relay-client-close")
        if not self.in_callback():
            await asyncio.shield(self._close_task)

    def in_callback(self) -> bool:
        """Whether the caller runs inside a change/resync/subscribe callback (the reader task)."""
        current = asyncio.current_task()
        return current is not None and current in (self._reader, self._joiner)

    async def _close(self) -> None:
        sup = self._supervisor
        if sup is not None:
            if self._link is None:
                sup.cancel()  # connecting or waiting to: nothing is being delivered
            done, _ = await asyncio.wait({sup}, timeout=self.options.timeout)
            if not done:
                sup.cancel()
            await asyncio.gather(sup, return_exceptions=True)
        if not self._closed.is_set():  # (a give-up already tore down, with its own reason)
            await self._teardown(None, "closed by client")

    async def __aenter__(self) -> Self:
        await self.connect(wait=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _teardown(self, error: Exception | None, reason: str) -> None:
        """Everything after the supervisor stopped (close, or giving up)."""
        self.closing = True
        task = self._token_task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for ch in list(self._channels.values()):
            await ch.finish_now(error)
        self._channels.clear()
        if self._session is not None:
            await self._session.close()
        self._status.set(ClientState.CLOSED, reason)
        self._status.end()
        self._closed.set()

    # -- channels -----------------------------------------------------------------------------
    def channel(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        resume_from: str | None = None,
        broadcast_self: bool = False,
        broadcast_ack: bool = False,
        presence_key: str = "",
        private: bool = False,
        on_resync: Literal["report", "snapshot"] = "report",
    ) -> RealtimeChannel:
        """The channel ``name`` (``realtime:`` prefix optional); an existing open one is returned.

        ``resume_from``: a position persisted from an earlier run (``channel.position``): the
        first join resumes after it instead of starting now.  ``on_resync``: ``"report"`` (the
        default) delivers a :class:`ResyncNeeded` and goes on live; ``"snapshot"`` also rejoins
        asking every binding for a fresh snapshot (see ``RealtimeChannel.snapshot_on_resync``).
        ``broadcast_self``, ``broadcast_ack``, ``presence_key``, ``private``: see
        :class:`ChannelOptions`; they may also come as the official client's ``params``
        (``{"config": {"broadcast": {"self": True}}}``).
        """
        if on_resync not in ("report", "snapshot"):
            raise ValueError('on_resync is "report" or "snapshot"')
        options = ChannelOptions(broadcast_self, broadcast_ack, presence_key, private)
        if params is not None:
            if options != ChannelOptions():
                raise ValueError("give the channel options either as params or as keywords, not both")
            options = ChannelOptions.from_params(params)
        existing = self._channels.get(topic_of(name))
        if existing is not None and not existing.is_closed:
            if options != ChannelOptions() and options != existing.options:
                raise ValueError(f"channel {name!r} is open with other options ({existing.options})")
            if on_resync == "snapshot":
                existing.snapshot_on_resync()
            return existing
        channel = RealtimeChannel(self._host, name.removeprefix("realtime:"), resume_from, options)
        return channel.snapshot_on_resync() if on_resync == "snapshot" else channel

    def get_channels(self) -> list[RealtimeChannel]:
        return list(self._channels.values())

    async def remove_channel(self, channel: RealtimeChannel) -> None:
        await channel.unsubscribe()

    async def remove_all_channels(self) -> None:
        for ch in list(self._channels.values()):
            await ch.unsubscribe()

    def _register(self, ch: RealtimeChannel) -> None:
        old = self._channels.get(ch.topic)
        if old is not None and old is not ch and not old.is_closed:
            raise RuntimeError(f"channel {ch.name!r} is already subscribed on this client")
        self._channels[ch.topic] = ch

    def _forget(self, ch: RealtimeChannel) -> None:
        if self._channels.get(ch.topic) is ch:
            del self._channels[ch.topic]

    def _wake_joiner(self) -> None:
        self._join_wake.set()

    def _ref(self) -> str:
        return str(next(self._refs))

    # -- tokens -------------------------------------------------------------------------------
    async def set_auth(self, token: str | None) -> None:
        """Use ``token`` from now on: pushed to every joined channel, used on every reconnect."""
        self._token = token
        self._token_generation += 1
        self._force_refresh = False
        self._token_changed.set()
        for ch in self._channels.values():
            if ch.wants_join():
                ch.retry_at = 0.0  # a refused (expired-token) rejoin may work now
        self._wake_joiner()
        link = self._link
        if link is None or token is None:
            return
        for ch in list(self._channels.values()):
            frame = ch.access_token_frame(self._ref(), token)
            if frame is None:
                continue
            try:
                await link.send(frame)
            except LinkClosed:
                return  # the rejoin after the reconnect carries the new token

    def _token_expiring(self, topic: str, expires_at: float | None) -> None:
        """The relay warned that a channel's token expires soon: refresh now (``token_expiring``).

        The SDK already refreshes before ``exp`` by its own clock; the warning covers a clock
        that differs from the relay's, and a margin too small for a slow provider.  A warning
        about a token already replaced (every channel is warned about the same one) is ignored.
        """
        current = token_expiry(self._token)
        if expires_at is not None and current is not None and current > expires_at:
            return
        if self._token_provider is None:
            log.warning("the token of %s expires soon; without a token_provider call set_auth()", topic)
            return
        self._force_refresh = True
        self._token_changed.set()  # the token loop asks the provider now

    def _token_stale(self) -> bool:
        if self._token is None or self._force_refresh:
            return True
        at = refresh_at(self._token, time.time(), self.options.token_refresh_margin)
        return at is not None and time.time() >= at

    async def _current_token(self, force: bool = False) -> str | None:
        """The token to connect or join with, asking the provider first if it is due.

        ``force``: ask even if the token looks valid (the relay refused it).  Concurrent callers
        share one provider call: whoever waited for the lock while a refresh happened uses it.
        """
        if self._token_provider is None or not (force or self._token_stale()):
            return self._token
        generation = self._token_generation
        async with self._token_lock:
            if self._token_generation != generation or not (force or self._token_stale()):
                return self._token  # refreshed while we waited for the lock
            try:
                token = await asyncio.wait_for(self._token_provider(), self.options.timeout)
            except Exception as exc:
                log.warning("token provider failed: %s", describe_error(exc))
                return self._token
            await self.set_auth(token)
            return token

    async def _token_loop(self) -> None:
        """Ask the provider for a new token when the current one is due (see ``tokens.refresh_at``)."""
        failures = Backoff(self.options.backoff)
        while not self.closing:
            self._token_changed.clear()
            if not self._token_stale():
                at = refresh_at(self._token, time.time(), self.options.token_refresh_margin)
                wait = None if at is None else max(0.0, at - time.time()) + 0.01
                try:
                    await asyncio.wait_for(self._token_changed.wait(), wait)
                except TimeoutError:
                    pass
                continue  # due now, or a new token: look again
            before = self._token_generation
            await self._current_token()
            if self._token_generation == before:  # the provider failed: try again later
                await asyncio.sleep(failures.next_delay())
            else:
                failures.reset()

    # -- the supervisor -------------------------------------------------------------------------
    async def _run(self) -> None:
        failed = 0
        while not self.closing:
            assert self._session is not None
            try:
                token = await self._current_token(force=self._force_refresh)
                link = await Link.open(
                    self._session,
                    self.url,
                    token,
                    self.options.params,
                    timeout=self.options.timeout,
                    hb_interval=self.options.hb_interval,
                    hb_timeout=self.options.heartbeat_timeout,
                    max_message_bytes=self.options.max_message_bytes,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed += 1
                self._force_refresh = isinstance(exc, AuthRejected) and self._token_provider is not None
                reason = describe_error(exc)
                if self.closing:
                    break
                if not self.options.auto_reconnect or (
                    self.options.max_retries is not None and failed > self.options.max_retries
                ):
                    await self._give_up(f"gave up after {failed} failed connection attempts: {reason}")
                    return
                self._status.set(ClientState.OFFLINE, reason, failed)
                await self._pause(self._backoff.next_delay())
                continue
            failed = 0
            self._wake.clear()
            if self.closing:
                await link.close()
                break
            # online is reported by _serve once the relay answers on this socket, not here
            reason = await self._serve(link)
            # a link that never answered was no connection at all: it must not reset the backoff
            self._backoff.connection_ended(link.age if link.answered.is_set() else 0.0)
            if self.closing:
                break
            log.info("connection lost: %s", reason)
            if not self.options.auto_reconnect:
                await self._give_up(f"connection lost: {reason} (auto_reconnect is off)")
                return
            self._status.set(ClientState.OFFLINE, reason, 0)
            if link.stop_reason == "reconnect requested":
                continue
            delay = self._backoff.next_delay()
            if link.close_code == GOING_AWAY:
                # The relay is shutting down: its listener may still accept for a moment, and a
                # replacement needs time to start.  Never retry at once (full jitter can draw ~0):
                # wait at least initial_backoff, and let the attempts count up.
                self._backoff.connection_ended(0.0)
                delay += self.options.initial_backoff
            await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt, or less if woken (reconnect(), close())."""
        if self.closing:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _give_up(self, reason: str) -> None:
        log.error("%s", reason)
        self._give_up_error = GaveUpError(reason)
        await self._teardown(self._give_up_error, reason)

    async def _serve(self, link: Link) -> str:
        """Run one link until it ends; returns why.  Channels are left ready to rejoin."""
        self._link = link
        for ch in self._channels.values():
            ch.retry_at = 0.0
        reader = self._reader = asyncio.create_task(self._read(link), name="relay-client-reader")
        heartbeat = asyncio.create_task(link.heartbeat(self._ref), name="relay-client-heartbeat")
        joiner = self._joiner = asyncio.create_task(self._join_loop(link), name="relay-client-joiner")
        stop = asyncio.create_task(link.stop_requested.wait(), name="relay-client-stop")
        online = asyncio.create_task(self._online_when_answered(link), name="relay-client-online")
        helpers = (heartbeat, joiner, stop)
        reason = "connection ended"
        try:
            done, _ = await asyncio.wait({reader, *helpers}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("%s failed", t.get_name(), exc_info=t.exception())
            for t in (heartbeat, joiner, reader):
                if t in done and not t.cancelled() and t.exception() is None and t.result():
                    reason = str(t.result())
                    break
            else:
                reason = link.stop_reason or reason
            link.request_stop(reason)
            link.stopping = True
            if not self.closing:  # offline from the moment the link is given up, not once torn down
                self._status.set(ClientState.OFFLINE, reason, 0)
            for t in helpers:
                t.cancel()
            if not reader.done() and link.in_receive:
                reader.cancel()  # parked in receive(): nothing is half-delivered
            # Otherwise the reader is delivering to the application: let it finish that change
            # (its position is recorded only then), bounded when closing.
            await asyncio.wait({reader}, timeout=self.options.timeout if self.closing else None)
        finally:
            for t in (reader, online, *helpers):
                t.cancel()
            await asyncio.gather(reader, online, *helpers, return_exceptions=True)
            await link.close()
            self._link = None
            self._reader = self._joiner = None
            for ch in list(self._channels.values()):
                ch.on_disconnect()
        return reason

    async def _online_when_answered(self, link: Link) -> None:
        """Report online once the relay answered on ``link`` (a join or heartbeat reply).

        Why not on the handshake: a relay that is shutting down can still accept a socket it
        will never serve; reporting online then would be a lie that lasts until the heartbeat
        gives up on it.
        """
        await link.answered.wait()
        if not link.stopping and not self.closing:
            self._status.set(ClientState.ONLINE, None)

    async def _read(self, link: Link) -> str | None:
        while not link.stopping:
            frame = await link.receive()
            if frame is None:
                return link.stop_reason
            ch = self._channels.get(frame.topic)
            if ch is None:
                continue
            link.delivering = True
            try:
                await ch.handle(frame, link)
            finally:
                link.delivering = False
        return None

    async def _join_loop(self, link: Link) -> str:
        """(Re)join channels that need it, time out joins that got no reply."""
        loop = asyncio.get_running_loop()
        try:
            while not link.stopping:
                self._join_wake.clear()
                next_due: float | None = None
                for ch in list(self._channels.values()):
                    now = loop.time()
                    if ch.wants_join():
                        if ch.retry_at > now:
                            next_due = ch.retry_at if next_due is None else min(next_due, ch.retry_at)
                            continue
                        token = await self._current_token(force=ch.needs_token_refresh)
                        if link.stopping or not ch.wants_join():
                            continue
                        await link.send(ch.join_frame(self._ref(), self._ref(), token))
                    due = await ch.check_join_timeout(loop.time())
                    if due is None and ch.wants_join():
                        due = ch.retry_at
                    if due is not None:
                        next_due = due if next_due is None else min(next_due, due)
                wait = None if next_due is None else max(0.0, next_due - loop.time())
                try:
                    await asyncio.wait_for(self._join_wake.wait(), wait)
                except TimeoutError:
                    pass
        except LinkClosed as exc:
            return f"join not sent: {exc}"
        return ""


class _ChannelHost:
    """The client as its channels see it: :class:`~relay_client.channel.ChannelHost`.

    Why an object of its own rather than the client itself: the members a channel needs
    (``next_ref``, ``register``, ``wake_joiner``...) are not part of the client's public API, and
    the channel must not reach into the client's private state either.  This is the one place
    that maps the narrow interface onto the client.
    """

    __slots__ = ("_client",)

    def __init__(self, client: RelayClient) -> None:
        self._client = client

    @property
    def options(self) -> ClientOptions:
        return self._client.options

    @property
    def closing(self) -> bool:
        return self._client.closing

    @property
    def status(self) -> Status:
        return self._client.status

    @property
    def link(self) -> Link | None:
        return self._client._link

    @property
    def token(self) -> str | None:
        return self._client._token

    def next_ref(self) -> str:
        return self._client._ref()

    def in_callback(self) -> bool:
        return self._client.in_callback()

    def wake_joiner(self) -> None:
        self._client._wake_joiner()

    def register(self, channel: RealtimeChannel) -> None:
        self._client._register(channel)

    def forget(self, channel: RealtimeChannel) -> None:
        self._client._forget(channel)

    async def connect(self) -> None:
        await self._client.connect(wait=False)

    def token_expiring(self, topic: str, expires_at: float | None) -> None:
        self._client._token_expiring(topic, expires_at)
