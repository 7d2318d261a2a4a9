"""The aiohttp application: WebSocket endpoints, health, and the parts of the serving side.

Why this module is thin: the fan-out, the authorization index, transactions and resume live in
the change feed (relay/server/feed.py), broadcast and presence in the topic hub (topics.py),
batched writes in the outbox (outbox.py) and each socket in connection.py.  The server builds
them, accepts sockets and answers HTTP; nothing it owns holds a reference back to it except the
read-only HTTP handlers (health, metrics, readiness, REST, inspector).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any, cast
from urllib.parse import parse_qsl

import aiohttp_cors
import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler

from relay.config import Config
from relay.core.authorize import Authorizer
from relay.core.errors import Code
from relay.core.protocol import SUPPORTED_VSN
from relay.core.quotas import ConnectionCounts
from relay.core.replay_log import ReplayLog
from relay.core.sqltypes import TypeRegistry
from relay.core.stream import StreamIdentity
from relay.core.subscriptions import SubscriptionIndex
from relay.core.tokens import Claims, TokenError, Verifier
from relay.logs import audit_event, bind, bind_context
from relay.postgres.catalog import Catalog
from relay.postgres.policy_eval import PolicyEvaluator
from relay.postgres.topic_policies import TopicAuthorizer
from relay.server.channel import Channel
from relay.server.connection import Connection, SocketServices
from relay.server.feed import ChangeFeed
from relay.server.http_api import HttpApi
from relay.server.inspector import Inspector
from relay.server.metrics import (
    RelayCollector,
    RelayMetrics,
    metrics_handler,
    token_refusal_reason,
)
from relay.server.outbox import Outbox
from relay.server.probes import SlotWatchdog, ready_handler
from relay.server.silence import SilenceWatch
from relay.server.snapshot import Snapshots
from relay.server.topics import TopicHub
from relay.server.websocket import HandedOver, RelaySocket, close_waiting, handshake

__all__ = ["RelayServer"]

log = logging.getLogger("relay.server")
# Security events (quota hits here); the ops branch gives this logger its own handler.

WS_PATHS = ("/realtime/v1/websocket", "/socket/websocket")
_SOCKET_IDS = itertools.count(1)  # the ``socket`` field of a socket's log lines


class RelayServer:
    """Owns the parts of the serving side and the sockets; knows nothing of replication.

    The parts (see docs/architecture.md): the :class:`ChangeFeed` (subscriptions, fan-out,
    ``tx_end``, resume), the :class:`TopicHub` (broadcast, presence), the :class:`Outbox` they
    both write through, and the metrics.  Each socket gets :class:`SocketServices` — the parts
    it may use — never the server itself.  The attributes below the constructor keep the
    server's long-standing read API (``/health``, the metrics collector, tests) pointing at the
    part that now owns each value.
    """

    def __init__(
        self,
        config: Config,
        verifier: Verifier,
        catalog: Catalog,
        authorizer: Authorizer | None = None,
        evaluator: PolicyEvaluator | None = None,
    ) -> None:
        self.config = config
        self.metrics = RelayMetrics()
        self.metrics.registry.register(RelayCollector(self))
        self.slot_health: dict[str, Any] = {}  # the slot watchdog's last reading (metrics)
        self.watchdog: SlotWatchdog | None = None  # set by the service
        # every refused token is counted and audited, wherever it was presented
        self.verifier = cast(Verifier, _AuditedVerifier(verifier, self.metrics))
        self.catalog = catalog
        self.authorizer = authorizer or Authorizer()
        self.evaluator = evaluator or PolicyEvaluator(catalog, self.authorizer)
        self.outbox = Outbox()
        self.feed = ChangeFeed(config, self.authorizer, self.evaluator, self.metrics, self.outbox)
        # Broadcast and presence rooms (private ones admitted by the topic policies).
        self.topics = TopicHub(config, self.metrics, self.outbox, self.feed, TopicAuthorizer(catalog))
        self.snapshots = Snapshots(config, catalog, self.feed)
        self.services = SocketServices(
            config, self.verifier, catalog, self.feed, self.topics, self.outbox, self.metrics, self.snapshots
        )
        self.connections: set[Connection] = set()
        self.silence = SilenceWatch(config.heartbeat_timeout)  # every socket's heartbeat timeout
        self.started_at = time.time()
        self.status: dict[str, Any] = {}  # filled by the pipeline (slot, lsn, lag)
        self.conn_counts = ConnectionCounts(
            config.max_connections, config.max_connections_per_sub, config.max_connections_per_address
        )
        # the feed's entry points, for the pipeline's sink and the tests
        self.dispatch = self.feed.dispatch
        self.on_commit = self.feed.on_commit
        self.on_slot = self.feed.on_slot
        self.hold = self.feed.hold
        self.position = self.feed.position
        self.flush = self.outbox.flush
        self.quota_hit = self.metrics.quota_hit

    # -- read API over the parts (health, metrics, tests) --------------------------------------
    @property
    def log(self) -> ReplayLog:
        return self.feed.log

    @property
    def index(self) -> SubscriptionIndex[Channel]:
        return self.feed.index

    @property
    def floors_ready(self) -> asyncio.Event:
        return self.feed.floors_ready

    @property
    def stream(self) -> StreamIdentity | None:
        return self.feed.stream

    @property
    def stream_id(self) -> str:
        return self.feed.stream_id

    @property
    def live_floor(self) -> int:
        return self.feed.live_floor

    @property
    def types(self) -> TypeRegistry:
        return self.feed.types

    @types.setter
    def types(self, value: TypeRegistry) -> None:
        self.feed.types = value

    @property
    def changes_seen(self) -> int:
        return self.feed.changes_seen

    @property
    def frames_queued(self) -> int:
        return self.feed.frames_queued

    @property
    def policy_errors(self) -> int:
        return self.feed.policy_errors

    @property
    def value_errors(self) -> int:
        return self.feed.value_errors

    @property
    def resumes(self) -> int:
        return self.feed.resumes

    @property
    def resyncs(self) -> int:
        return self.feed.resyncs

    @property
    def quota_hits(self) -> Counter[str]:
        """Quota hits by kind (relay/core/quotas.py), for /health and the metrics."""
        return self.metrics.rate_limit_hits

    @property
    def expiry_warnings(self) -> int:
        return self.metrics.expiry_warnings

    @property
    def handler_errors(self) -> int:
        return self.metrics.handler_errors

    # -- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_frame_bytes, middlewares=[_bind_remote])
        for path in WS_PATHS:
            app.router.add_get(path, self.websocket)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.health)
        app.router.add_get("/ready", ready_handler(self, lambda: self.watchdog))
        app.router.add_get("/metrics", metrics_handler(self, self.config.metrics_token))
        before = set(app.router.routes())
        HttpApi(self).add_routes(app)
        Inspector(self).add_routes(app)
        self._cors(app, [r for r in app.router.routes() if r not in before])
        return app

    def _cors(self, app: web.Application, routes: list[web.AbstractRoute]) -> None:
        """CORS for the HTTP API, so a browser dashboard can call it (``RELAY_CORS_ORIGINS``).

        Credentials (cookies) are never allowed: the API authenticates with a bearer token or
        an ``apikey`` header, which the preflight lets through.
        """
        origins = self.config.cors_origin_list
        if not origins:
            return
        options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
            allow_credentials=False,
            allow_headers=("authorization", "apikey", "content-type", "x-client-info", "prefer"),
            allow_methods=["GET", "POST"],
            max_age=3600,
        )
        cors = aiohttp_cors.setup(app, defaults={o: options for o in origins})
        for route in routes:
            cors.add(route)

    async def health(self, request: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.status.get("streaming") else "starting",
            "connections": len(self.connections),
            "channels": sum(len(c.channels) for c in self.connections),
            "bindings": len(self.index),
            "changes_seen": self.changes_seen,
            "frames_queued": self.frames_queued,
            "policies": len(self.authorizer),
            "policy_errors": self.policy_errors,
            "value_errors": self.value_errors,
            "quota_hits": dict(self.quota_hits),
            "token_expiry_warnings": self.expiry_warnings,
            "handler_errors": self.handler_errors,
            "rooms": len(self.topics.rooms),
            "broadcasts": self.topics.broadcasts,
            "resume": {
                **self.log.stats(),
                "replaying": sum(ch.replaying for c in self.connections for ch in c.channels.values()),
                "resumes": self.resumes,
                "resyncs": self.resyncs,
            },
            "snapshots": self.snapshots.stats(),
            "stream": self.stream.as_dict() if self.stream is not None else None,
            "uptime_s": round(time.time() - self.started_at, 1),
            **self.status,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        peer = str(request.remote)
        bind_context(remote=peer, socket=f"{next(_SOCKET_IDS):x}")
        query = _socket_query(request)
        vsn = query.get("vsn", "1.0.0")
        if vsn not in SUPPORTED_VSN:
            return _http_error(
                400, f"unsupported protocol vsn {vsn!r}; use 1.0.0 or 2.0.0", Code.UNSUPPORTED_VSN
            )
        token = query.get("apikey") or request.headers.get("x-api-key")
        if not token:
            self.metrics.token_refusals["missing"] += 1
            audit_event("token_refused", reason="missing", code="MissingJWT")
            return _http_error(
                403, "MissingJWT: connect with ?apikey=<jwt> or an x-api-key header", Code.MISSING_JWT
            )
        try:
            claims = self.verifier.verify(token)
        except TokenError as exc:
            return _http_error(403, exc.reason, exc.code)
        # This frame lives as long as the socket: keep nothing in it the socket does not need
        # (the token and the query are ≈ 0.5 KiB; see also ``del msg`` below).
        token_hash = hash(token)
        del token, query
        if self.config.compression:  # permessage-deflate: aiohttp keeps the socket
            return await self._aiohttp_socket(request, vsn, claims, peer, token_hash)
        sock = RelaySocket.take(request, handshake(request), self, self.config.max_frame_bytes * 4)
        sub = claims.get("sub")
        sub_key = sub if isinstance(sub, str) and sub else None
        refused = self.conn_counts.admit(sub_key, peer)
        if refused is not None:
            # Accepted then closed, not an HTTP 429: a browser's WebSocket sees the close code
            # and reason, never a handshake status.  1013: try again later.
            self.quota_hit(refused, peer)
            sock.close(WSCloseCode.TRY_AGAIN_LATER, f"{refused.code}: {refused.reason}".encode(), wait=True)
            return HandedOver()
        self.conn_counts.add(sub_key, peer)
        sock.sub_key = sub_key
        conn = sock.conn = Connection(self.services, sock, vsn, claims, peer, token_hash=token_hash)
        self.connections.add(conn)
        self.metrics.connections_opened += 1
        sock.start()
        return HandedOver()

    # -- the relay's own sockets (relay/server/websocket.py) -------------------------------------
    def socket_ended(self, sock: RelaySocket, reason: str) -> None:
        """A socket of the relay's own ended: what the handler's ``finally`` does on aiohttp's."""
        conn = sock.conn
        assert isinstance(conn, Connection)
        self.silence.forget(sock)
        self._closed(conn, reason)
        conn.teardown()
        self.connections.discard(conn)
        self.conn_counts.remove(sock.sub_key, conn.peer)
        conn.cancel_sender()

    def waits(self, sock: RelaySocket) -> None:
        """``sock`` waits for a frame: its heartbeat timeout runs."""
        self.silence.waits(sock)

    def busy(self, sock: RelaySocket) -> None:
        """``sock`` handles a frame: no timeout while it does (as on aiohttp's path)."""
        self.silence.forget(sock)

    async def _aiohttp_socket(
        self, request: web.Request, vsn: str, claims: Claims, peer: str, token_hash: int
    ) -> web.StreamResponse:
        """A socket served by aiohttp's ``WebSocketResponse`` (compression negotiated by aiohttp)."""
        ws = web.WebSocketResponse(
            # aiohttp's own limit closes the socket; ours (checked per frame) answers with an
            # error frame, so it is the smaller one.
            max_msg_size=self.config.max_frame_bytes * 4,
            compress=self.config.compression,
            autoping=True,
            heartbeat=None,
        )
        await ws.prepare(request)
        sub = claims.get("sub")
        sub_key = sub if isinstance(sub, str) and sub else None
        refused = self.conn_counts.admit(sub_key, peer)
        if refused is not None:
            # Accepted then closed, not an HTTP 429: a browser's WebSocket sees the close code
            # and reason, never a handshake status.  1013: try again later.
            self.quota_hit(refused, peer)
            why = f"{refused.code}: {refused.reason}".encode()
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=why)
            return ws
        self.conn_counts.add(sub_key, peer)
        conn = Connection(self.services, ws, vsn, claims, peer, request, token_hash=token_hash)
        self.connections.add(conn)
        self.metrics.connections_opened += 1
        close_message = b""
        reason = "error"  # why it ended, for relay_connections_closed_total (CLOSE_REASONS)
        try:
            while True:
                try:
                    msg = await self.silence.receive(ws)
                except TimeoutError:
                    # its channels (and presence) go first; the close handshake may wait on a dead peer
                    log.info("closing silent socket %s after %.0fs", peer, self.config.heartbeat_timeout)
                    close_message = b"heartbeat timeout"
                    reason = "heartbeat_timeout"
                    break
                if msg.type == WSMsgType.TEXT:
                    await conn.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await conn.handle_binary(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    reason = "client"
                    break
                del msg  # an idle socket would keep its last frame (the join's text) alive
        finally:
            self._closed(conn, reason)
            conn.teardown()
            self.connections.discard(conn)
            self.conn_counts.remove(sub_key, peer)
            await conn.stop_sender()
            if not ws.closed:
                await ws.close(code=1000, message=close_message)
        return ws

    def _closed(self, conn: Connection, reason: str) -> None:
        """Count a socket that ended, and keep its frame/byte totals for the metrics."""
        if conn.closing and conn.close_reason:
            if conn.close_reason.startswith("slow consumer"):
                reason = "slow_consumer"
            elif conn.close_reason == SHUTDOWN_REASON:
                reason = "shutdown"
        self.metrics.connections_closed[reason] += 1
        self.metrics.closed_frames += conn.sent
        self.metrics.closed_bytes += conn.bytes_sent

    async def close_all(self) -> None:
        self.silence.stop()
        close_waiting()
        for conn in list(self.connections):
            conn.abort(1001, SHUTDOWN_REASON)


SHUTDOWN_REASON = "server shutting down"


@web.middleware
async def _bind_remote(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every line logged while serving a request (or a socket) names the remote address.

    A socket binds its own context (remote and socket id in one dict, see
    :meth:`RelayServer.websocket`): a second dict would live as long as the socket.
    """
    if request.raw_path.partition("?")[0] in WS_PATHS:  # raw_path: nothing cached on the request
        return await handler(request)
    with bind(remote=str(request.remote)):
        return await handler(request)


class _AuditedVerifier:
    """The server's :class:`Verifier`, counting and auditing every refused token.

    Wrapping the verifier catches refusals at connect, join, ``access_token`` and on the HTTP
    API alike.  The audit line has the reason and the remote address (bound by the
    middleware), never the token.
    """

    def __init__(self, inner: Verifier, metrics: RelayMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def verify(self, token: object, now: float | None = None) -> Claims:
        try:
            return self._inner.verify(token, now)
        except TokenError as exc:
            label = token_refusal_reason(exc.code, exc.message)
            self._metrics.token_refusals[label] += 1
            audit_event("token_refused", reason=label, code=exc.code, detail=exc.message[:200])
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _socket_query(request: web.Request) -> dict[str, str]:
    """The connect URL's query (first value of each name), decoded as ``request.query`` would.

    Why not ``request.query``: yarl caches the parsed query (and any part of the URL asked for)
    on the request's URL, which lives as long as the socket — ≈ 1 KiB per idle socket (issue
    16) for two values read once.  ``raw_path`` is the request target as received.
    """
    out: dict[str, str] = {}
    query = request.raw_path.partition("?")[2].partition("#")[0]
    for name, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(name, value)
    return out


def _http_error(status: int, text: str, code: Code) -> web.Response:
    body = {"error": text, "code": str(code)}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
