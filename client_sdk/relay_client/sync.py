"""A blocking facade for code without an event loop (scripts, WSGI apps, worker threads).

Why a thread with its own loop rather than a second implementation: reconnection, heartbeats,
resume and token refresh are subtle; there is exactly one implementation (the async client) and
this module only runs it on a private event loop in a daemon thread and waits for results.

Callbacks registered here run **on that thread** (keep them short or hand work to your own
queue); ``changes()`` is an ordinary blocking iterator.  ``close()`` (or leaving the ``with``
block) closes the client, stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Literal, Self, TypeVar, overload

from relay_client.channel import EventCallback, RealtimeChannel, SnapshotEvent
from relay_client.client import RelayClient
from relay_client.join_state import ChannelStats
from relay_client.status import Status, StatusCallback
from relay_client.streams import ChangeStream
from relay_client.types import (
    Broadcast,
    BroadcastCallback,
    Change,
    ChangeCallback,
    ChannelStates,
    PresenceEvent,
    PresenceJoinCallback,
    PresenceLeaveCallback,
    PresenceState,
    PresenceSyncCallback,
    RealtimePostgresChangesListenEvent,
    ResyncCallback,
    ResyncNeeded,
    SubscribeCallback,
)

__all__ = ["SyncChangeIterator", "SyncChannel", "SyncRelayClient"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread, and a way to run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="relay-client-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncChangeIterator(Iterator[T]):
    """Blocking iteration over a channel's ``changes()`` stream."""

    def __init__(self, runner: _LoopThread, stream: ChangeStream[T], timeout: float | None) -> None:
        self._runner = runner
        self._stream = stream
        self._timeout = timeout

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        async def nxt() -> T:
            return await self._stream.__anext__()

        try:
            return self._runner.run(nxt(), self._timeout)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._runner.loop.is_closed():
            self._runner.run(self._stream.aclose())


class SyncChannel:
    """Blocking twin of :class:`~relay_client.channel.RealtimeChannel`."""

    def __init__(self, runner: _LoopThread, channel: RealtimeChannel) -> None:
        self._runner = runner
        self.channel = channel

    @property
    def name(self) -> str:
        return self.channel.name

    @property
    def state(self) -> ChannelStates:
        return self.channel.state

    @property
    def position(self) -> str | None:
        return self.channel.position

    @property
    def stats(self) -> ChannelStats:
        return self.channel.stats

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
        """``snapshot=True``: the callback also gets the snapshot events (on the client's thread)."""
        self.channel.on_postgres_changes(
            event, callback, table=table, schema=schema, filter=filter, snapshot=snapshot
        )
        return self

    def on_resync(self, callback: ResyncCallback) -> Self:
        self.channel.on_resync(callback)
        return self

    @overload
    def changes(
        self, *, resync: Literal[True] = ..., snapshot: Literal[False] = ..., timeout: float | None = ...
    ) -> SyncChangeIterator[Change | ResyncNeeded]: ...
    @overload
    def changes(
        self, *, resync: Literal[False], snapshot: Literal[False] = ..., timeout: float | None = ...
    ) -> SyncChangeIterator[Change]: ...
    @overload
    def changes(
        self, *, resync: bool = ..., snapshot: Literal[True], timeout: float | None = ...
    ) -> SyncChangeIterator[Change | ResyncNeeded | SnapshotEvent]: ...
    def changes(
        self, *, resync: bool = True, snapshot: bool = False, timeout: float | None = None
    ) -> SyncChangeIterator[Any]:
        """Blocking iterator; ``timeout`` bounds each wait for the next item (TimeoutError).

        ``snapshot=True``: the snapshot events too (see ``RealtimeChannel.changes``).
        """

        async def make() -> ChangeStream[Any]:
            stream: ChangeStream[Any] = self.channel.changes(resync=resync, snapshot=snapshot)  # type: ignore[call-overload]
            return stream

        return SyncChangeIterator(self._runner, self._runner.run(make()), timeout)

    def subscribe(self, callback: SubscribeCallback | None = None, *, timeout: float | None = None) -> Self:
        self._runner.run(self.channel.subscribe(callback, timeout=timeout))
        return self

    # -- broadcast and presence (callbacks run on the client's thread) --------------------------
    def _on_loop(self, fn: Callable[[], object]) -> None:
        async def run() -> None:
            fn()

        self._runner.run(run())

    def on_broadcast(self, event: str, callback: BroadcastCallback) -> Self:
        self._on_loop(lambda: self.channel.on_broadcast(event, callback))
        return self

    def broadcasts(self, event: str = "*", *, timeout: float | None = None) -> SyncChangeIterator[Broadcast]:
        """Blocking iterator of broadcasts; ``timeout`` bounds each wait (TimeoutError)."""

        async def make() -> ChangeStream[Broadcast]:
            return self.channel.broadcasts(event)

        return SyncChangeIterator(self._runner, self._runner.run(make()), timeout)

    def send_broadcast(self, event: str, payload: Any, *, timeout: float | None = None) -> None:
        self._runner.run(self.channel.send_broadcast(event, payload, timeout=timeout))

    def on_presence_sync(self, callback: PresenceSyncCallback) -> Self:
        self._on_loop(lambda: self.channel.on_presence_sync(callback))
        return self

    def on_presence_join(self, callback: PresenceJoinCallback) -> Self:
        self._on_loop(lambda: self.channel.on_presence_join(callback))
        return self

    def on_presence_leave(self, callback: PresenceLeaveCallback) -> Self:
        self._on_loop(lambda: self.channel.on_presence_leave(callback))
        return self

    def presence_events(self, *, timeout: float | None = None) -> SyncChangeIterator[PresenceEvent]:
        async def make() -> ChangeStream[PresenceEvent]:
            return self.channel.presence_events()

        return SyncChangeIterator(self._runner, self._runner.run(make()), timeout)

    def presence_state(self) -> PresenceState:
        async def get() -> PresenceState:
            return self.channel.presence_state()

        return self._runner.run(get())

    def track(self, state: Mapping[str, Any], *, timeout: float | None = None) -> None:
        self._runner.run(self.channel.track(state, timeout=timeout))

    def untrack(self, *, timeout: float | None = None) -> None:
        self._runner.run(self.channel.untrack(timeout=timeout))

    def unsubscribe(self) -> None:
        self._runner.run(self.channel.unsubscribe())


class SyncRelayClient:
    """``with SyncRelayClient(url, token, **options) as client:`` — same options as RelayClient."""

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        self._runner = _LoopThread()

        async def make() -> RelayClient:
            return RelayClient(url, token, **options)

        try:
            self.client = self._runner.run(make())
        except BaseException:
            self._runner.stop()
            raise

    @property
    def status(self) -> Status:
        return self.client.status

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """``callback`` runs on the client's thread."""
        return self.client.on_status(callback)

    def connect(self, *, wait: bool = True, timeout: float | None = None) -> None:
        self._runner.run(self.client.connect(wait=wait, timeout=timeout))

    def wait_online(self, timeout: float | None = None) -> Status:
        return self._runner.run(self.client.wait_online(timeout))

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
    ) -> SyncChannel:
        async def make() -> RealtimeChannel:  # on the loop thread, which owns the client's state
            return self.client.channel(
                name,
                params,
                resume_from=resume_from,
                broadcast_self=broadcast_self,
                broadcast_ack=broadcast_ack,
                presence_key=presence_key,
                private=private,
                on_resync=on_resync,
            )

        return SyncChannel(self._runner, self._runner.run(make()))

    def set_auth(self, token: str | None) -> None:
        self._runner.run(self.client.set_auth(token))

    def reconnect(self) -> None:
        self._runner.run(self.client.reconnect())

    def close(self) -> None:
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self.client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        self.connect(wait=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
