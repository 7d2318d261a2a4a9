"""The aiohttp application: WebSocket endpoints, health, and the fan-out entry point.

Why the fan-out lives here: :meth:`RelayServer.dispatch` is called by the pipeline for every
change, synchronously, so by the time it returns every frame is queued on its socket.  That is
what "handed to the fan-out" means when the pipeline confirms an LSN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from relay.config import Config
from relay.core.changes import RowChange
from relay.core.protocol import SUPPORTED_VSN
from relay.core.subscriptions import FrameCache, SubscriptionIndex
from relay.core.tokens import TokenError, Verifier
from relay.postgres.catalog import Catalog
from relay.server.connection import Channel, Connection

__all__ = ["RelayServer"]

log = logging.getLogger("relay.server")

WS_PATHS = ("/realtime/v1/websocket", "/socket/websocket")


class RelayServer:
    """Owns the sockets and the subscription index; knows nothing of replication."""

    def __init__(self, config: Config, verifier: Verifier, catalog: Catalog) -> None:
        self.config = config
        self.verifier = verifier
        self.catalog = catalog
        self.index: SubscriptionIndex[Channel] = SubscriptionIndex()
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self.changes_seen = 0
        self.frames_queued = 0
        self.status: dict[str, Any] = {}  # filled by the pipeline (slot, lsn, lag)

    # -- fan-out --------------------------------------------------------------------------
    def dispatch(self, change: RowChange) -> int:
        """Queue ``change`` for every channel that matches and may see it; returns frames queued."""
        self.changes_seen += 1
        plan = self.index.plan(change)
        if not plan:
            return 0
        cache = FrameCache(change)
        for chan, ids in plan:
            chan.conn.deliver(cache, chan.topic, ids)
        self.frames_queued += len(plan)
        return len(plan)

    # -- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        for path in WS_PATHS:
            app.router.add_get(path, self.websocket)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.status.get("streaming") else "starting",
            "connections": len(self.connections),
            "channels": sum(len(c.channels) for c in self.connections),
            "bindings": len(self.index),
            "changes_seen": self.changes_seen,
            "frames_queued": self.frames_queued,
            "uptime_s": round(time.time() - self.started_at, 1),
            **self.status,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        vsn = request.query.get("vsn", "1.0.0")
        if vsn not in SUPPORTED_VSN:
            return _http_error(400, f"unsupported protocol vsn {vsn!r}; use 1.0.0 or 2.0.0")
        token = request.query.get("apikey") or request.headers.get("x-api-key")
        if not token:
            return _http_error(403, "MissingJWT: connect with ?apikey=<jwt> or an x-api-key header")
        try:
            claims = self.verifier.verify(token)
        except TokenError as exc:
            return _http_error(403, exc.reason)
        ws = web.WebSocketResponse(
            # aiohttp's own limit closes the socket; ours (checked per frame) answers with an
            # error frame, so it is the smaller one.
            max_msg_size=self.config.max_frame_bytes * 4,
            compress=self.config.compression,
            autoping=True,
            heartbeat=None,
        )
        await ws.prepare(request)
        peer = str(request.remote)
        conn = Connection(self, ws, vsn, claims, peer, request)
        self.connections.add(conn)
        sender = asyncio.create_task(conn.sender())
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=self.config.heartbeat_timeout)
                except TimeoutError:
                    log.info("closing silent socket %s after %.0fs", peer, self.config.heartbeat_timeout)
                    await ws.close(code=1000, message=b"heartbeat timeout")
                    break
                if msg.type == WSMsgType.TEXT:
                    await conn.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    conn.send_frame_error(
                        "binary frames are only used for broadcast, which is not supported yet"
                    )
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
        finally:
            conn.teardown()
            self.connections.discard(conn)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    async def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort(1001, "server shutting down")


def _http_error(status: int, text: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": text}), content_type="application/json")
