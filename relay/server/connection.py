"""One client WebSocket: its channels, its outgoing queue and the Phoenix event handlers.

A socket is given :class:`SocketServices` (the feed, the topic hub, the outbox, the catalog,
the verifier, the metrics), never the server: it attaches its channels to the feed and detaches
them when they close, and marks itself in the outbox when a batch queued frames on it.

Why a class per socket: a socket owns state that must die with it (bindings in the index,
token-expiry timers) and an ordered outgoing queue.  Sends never block the fan-out: frames are
appended to a bounded queue, written once per batch or drained by a sender task; a socket that
falls too far behind is closed with a reason it can act on instead of growing the relay's memory.

Why the sender task is started only when needed: an idle socket is the common case (issue 16:
10,000 of them, each with one channel), and a task with its coroutine, an ``asyncio.Event`` and
a ``deque`` cost ≈ 2.6 KiB per socket for nothing while prebuilt frames are written by
:meth:`Connection.flush` without any task.  The task runs while flow control holds the socket
(or, with compression, while frames are queued) and ends when the queue is empty.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from relay.config import Config
from relay.core.errors import Code
from relay.core.filters import BoundFilter, FilterError
from relay.core.protocol import Frame, encode, reply, ws_text_frame
from relay.core.quotas import CHANNELS, JOINS, Quota, TokenBucket
from relay.core.subscriptions import (
    BindingError,
    BindingSpec,
    FrameCache,
    TableUnavailable,
)
from relay.core.tokens import Claims, TokenError, Verifier
from relay.logs import audit_event
from relay.postgres.availability import UNREACHABLE_REASON, database_unreachable
from relay.postgres.catalog import Catalog, OperandCastError
from relay.server import session
from relay.server.channel import Channel
from relay.server.metrics import RelayMetrics
from relay.server.outbox import Outbox, socket_transport, wait_writable, writing_paused
from relay.server.snapshot import SnapshotRequest, Snapshots
from relay.server.topics import JoinRefused, TopicHub
from relay.server.websocket import RelaySocket

if TYPE_CHECKING:
    from relay.server.feed import ChangeFeed

__all__ = ["Channel", "Connection", "SocketServices"]

log = logging.getLogger("relay.socket")


@dataclass(frozen=True, slots=True)
class SocketServices:
    """What a socket may use of the relay, handed in by the server (never the server itself).

    Why: a socket used to reach into a dozen members of the server; these are the parts it
    actually needs, each owning its own state.
    """

    config: Config
    verifier: Verifier
    catalog: Catalog
    feed: ChangeFeed
    topics: TopicHub
    outbox: Outbox
    metrics: RelayMetrics
    snapshots: Snapshots | None = None


class Connection:
    """Protocol handler and send queue of one WebSocket."""

    def __init__(
        self,
        services: SocketServices,
        ws: web.WebSocketResponse | RelaySocket,
        vsn: str,
        claims: Claims,
        peer: str,
        request: web.Request | None = None,
        token_hash: int | None = None,
    ) -> None:
        self.config = services.config
        self.verifier = services.verifier
        self.catalog = services.catalog
        self.feed = services.feed
        self.topics = services.topics
        self.outbox = services.outbox
        self.metrics = services.metrics
        self.snapshots = services.snapshots
        self.ws = ws
        self.vsn = vsn
        self.claims = claims
        self.token_hash = token_hash  # hash() of the connect token whose claims these are
        self.peer = peer
        self.channels: dict[str, Channel] = {}
        # Without a compression extension frames are written as prebuilt bytes straight to the
        # transport (shared by every socket that receives them, many per write); with
        # compression each is sent through aiohttp, which compresses per socket.
        # A socket the relay took from aiohttp after the upgrade (relay/server/websocket.py) is
        # its own transport's protocol: flow control is asked of it.
        own = isinstance(ws, RelaySocket)
        self.raw = own or (
            request is not None and not self.config.compression and request.transport is not None
        )
        self._protocol: Any = ws if own else request.protocol if request is not None else None
        # Prebuilt WebSocket frames when ``raw``; otherwise text (str) and binary (bytes) messages.
        # A list, not a deque: it is empty nearly always (an empty deque keeps a 512-byte block).
        self.queue: list[bytes | str] = []
        self._sender: asyncio.Task[None] | None = None  # running only while it has work
        self._draining = False  # flow control paused the socket: the sender task owns the queue
        self.closing = False
        self.close_reason = ""
        self.sent = 0
        self.bytes_sent = 0  # encoded frame bytes written (relay_sent_bytes_total)
        self.writes = 0  # transport writes of prebuilt frames (a join costs one: tests, benches)
        self.connected_at = time.time()
        # Rate quotas of this socket (relay/core/quotas.py), on the monotonic clock.
        cfg, now = self.config, time.monotonic()
        self.join_rate = TokenBucket(cfg.max_joins_per_second, now=now)
        self.message_rate = TokenBucket(cfg.max_events_per_second, now=now)
        self.presence_rate = TokenBucket(cfg.max_presence_events_per_second, now=now)
        self._audited: dict[str, float] | None = None  # quota kind -> when its last hit was audited

    @property
    def own(self) -> bool:
        """The socket is the relay's own (taken from aiohttp after the upgrade).

        A property, not an attribute: an instance with 30 attributes or more no longer shares
        its class's key table (CPython 3.11), and its ``__dict__`` grows from ≈ 0.3 to ≈ 1.6 KiB
        per socket — one attribute more than the 29 here did exactly that.
        """
        return isinstance(self.ws, RelaySocket)

    # -- sending --------------------------------------------------------------------------
    def deliver(self, cache: FrameCache, topic: str, ids: list[int]) -> None:
        """Queue a fan-out frame from the change's shared encode-once cache."""
        self.push(cache.wire(topic, ids, self.vsn) if self.raw else cache.frame(topic, ids, self.vsn))

    def push(self, text: bytes | str) -> None:
        """Queue one encoded frame; drop the socket if its queue is over the bound."""
        if self.closing:
            return
        if len(self.queue) >= self.config.socket_queue_frames and self.raw and not self._draining:
            self.flush()  # a big batch, not a slow reader: write what is queued now
        if len(self.queue) >= self.config.socket_queue_frames:
            self.abort(
                WSCloseCode.TRY_AGAIN_LATER,
                f"slow consumer: more than {self.config.socket_queue_frames} frames queued; reconnect",
            )
            return
        self.queue.append(text)
        if self.raw and not self._draining:
            # written by flush() at the end of the fan-out batch: one write per socket per batch
            self.outbox.mark(self)
        else:
            self._start_sender()

    def _start_sender(self) -> None:
        """Make sure the sender task runs (it ends by itself once the queue is empty).

        Without a running event loop (a connection built by a unit test) frames stay queued.
        """
        if self._sender is not None or self.closing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._sender = loop.create_task(self.sender())

    async def stop_sender(self) -> None:
        """End the sender task, if one runs (the socket is gone)."""
        task, self._sender = self._sender, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def cancel_sender(self) -> None:
        """End the sender task without waiting for it (a socket of the relay's own is gone)."""
        task, self._sender = self._sender, None
        if task is not None:
            task.cancel()

    def queue_frame(self, frame: Frame) -> None:
        """Queue a relay-initiated frame to go out with the fan-out batch (no write of its own)."""
        text = encode(frame, self.vsn)
        self.push(ws_text_frame(text.encode()) if self.raw else text)

    async def drain(self, below: int) -> None:
        """Write what is queued and wait until fewer than ``below`` frames are left (replay pacing).

        Ends when the socket closes; the heartbeat timeout bounds how long a dead peer can hold
        it.
        """
        self.flush()
        while not self.closing and (len(self.queue) > below or self._draining):
            await asyncio.sleep(0.005)
            self.flush()

    def send_frame(self, frame: Frame) -> None:
        """Queue and send a reply or control frame now (it answers the client)."""
        text = encode(frame, self.vsn)
        self.push(ws_text_frame(text.encode()) if self.raw else text)
        if self.raw:
            self.flush()

    def flush(self) -> None:
        """Write everything queued in one transport write, unless flow control holds the socket.

        Called for every socket touched by a fan-out batch, and after replies.  When the
        transport's buffer is over its high-water mark the sender task takes over and waits
        for it to drain, so a slow reader never blocks the fan-out.
        """
        if self.closing or not self.queue or self._draining:
            return
        proto = self._protocol
        if writing_paused(proto):
            self._draining = True
            self._start_sender()
            return
        if not self._write_chunk(unbounded=True):
            return
        if writing_paused(proto):
            self._draining = True
            self._start_sender()

    def reply_error(self, f: Frame, reason: str, code: Code) -> None:
        """``phx_reply`` error answering the frame ``f`` (same topic, ref and join_ref).

        ``code`` is the stable name (docs/protocol.md, "Error codes") beside the human
        ``reason``: every error the relay sends has one, so clients never parse the text.
        """
        response = {"reason": reason, "code": str(code)}
        if f.event == "phx_join":  # counted and audited by code (docs/operations.md)
            self.metrics.join_refused(f, reason, code)
        self.send_frame(reply(f.topic, f.ref, f.join_ref, "error", response))

    def refuse(self, f: Frame, quota: Quota) -> None:
        """Answer ``f`` with the quota's error reply (reason and code); count and audit the hit.

        Every hit is counted; the audit log gets one line per kind per second per socket, so a
        client hammering a limit cannot flood the log (the count says how many there were).
        """
        now = time.monotonic()
        if self._audited is None:
            self._audited = {}
        audited = now - self._audited.get(quota.kind, -1e9) >= 1.0
        if audited:
            self._audited[quota.kind] = now
        self.metrics.quota_hit(quota, self.peer, f.topic, audited=audited)
        self.reply_error(f, quota.reason, quota.code)

    def within(self, bucket: TokenBucket, f: Frame, quota: Quota) -> bool:
        """Take one event from a rate quota's bucket; refuse ``f`` (and say False) when it is empty."""
        if bucket.take(time.monotonic()):
            return True
        self.refuse(f, quota)
        return False

    def send_frame_error(self, reason: str, code: Code) -> None:
        """An error not tied to a topic the client sent (e.g. an unreadable binary frame)."""
        self.send_frame(reply("phoenix", None, None, "error", {"reason": reason, "code": str(code)}))

    def abort(self, code: int, reason: str) -> None:
        """Close from the relay's side (slow consumer, shutdown) without waiting."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        self.queue.clear()
        log.warning("closing socket %s: %s", self.peer, reason)
        if isinstance(self.ws, RelaySocket):
            self.ws.close(code, reason.encode()[:120], wait=False)
            return
        asyncio.get_running_loop().create_task(self.ws.close(code=code, message=reason.encode()[:120]))

    async def sender(self) -> None:
        """Drain the queue in order, then end; the fan-out never awaits a socket.

        Started by :meth:`_start_sender` when frames cannot be written at once (flow control,
        or no prebuilt frames); between the last check of the queue and the task's end there
        is no ``await``, so a frame queued meanwhile always finds the task running or starts
        a new one.
        """
        try:
            while not self.closing and (self.queue or self._draining):
                if self.raw:
                    await self._send_raw()
                    if not self.queue:
                        self._draining = False
                else:
                    ws = self.ws
                    assert not isinstance(ws, RelaySocket)  # the relay's own sockets are raw
                    item = self.queue.pop(0)
                    if isinstance(item, str):
                        await ws.send_str(item)
                    else:  # without prebuilt frames, bytes are a binary message (kind 4)
                        await ws.send_bytes(item)
                    self.sent += 1
                    self.bytes_sent += len(item)
        except (ConnectionError, RuntimeError) as exc:  # peer went away mid-send
            log.debug("send to %s failed: %s", self.peer, exc)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    def _write_chunk(self, unbounded: bool = False) -> bool:
        """Pop queued frames (up to 256 KiB unless ``unbounded``) into one transport write."""
        q = self.queue
        ws = self.ws
        transport = ws.transport if isinstance(ws, RelaySocket) else socket_transport(ws)
        if transport is None or transport.is_closing():
            q.clear()
            self.closing = True
            return False
        size = 0
        if unbounded:
            self.queue = []  # hand the whole list over: nothing to copy or shift
            chunk = [b if isinstance(b, bytes) else b.encode() for b in q]
            size = sum(map(len, chunk))
        else:
            chunk = []
            for item in q:
                b = item if isinstance(item, bytes) else item.encode()
                chunk.append(b)
                size += len(b)
                if size >= 262_144:
                    break
            del q[: len(chunk)]
        if chunk:
            transport.write(b"".join(chunk) if len(chunk) > 1 else chunk[0])
            self.writes += 1
            self.sent += len(chunk)
            self.bytes_sent += size
        return True

    async def _send_raw(self) -> None:
        """Sender-task path: write a chunk, then wait while flow control holds the socket."""
        if not self._write_chunk():
            return
        proto = self._protocol
        if proto is not None and writing_paused(proto):
            await wait_writable(proto)

    # -- receiving ------------------------------------------------------------------------
    async def handle_text(self, data: str) -> None:
        """Handle one client text frame; every failure becomes an error frame, never a crash.

        What the frame means is decided by the session (sans-I/O); this applies it.
        """
        got = session.read_text(data, self.vsn, self.config.max_frame_bytes)
        if not isinstance(got, Frame):
            await self.apply(got)
            return
        try:
            await self.apply(session.decide(got, self.channels))
        except Exception:  # a handler bug must not take the socket or the server down
            log.exception("error handling %s on %s", got.event, got.topic)
            self.metrics.handler_errors += 1
            self.reply_error(got, "internal error handling the message", Code.UNKNOWN_ERROR_ON_CHANNEL)

    async def handle_binary(self, data: bytes) -> None:
        """A binary frame: only vsn 2.0.0 user broadcasts (kind 3) exist; anything else is refused."""
        joined = self.channels
        try:
            await self.apply(session.read_binary(data, self.vsn, self.config.max_frame_bytes, joined))
        except Exception:  # a handler bug must not take the socket or the server down
            log.exception("error handling a binary frame from %s", self.peer)
            self.metrics.handler_errors += 1
            self.send_frame_error("internal error handling the binary frame", Code.UNKNOWN_ERROR_ON_CHANNEL)

    async def apply(self, req: session.Request) -> None:
        """Carry out what the session read from a frame: the I/O and the channel bookkeeping."""
        if isinstance(req, session.BroadcastPush):
            self.topics.client_broadcast(self.channels[req.frame.topic], req.frame, req.message)
        elif isinstance(req, session.PresencePush):
            self.topics.presence_push(self.channels[req.frame.topic], req.frame)
        elif isinstance(req, session.Send):
            self.send_frame(req.frame)
        elif isinstance(req, session.Refusal):
            self.reply_error(req.frame, req.reason, req.code)
        elif isinstance(req, session.FrameError):
            self.send_frame(req.reply())
        elif isinstance(req, session.Join):
            await self.join(req.frame)
        elif isinstance(req, session.Leave):
            self.send_frame(req.reply)
            self.close_channel(self.channels[req.frame.topic])
        else:
            await self.refresh_token(self.channels[req.frame.topic], req.token)

    # -- channels -------------------------------------------------------------------------
    async def join(self, f: Frame) -> None:
        """A ``phx_join`` of a ``realtime:`` topic (the session checked the topic's form)."""
        if not self.within(self.join_rate, f, JOINS):
            return
        limit = self.config.max_channels_per_connection
        if limit and f.topic not in self.channels and len(self.channels) >= limit:
            self.refuse(f, CHANNELS)  # a rejoin replaces its channel: it never counts twice
            return
        old = self.channels.get(f.topic)
        if old is not None:  # a second join replaces the first (Phoenix semantics)
            self.close_channel(old)
        req = session.read_join(f)
        verifier = self.verifier
        try:
            # The channel's effective token is checked before anything is sent or accepted:
            # the connect token may have expired since the socket opened.
            # realtime-js sends the apikey again as the join's access_token: a token this socket
            # already verified is not verified again (its claims are re-checked for expiry); a
            # hash match can only ever yield this socket's own claims.
            # Such a channel shares the socket's claims dict (never mutated, only replaced by an
            # access_token push): one copy per socket, not one per channel.
            same = isinstance(req.token, str) and hash(req.token) == self.token_hash
            if req.token and not same:
                claims = verifier.verify(req.token)
            else:
                verifier.check_claims(self.claims)
                claims = self.claims
        except TokenError as exc:
            self.reply_error(f, exc.reason, exc.code)
            return
        if req.resume_error is not None:
            self.reply_error(f, req.resume_error.reason, req.resume_error.code)
            return
        stream, after, resume_from = req.resume if req.resume is not None else ("", None, None)
        private = req.private
        try:
            grants = await self.topics.admit(f.topic.removeprefix("realtime:"), private, claims)
        except JoinRefused as exc:
            self.reply_error(f, exc.reason, exc.code)
            return
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            self._reply_unreachable(f, exc)
            return
        if req.replay_error is not None:
            self.reply_error(f, req.replay_error.reason, req.replay_error.code)
            return
        replay = req.replay
        if req.bindings_error is not None:
            self.reply_error(f, req.bindings_error.reason, req.bindings_error.code)
            return
        specs = req.specs
        try:
            bound = [await self._bind(s) for s in specs]
        except (BindingError, FilterError) as exc:  # TableUnavailable too: table_not_enabled
            self.reply_error(f, exc.reason, exc.code)
            return
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            self._reply_unreachable(f, exc)
            return
        try:  # the token may have expired while the topic policies and the catalog answered
            verifier.check_claims(claims)
        except TokenError as exc:
            self.reply_error(f, exc.reason, exc.code)
            return
        if f.topic in self.channels:  # a concurrent rejoin won while we awaited the catalog
            self.close_channel(self.channels[f.topic])
        # Snapshot on join: the bindings' current rows first, then their live changes.  The
        # snapshot serves the channel's resume point too (the other bindings resume from it).
        snapshot = [(s, b) for s, b in zip(specs, bound, strict=True) if s.snapshot]
        snapshots = self.snapshots if snapshot and self.snapshots is not None else None
        hold = snapshots is not None and snapshots.available
        resume = req.resume if snapshot else None
        if snapshot:
            after = None
        chan = Channel(self, f.topic, f.join_ref, claims, specs)
        chan.tx_end = req.tx_end
        chan.private, chan.grants = private, grants
        chan.bcast_self, chan.bcast_ack = req.bcast_self, req.bcast_ack
        chan.presence_key, chan.presence_enabled = req.presence_key, req.presence_enabled
        if after is not None:
            chan.cursor, chan.replaying = after, True  # live skips it until the replay catches up
        else:
            chan.cursor = self.feed.fresh_cursor()
            chan.replaying = hold  # a snapshot holds live changes until its rows are out
        # Register before replying: anything the fan-out sees from now on reaches this
        # channel (or its replay), and the reply is queued before any such frame.  From here to
        # the flush below nothing awaits: the reply and the ``system`` message (and whatever
        # entering the room queues) leave in one transport write, not one each.
        self.channels[f.topic] = chan
        self.feed.attach(chan, list(zip(specs, bound, strict=True)))
        self._arm_expiry(chan)
        response = {"postgres_changes": [dict(s.raw, id=s.id) for s in specs]}
        self.queue_frame(reply(f.topic, f.ref, f.join_ref, "ok", response))
        self.topics.enter(chan)
        if replay is not None:
            self.topics.replay(chan, *replay)
        if specs:
            if after is not None:  # echoed as sent: it may not be of this stream (see replay)
                start = {"position": str(resume_from)}
            else:
                known = self.feed.floors_ready.is_set()
                start = {"position": self.feed.position(chan.cursor)} if known else {}
            self.queue_frame(chan.system("ok", "Subscribed to PostgreSQL", **start))
        if req.replication_ready:
            self.feed.replication_ready(chan)
        if snapshot:
            if snapshots is not None and hold:
                chan.task = asyncio.get_running_loop().create_task(
                    snapshots.run(SnapshotRequest(chan, snapshot, resume=resume)), name=f"snapshot {f.topic}"
                )
            else:
                why = "snapshot failed: snapshots need the resume window (RELAY_RESUME_WINDOW > 0)"
                for s, _ in snapshot:
                    self.queue_frame(chan.system("error", why, code=Code.SNAPSHOT_FAILED, id=s.id))
        if self.raw:
            self.flush()
        if after is not None:
            chan.task = asyncio.get_running_loop().create_task(
                self.feed.replay(chan, after, stream, str(resume_from)), name=f"replay {f.topic}"
            )

    def _reply_unreachable(self, f: Frame, exc: BaseException) -> None:
        """The join needs Postgres, which cannot be reached: a retryable error, not a refusal.

        The detail (host, port, driver message) goes to the log, not to the client.
        """
        log.warning(
            "join of %s from %s: Postgres unreachable (%s: %s)", f.topic, self.peer, type(exc).__name__, exc
        )
        self.reply_error(f, UNREACHABLE_REASON, Code.UNABLE_TO_CONNECT_TO_PROJECT)

    async def _bind(self, spec: BindingSpec) -> BoundFilter | None:
        """Check a binding against the relay's publication and cast its filter.

        Only tables in the publication can be subscribed, and every other case (a catalog, a
        view, a missing table, a table not enabled, a schema without enabled tables) raises
        the same :class:`TableUnavailable`: what exists outside the publication is nobody's
        business.  Column names and types are only revealed for published tables.
        """
        publication = self.config.publication
        catalog = self.catalog
        if spec.table is None:
            if not await catalog.schema_published(publication, spec.schema):
                raise TableUnavailable()
            return None
        shape = await catalog.published_table(publication, spec.schema, spec.table)
        if shape is None:
            raise TableUnavailable()
        if shape.row_filter is not None:
            # not streamed (relay.core.publication): refused with the reason rather than joined
            # to a stream that stays silent; the table is published, so naming it reveals nothing
            raise BindingError(
                f"{spec.schema}.{spec.table} is not streamed: its publication has a row filter, which the "
                "relay cannot apply (ask the operator to use a row policy instead)",
                Code.PUBLICATION_ROW_FILTER,
            )
        unknown = [c for c in spec.select or () if c not in shape.columns]
        if unknown:
            raise BindingError(f'select: column "{unknown[0]}" does not exist in {spec.schema}.{spec.table}')
        if spec.filter is None:
            return None
        types: dict[str, str] = {}
        for column in spec.filter.columns:
            ctype = shape.columns.get(column)
            if ctype is None:
                raise BindingError(
                    f'invalid filter "{spec.filter.text}": column "{column}" does not exist '
                    f"in {spec.schema}.{spec.table}"
                )
            types[column] = ctype
        casts = spec.filter.casts(types)
        try:  # Postgres itself casts the operands: it decides what they mean, or refuses them
            canonical = await self.catalog.cast_operands(casts) if casts else None
        except OperandCastError as exc:
            raise BindingError(f'invalid filter "{spec.filter.text}": {exc}') from None
        return spec.filter.bind(types, canonical)

    def close_channel(self, chan: Channel, send_close: bool = True) -> None:
        chan.closed = True
        try:
            self.topics.leave(chan)
        except Exception:  # telling the room failed: the channel must still be forgotten everywhere
            log.exception("error leaving the room of %s", chan.topic)
        if chan.task is not None and not chan.task.done():
            chan.task.cancel()
        self.feed.detach(chan)
        if chan.expiry is not None:
            chan.expiry.cancel()
        if self.channels.get(chan.topic) is chan:
            del self.channels[chan.topic]
        if send_close:
            self.send_frame(Frame(chan.topic, "phx_close", {}, chan.join_ref, chan.join_ref))

    async def refresh_token(self, chan: Channel, token: Any) -> None:
        try:
            chan.claims = self.verifier.verify(token)
        except TokenError as exc:
            self.revoke(chan, exc.message, exc.code)
            return
        self.feed.index_channel(chan)
        self._arm_expiry(chan)
        if chan.private:  # the new claims may read (or write) less: ask the topic policies again
            await self.topics.recheck([chan])

    def _arm_expiry(self, chan: Channel) -> None:
        """Schedule the channel's end at its token's ``exp``, and the ``token_expiring`` warning.

        The warning comes ``token_expiry_warning`` seconds before ``exp``, or at half the
        token's remaining life when that is shorter: a client whose provider hands out short
        tokens then refreshes every half-life, never in a loop of immediate warnings.

        One timer per channel at a time (``chan.expiry``): the warning's, whose callback then
        arms the end's.  Timers are a few hundred bytes each and every idle channel has them.
        """
        if chan.expiry is not None:
            chan.expiry.cancel()
            chan.expiry = None
        exp = chan.claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            loop = asyncio.get_running_loop()
            delay = max(0.0, float(exp) - time.time())
            ahead = self.config.token_expiry_warning
            if ahead > 0 and delay > 0:
                chan.expiry = loop.call_later(delay - min(ahead, delay / 2), self._expiring, chan)
            else:
                chan.expiry = loop.call_later(delay, self._expired, chan)

    def _expiring(self, chan: Channel) -> None:
        """Tell the channel its token is about to expire, so it sends ``access_token`` in time;
        then arm the channel's end at ``exp``."""
        chan.expiry = None
        exp = chan.claims.get("exp")
        if chan.closed or not isinstance(exp, int | float):
            return
        delay = max(0.0, float(exp) - time.time())
        chan.expiry = asyncio.get_running_loop().call_later(delay, self._expired, chan)
        left = max(0, round(float(exp) - time.time()))
        self.metrics.expiry_warnings += 1
        self.send_frame(
            chan.system(
                "ok",
                f"Token expires in {left} seconds: send a new access_token to keep this channel",
                extension="system",
                code=Code.TOKEN_EXPIRING,
                expires_at=int(exp),
            )
        )

    def _expired(self, chan: Channel) -> None:
        exp = chan.claims.get("exp", time.time())
        audit_event("token_expired", topic=chan.topic, remote=self.peer, role=chan.claims.get("role"))
        self.revoke(
            chan, f"Token has expired {int(time.time() - float(exp))} seconds ago", Code.INVALID_JWT_TOKEN
        )

    def revoke(self, chan: Channel, message: str, code: Code) -> None:
        """End a channel the relay may no longer serve (token expired or invalid, access lost)."""
        if chan.closed:
            return
        self.send_frame(chan.system("error", message, extension="system", code=code))
        self.close_channel(chan)

    def teardown(self) -> None:
        """Forget every channel (socket gone): no frame is sent.

        Never raises: an error tearing one channel down is logged and the others still go, so
        the server always forgets the socket (it used to stay counted when one channel failed).
        """
        try:
            for chan in list(self.channels.values()):
                try:
                    self.close_channel(chan, send_close=False)
                except Exception:
                    log.exception("error closing %s of %s", chan.topic, self.peer)
                    self.channels.pop(chan.topic, None)
                    self.feed.detach(chan)
        finally:
            self.closing = True
