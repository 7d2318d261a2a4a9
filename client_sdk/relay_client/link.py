"""One WebSocket to the relay: open it, send and read frames, and prove it is alive.

Why heartbeats with a reply deadline: a half-open TCP connection (a NAT that forgot us, a
blackholed route, a suspended laptop) reads as "no frames" forever; the OS gives up only after
many minutes.  The link sends a Phoenix heartbeat every ``hb_interval`` and declares itself dead
when nothing at all arrives within ``hb_timeout`` of it, so a dead network is noticed within
``hb_interval + hb_timeout`` (two intervals by default) no matter what TCP thinks.

Two things extend the deadline, because they are not a dead network: frames still arriving
(the reply is queued behind them) and the application holding the reader (``delivering``: a
slow callback or a full ``changes()`` buffer — the reply sits unread in the socket).

Proof of life comes first: the first heartbeat goes out as soon as the socket opens, and
``answered`` is set by the first frame the relay sends.  An accepted handshake alone proves
little — a relay that is shutting down may still complete one — so the client reports online
only once ``answered`` is set.

Closing never waits on a dead peer: a reader idle in ``receive()`` is cancelled, which makes
aiohttp abort the transport instead of waiting for the peer's close frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import aiohttp

from relay_client.protocol import PHOENIX, VSN, Frame, ProtocolError, decode, encode, heartbeat_frame

__all__ = ["GOING_AWAY", "AuthRejected", "Link", "LinkClosed", "describe_error"]

GOING_AWAY = 1001  # RFC 6455: the endpoint is going away (the relay is shutting down)

log = logging.getLogger("relay_client")


class LinkClosed(Exception):
    """The socket cannot be written any more (closed, or a send did not finish in time)."""


class AuthRejected(Exception):
    """The relay refused the handshake's token (HTTP 401/403)."""


def describe_error(exc: BaseException) -> str:
    """A short reason for ``status.reason``."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused: HTTP {exc.status}"
    if isinstance(exc, AuthRejected):
        return f"token refused: {exc}"
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Link:
    """An open WebSocket plus its heartbeat bookkeeping; the client owns the tasks around it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, hb_interval: float, hb_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.hb_interval = hb_interval
        self.hb_timeout = hb_timeout
        self.opened_at = loop.time()
        self.last_recv = loop.time()
        self.delivering = False  # the application holds the reader (callback or full buffer)
        self.in_receive = False  # the reader is parked in ws.receive(): safe to cancel
        self.stopping = False
        self.stop_reason: str | None = None
        self.stop_requested = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._hb_ref: str | None = None
        self._hb_answered = asyncio.Event()
        self.answered = asyncio.Event()  # the relay sent a frame on this socket: it is serving it
        self.close_code: int | None = None  # of the relay's close frame, if it sent one

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        token: str | None,
        params: Mapping[str, str],
        *,
        timeout: float,  # noqa: ASYNC109 (several awaits share it, not one block)
        hb_interval: float,
        hb_timeout: float,
        max_message_bytes: int,
    ) -> Link:
        query = {**params, "vsn": VSN}
        if token:
            query["apikey"] = token
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    url,
                    params=query,
                    autoping=True,
                    heartbeat=None,  # Phoenix heartbeats below, with the relay's reply
                    max_msg_size=max_message_bytes,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=min(timeout, hb_timeout)),
                ),
                timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise AuthRejected(f"HTTP {exc.status}") from exc
            raise
        return cls(ws, hb_interval, hb_timeout)

    @property
    def age(self) -> float:
        return asyncio.get_running_loop().time() - self.opened_at

    def request_stop(self, reason: str) -> None:
        """Ask the client to end this link (manual reconnect, close)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_requested.set()

    async def send(self, frame: Frame) -> None:
        if self.ws.closed:
            raise LinkClosed("socket closed")
        try:
            async with self._send_lock:
                await asyncio.wait_for(self.ws.send_str(encode(frame)), self.hb_timeout)
        except (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise LinkClosed(describe_error(exc)) from exc

    async def receive(self) -> Frame | None:
        """The next frame for a channel; None when the socket ended (see ``stop_reason``)."""
        loop = asyncio.get_running_loop()
        while True:
            self.in_receive = True
            try:
                msg = await self.ws.receive()
            finally:
                self.in_receive = False
            self.last_recv = loop.time()
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    frame = decode(msg.data)
                except ProtocolError as exc:
                    log.warning("ignoring an unreadable frame: %s", exc)
                    continue
                self.answered.set()
                if frame.topic == PHOENIX and frame.event == "phx_reply":
                    if frame.ref is not None and frame.ref == self._hb_ref:
                        self._hb_answered.set()
                    continue
                return frame
            if msg.type is aiohttp.WSMsgType.BINARY:
                continue
            # The relay's close frame says why (1013 slow consumer, 1001 shutting down); read it
            # from the frame: aiohttp's close_code turns 1006 if the relay hangs up before our reply.
            code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
            extra = msg.extra if isinstance(msg.extra, str) and msg.extra else ""
            if isinstance(code, int) and code != 1006:
                self.close_code = code
            if msg.type is aiohttp.WSMsgType.ERROR:
                reason = f"socket error: {msg.data}"
            elif code in (None, 1006):  # no close frame: the TCP connection just ended
                reason = "connection lost (no close frame)"
            elif code == GOING_AWAY:
                reason = f"going away: relay shutting down (code 1001{': ' + extra if extra else ''})"
            else:
                reason = f"closed by relay (code {code}{': ' + extra if extra else ''})"
            if self.stop_reason is None:
                self.stop_reason = reason
            return None

    async def heartbeat(self, next_ref: Callable[[], str]) -> str:
        """Send heartbeats until the link is found dead; returns why.

        The first one goes out at once: its reply (or any other frame) is what makes the client
        report online, and an accepted socket that never answers is given up after
        ``hb_timeout`` instead of ``hb_interval + hb_timeout``.
        """
        loop = asyncio.get_running_loop()
        first = True
        while True:
            if not first:
                await asyncio.sleep(self.hb_interval)
            first = False
            ref = next_ref()
            self._hb_ref = ref
            self._hb_answered.clear()
            sent_at = loop.time()
            try:
                await self.send(heartbeat_frame(ref))
            except LinkClosed as exc:
                return f"heartbeat not sent: {exc}"
            deadline = sent_at + self.hb_timeout
            while not self._hb_answered.is_set():
                now = loop.time()
                if now >= deadline:
                    if self.delivering:
                        deadline = now + self.hb_timeout
                    elif now - self.last_recv < self.hb_timeout:
                        deadline = self.last_recv + self.hb_timeout
                    else:
                        return f"no heartbeat reply within {self.hb_timeout:g}s (dead link)"
                    continue
                try:
                    await asyncio.wait_for(self._hb_answered.wait(), deadline - now)
                except TimeoutError:
                    pass

    async def close(self) -> None:
        """Close the socket (gracefully if the peer answers within the close timeout)."""
        try:
            await self.ws.close()
        except Exception as exc:  # already broken: nothing left to release
            log.debug("closing socket: %s", exc)
