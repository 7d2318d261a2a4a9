"""The relay's own WebSocket protocol: the socket is taken from aiohttp once the upgrade is answered.

Why (issue 16, idle sockets): an aiohttp WebSocket keeps, for the socket's whole life, the HTTP
request with its parsed headers and URL, the ``RequestHandler`` with its HTTP parser and two
tasks (its ``start`` loop and the handler), and the ``WebSocketResponse`` with its reader, writer
and data queue — ≈ 15 KiB per idle socket before the relay adds anything, and a task switch and
a queue hop per frame.  Here aiohttp still routes the request and the relay's handler still
checks it (vsn, token, quotas); then the handler writes the ``101`` itself, moves the transport
to a :class:`RelaySocket` (``transport.set_protocol``) and tells aiohttp's ``RequestHandler``
that its connection is gone, so the request, the handler, aiohttp's tasks and its parser are
freed when the handler returns.  What stays per socket: the transport, this small protocol
object and a frame parser.

The frame parser is aiohttp's own ``WebSocketReader`` (Cython-compiled in aiohttp 3.x, the same
code that parsed every client frame before): RFC 6455 masking, reserved bits, control frames
over 125 bytes, fragmentation, the message size limit and UTF-8 checks stay exactly as they
were.  It is not public API (hence the aiohttp pin in pyproject.toml); it emits messages into a
``WebSocketDataQueue``, and here one queue (:class:`_Messages`) serves every socket: the parser
runs synchronously inside :meth:`RelaySocket.data_received`, which points the queue at itself
first.  The queue's own buffer (a deque, ≈ 0.6 KiB) is never used.

No task per socket: frames are parsed in ``data_received``; a text or binary frame (which may
await the catalog, a token check, the topic policies) is handled by a task that exists only
while the socket has frames to handle, in order, in the socket's log context.  Control frames
are answered at once (ping → pong; close → close handshake), unless data frames before them
are still being handled (then in order, as aiohttp's receive loop did).

Compression (``RELAY_WS_COMPRESSION``): permessage-deflate is not implemented here; a relay
configured for it keeps aiohttp's ``WebSocketResponse`` for every socket (relay/server/app.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.models import WebSocketError
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from relay.config import Config

__all__ = [
    "CLOSE_TIMEOUT",
    "FrameHandler",
    "HandedOver",
    "RelaySocket",
    "SocketOwner",
    "close_waiting",
    "handshake",
]

log = logging.getLogger("relay.socket")

WS_KEY = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
#: how long a close started by the relay waits for the client's close frame (aiohttp's default)
CLOSE_TIMEOUT = 10.0
#: frames parsed but not yet handled before the socket stops reading (a client flooding frames
#: faster than the relay handles them is held by TCP flow control, not by the relay's memory)
MAX_PENDING = 64

_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_TEXT, _BINARY, _CLOSE, _ERROR, _EOF = 1, 2, 8, 256, 257


def handshake(request: web.BaseRequest) -> bytes:
    """The ``101 Switching Protocols`` answering ``request``, or ``HTTPBadRequest`` raised.

    The checks and their texts are aiohttp's ``WebSocketResponse._handshake`` (3.14), without
    sub-protocols (the relay offers none, as before) and without extensions (compressed sockets
    stay on aiohttp's path).
    """
    headers = request.headers
    if "websocket" != headers.get("Upgrade", "").lower().strip():
        raise web.HTTPBadRequest(
            text=(f'No WebSocket UPGRADE hdr: {headers.get("Upgrade")}\n Can "Upgrade" only to "WebSocket".')
        )
    connection = headers.get("Connection", "")
    if "upgrade" not in (t.strip() for t in connection.lower().split(",")):
        raise web.HTTPBadRequest(text=f"No CONNECTION upgrade hdr: {headers.get('Connection')}")
    version = headers.get("Sec-WebSocket-Version", "")
    if version not in ("13", "8", "7"):
        raise web.HTTPBadRequest(text=f"Unsupported version: {version}")
    key = headers.get("Sec-WebSocket-Key")
    try:
        if not key or len(base64.b64decode(key)) != 16:
            raise web.HTTPBadRequest(text=f"Handshake error: {key!r}")
    except binascii.Error:
        raise web.HTTPBadRequest(text=f"Handshake error: {key!r}") from None
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_KEY).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class HandedOver(web.StreamResponse):
    """What the WebSocket handler returns to aiohttp once the socket is the relay's.

    aiohttp prepares and ends whatever its handler returns; this response writes nothing (the
    ``101`` is already out, written by the relay) and is not kept alive, so aiohttp's request
    loop ends without touching the transport (the ``RequestHandler`` no longer has one).
    """

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _control(opcode: int, payload: bytes) -> bytes:
    """An unmasked control frame (payload ≤ 125 bytes, RFC 6455 §5.5)."""
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A close frame with ``code`` and at most 123 bytes of ``reason``."""
    return _control(0x8, code.to_bytes(2, "big") + reason[:123])


class _Messages(WebSocketDataQueue):
    """The one destination of every socket's parser: hands each message to the socket parsing.

    ``WebSocketReader`` (Cython) needs a ``WebSocketDataQueue``; overriding ``feed_data`` and
    ``set_exception`` (cpdef/def: Python overrides are honoured) sends the parsed messages to
    :attr:`target` instead of the queue's deque, so the queue's size stays 0 and the parser never
    stalls itself.
    """

    target: RelaySocket | None = None

    def feed_data(self, data: Any, size: int) -> None:
        target = self.target
        if target is not None:
            target._message(data[0], data[1])

    def set_exception(self, exc: BaseException, exc_cause: Any = None) -> None:
        target = self.target
        if target is not None:
            target._message(_ERROR, exc)

    def feed_eof(self) -> None:
        return None


_SINK: _Messages | None = None


def _sink(loop: asyncio.AbstractEventLoop) -> _Messages:
    """The shared queue (its loop is only used by ``read()``, which nothing calls)."""
    global _SINK
    if _SINK is None:
        _SINK = _Messages(cast(Any, None), 1 << 30, loop=loop)
    return _SINK


class FrameHandler(Protocol):
    """What the socket hands its frames to (``Connection``: the Phoenix protocol of one socket)."""

    config: Config
    peer: str

    async def handle_text(self, data: str) -> None: ...

    async def handle_binary(self, data: bytes) -> None: ...


class SocketOwner(Protocol):
    """What a socket tells the server: it ends (the bookkeeping the aiohttp handler did in its
    ``finally``), and when it waits for a frame or is busy (the heartbeat timeout's sweep)."""

    def socket_ended(self, sock: RelaySocket, reason: str) -> None: ...

    def waits(self, sock: RelaySocket) -> None: ...

    def busy(self, sock: RelaySocket) -> None: ...


class RelaySocket(asyncio.Protocol):
    """One WebSocket after the upgrade: parses frames, runs the connection's handlers, closes."""

    __slots__ = (
        "_close_timer",
        "_ctx",
        "_drain_waiter",
        "_head",
        "_loop",
        "_owner",
        "_paused",
        "_pending",
        "_reader",
        "_sink",
        "_skip",
        "_state",
        "_tail",
        "_task",
        "close_message",
        "conn",
        "reason",
        "sub_key",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        owner: SocketOwner,
        max_msg_size: int,
        ctx: contextvars.Context,
    ) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = transport
        self._owner = owner
        self._sink = _sink(loop)
        self._reader = WebSocketReader(self._sink, max_msg_size, compress=False, decode_text=True)
        self._tail = b""  # bytes the client sent behind the upgrade request (see start)
        self._head = b""  # an incomplete frame header at the end of the last read (mask check)
        self._skip = 0  # payload bytes of the current frame still to come (-1: input over)
        self._ctx = ctx  # the handler's log context (remote address, socket id)
        self._pending: list[tuple[int, Any]] | None = None  # frames waiting for the task
        self._task: asyncio.Task[None] | None = None  # handles frames; only while there are some
        self._paused = False  # flow control: the transport's buffer is over its high-water mark
        self._drain_waiter: asyncio.Future[None] | None = None
        self._state = _OPEN
        self._close_timer: asyncio.TimerHandle | None = None
        self.conn: FrameHandler | None = None  # None until the connection is admitted
        self.sub_key: str | None = None  # the owner's quota key (ConnectionCounts)
        self.reason = ""  # why it ended (relay_connections_closed_total), once it has
        self.close_message = b""  # the close frame's reason when the relay ends a silent socket

    # -- taking the socket from aiohttp ---------------------------------------------------------
    @classmethod
    def take(
        cls,
        request: web.BaseRequest,
        upgrade: bytes,
        owner: SocketOwner,
        max_msg_size: int,
    ) -> RelaySocket:
        """Answer the upgrade on ``request``'s transport and make the socket this protocol's.

        aiohttp's ``RequestHandler`` is told the connection is lost *after* its transport is
        taken (so it closes nothing): that drops it from aiohttp's connection set and cancels
        its keep-alive timer; when the handler returns, aiohttp's request loop ends by itself.
        Bytes the client sent right behind the upgrade request (aiohttp keeps them as the
        "message tail" until a WebSocket parser is set) are parsed by :meth:`start`.
        """
        aio = request.protocol
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        sock = cls(asyncio.get_running_loop(), transport, owner, max_msg_size, contextvars.copy_context())
        transport.write(upgrade)
        transport.set_protocol(sock)
        sock._tail = getattr(aio, "_message_tail", b"")
        aio.transport = None
        aio.connection_lost(None)
        if not transport.is_reading():  # aiohttp may have paused it for a buffered tail
            transport.resume_reading()
        return sock

    def start(self) -> None:
        """Parse whatever arrived behind the upgrade request (once the owner set ``conn``)."""
        tail, self._tail = self._tail, b""
        if tail:
            self.data_received(tail)
        if self._state == _OPEN and self._task is None:  # else the task's end starts the wait
            self._owner_waits()

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSED or self._skip < 0:
            return
        bad = self._unmasked_at(data)
        sink = self._sink
        sink.target = self
        try:
            self._reader.feed_data(data if bad < 0 else data[:bad])
        finally:
            sink.target = None
        if bad >= 0:
            self._skip = -1  # nothing after it is read
            self._message(_ERROR, WebSocketError(WSCloseCode.PROTOCOL_ERROR, "Received an unmasked frame"))

    def _unmasked_at(self, data: bytes) -> int:
        """Where the first unmasked frame starts in ``data`` (-1: none), walking frame headers.

        RFC 6455 §5.1: a server MUST close the connection on a frame that is not masked.
        aiohttp's reader accepts them, so the frame boundaries are followed here (the header
        only: two to fourteen bytes per frame; payloads are skipped, not read).
        """
        head = self._head
        if head:
            data = head + data
            self._head = b""
        pos, n, skip = 0, len(data), self._skip
        while True:
            if skip:
                step = min(skip, n - pos)
                pos += step
                skip -= step
                if skip:
                    break
            if pos >= n:
                break
            if n - pos < 2:
                self._head = data[pos:]
                break
            second = data[pos + 1]
            if not second & 0x80:
                self._skip = 0
                return max(0, pos - len(head))
            length = second & 0x7F
            size = 6 if length < 126 else 8 if length == 126 else 14
            if n - pos < size:
                self._head = data[pos:]
                break
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            pos += size
            skip = length
        self._skip = skip
        return -1

    def eof_received(self) -> bool | None:
        """The client half-closed: nothing more will come, so the socket ends (transport closes)."""
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the sender's next write finds the transport gone
        if self._state == _CLOSING:  # the relay's close handshake is over either way
            self._state = _CLOSED
            _closing_sockets.discard(self)
            return
        self._state = _CLOSED
        if self._task is not None:  # frames are still being handled: the socket ends after them
            self._queue(_EOF, None)
            return
        self._in_ctx(self._end, "client")

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- flow control, as the outbox asks it of aiohttp's protocol ----------------------------------
    @property
    def writing_paused(self) -> bool:
        return self._paused

    async def _drain_helper(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await asyncio.shield(self._drain_waiter)

    # -- frames in ----------------------------------------------------------------------------------
    def _message(self, kind: int, data: Any) -> None:
        """One message from the parser (or the parser's error): handle it, in order."""
        if self._state != _OPEN:
            if kind == _CLOSE or kind == _ERROR:  # the client's answer to our close (or garbage)
                self._close_transport()
            return
        if kind == WSMsgType.PING:
            self._write(_control(0xA, bytes(data)))  # autoping, as aiohttp answered it
            return
        if kind == WSMsgType.PONG:
            return
        if self._task is not None or kind == _TEXT or kind == _BINARY:
            self._queue(kind, data)
            return
        self._in_ctx(self._control_message, kind, data)

    def _queue(self, kind: int, data: Any) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = []
        pending.append((kind, data))
        if self._task is None:
            self._owner.busy(self)
            self._task = self._loop.create_task(self._handle_frames(), context=self._ctx)
        if len(pending) > MAX_PENDING and self.transport is not None:
            self.transport.pause_reading()

    async def _handle_frames(self) -> None:
        """Handle queued frames in order; end when none are left (no task per idle socket)."""
        try:
            while self._pending:
                kind, data = self._pending.pop(0)
                if len(self._pending) == MAX_PENDING // 2 and self.transport is not None:
                    self.transport.resume_reading()
                conn = self.conn
                if kind == _TEXT and conn is not None and self._state == _OPEN:
                    await conn.handle_text(data)
                elif kind == _BINARY and conn is not None and self._state == _OPEN:
                    await conn.handle_binary(data)
                elif kind == _EOF:
                    self._end("client")
                elif self._state == _OPEN:
                    self._control_message(kind, data)
                elif kind in (_CLOSE, _ERROR):
                    self._close_transport()
        except Exception:  # a handler bug ends this socket, as it ended aiohttp's handler
            log.exception("error handling a frame from %s", self.conn.peer if self.conn else "?")
            self._task = None
            self._end("error")
        finally:
            self._task = None
            self._pending = None
            if self._state == _OPEN:
                self._owner_waits()
            elif self.conn is not None:  # closed while frames were handled: end after them
                self._end("client")

    def _owner_waits(self) -> None:
        self._owner.waits(self)

    def _control_message(self, kind: int, data: Any) -> None:
        """A close frame or a parse error while the socket is open: the handshake, then the end."""
        if kind == _CLOSE:  # answered with 1000 and no reason, as aiohttp's autoclose did
            self._write(close_frame(WSCloseCode.OK))
        elif kind == _ERROR:
            code = data.code if isinstance(data, WebSocketError) else WSCloseCode.INTERNAL_ERROR
            if not isinstance(data, WebSocketError):
                log.warning("websocket read failed: %r", data)
            self._write(close_frame(code))
        else:
            return
        self._state = _CLOSED
        self._close_transport()
        self._end("client")

    # -- frames out, closing --------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close_transport(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.transport is not None:
            self.transport.close()

    def close(self, code: int, message: bytes, wait: bool) -> None:
        """Send a close frame and end the socket from the relay's side.

        ``wait``: keep the transport until the client answers with its close frame (at most
        :data:`CLOSE_TIMEOUT`), as aiohttp's ``ws.close()`` did for a socket whose handler was
        not reading (a refused connect, a silent socket).  Otherwise (slow consumer, shutdown)
        the transport is closed behind the frame at once, as aiohttp did when ``close()`` came
        from another task while the handler was reading.  The connection's own bookkeeping
        (:meth:`_end`) runs on the next loop iteration: a close can come from inside a fan-out.
        """
        if self._state != _OPEN:
            return
        self._write(close_frame(code, message))
        if wait and self.transport is not None:
            self._state = _CLOSING
            _closing_sockets.add(self)
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._close_transport)
        else:
            self._state = _CLOSED
            self._close_transport()
        if self.conn is not None and self._task is None:  # else the task ends it, after its frame
            self._loop.call_soon(self._end, "client", context=self._ctx)

    def silent(self) -> None:
        """The heartbeat timeout passed with no frame (called by the silence sweep)."""
        if self._state != _OPEN:
            return
        conn = self.conn
        timeout = conn.config.heartbeat_timeout if conn is not None else 0.0
        self._in_ctx(log.info, "closing silent socket %s after %.0fs", conn.peer if conn else "?", timeout)
        self.close_message = b"heartbeat timeout"
        # its channels (and presence) go first; the close handshake may wait on a dead peer
        self._in_ctx(self._end, "heartbeat_timeout")

    def _end(self, reason: str) -> None:
        """The socket is over for the relay: its owner forgets it (once), then it is closed."""
        if self.reason:
            return
        self.reason = reason
        if self.conn is not None:
            self._owner.socket_ended(self, reason)
        if self._state == _OPEN:
            self.close(WSCloseCode.OK, self.close_message, wait=True)

    def _in_ctx(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in the socket's log context (asyncio callbacks run in the loop's own)."""
        try:
            self._ctx.run(fn, *args)
        except RuntimeError as exc:  # the context is entered already (we are inside its task)
            if "cannot enter context" not in str(exc):
                raise
            fn(*args)

    @property
    def closed(self) -> bool:
        return self._state != _OPEN


#: sockets waiting for the client's close frame (closed at once on shutdown)
_closing_sockets: set[RelaySocket] = set()


def close_waiting() -> None:
    """Close the transports of sockets still waiting for a client's close frame (shutdown)."""
    for sock in list(_closing_sockets):
        sock._close_transport()
    _closing_sockets.clear()
