"""The aiohttp application: WebSocket endpoints, health, and the parts of the serving side.

Why this module is thin: the fan-out, the authorization index, transactions and resume live in
the change feed (relay/server/feed.py), broadcast and presence in the topic hub (topics.py),
batched writes in the outbox (outbox.py) and each socket in connection.py.  The server builds
them, accepts sockets and answers HTTP; nothing it owns holds a reference back to it except the
read-only HTTP handlers (health, metrics, readiness, REST, inspector).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, cast

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
from relay.server.snapshot import Snapshots
from relay.server.topics import TopicHub

__all__ = ["RelayServer"]

log = logging.getLogger("relay.server")
# Security events (quota hits here); the ops branch gives this logger its own handler.

WS_PATHS = ("/realtime/v1/websocket", "/socket/websocket")


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
        vsn = request.query.get("vsn", "1.0.0")
        if vsn not in SUPPORTED_VSN:
            return _http_error(
                400, f"unsupported protocol vsn {vsn!r}; use 1.0.0 or 2.0.0", Code.UNSUPPORTED_VSN
            )
        token = request.query.get("apikey") or request.headers.get("x-api-key")
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
        conn = Connection(self.services, ws, vsn, claims, peer, request, token_hash=hash(token))
        self.connections.add(conn)
        self.metrics.connections_opened += 1
        sender = asyncio.create_task(conn.sender())
        close_message = b""
        reason = "error"  # why it ended, for relay_connections_closed_total (CLOSE_REASONS)
        bind_context(socket=f"{id(conn):x}")
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=self.config.heartbeat_timeout)
                except TimeoutError:
                    # its channels (and presence) go first; the close handshake may wait on a dead peer
                    log.info("closing silent socket %s after %.0fs", peer, self.config.heartbeat_timeout)
                    close_message = b"heartbeat timeout"
                    reason = "heartbeat_timeout"
                    break
                if msg.type == WSMsgType.TEXT:
                    await conn.handle_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    try:
                        await conn.handle_binary(msg.data)
                    except Exception:  # a handler bug must not take the socket or the server down
                        log.exception("error handling a binary frame from %s", peer)
                        self.metrics.handler_errors += 1
                        conn.send_frame_error(
                            "internal error handling the binary frame", Code.UNKNOWN_ERROR_ON_CHANNEL
                        )
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    reason = "client"
                    break
        finally:
            self._closed(conn, reason)
            conn.teardown()
            self.connections.discard(conn)
            self.conn_counts.remove(sub_key, peer)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
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
        for conn in list(self.connections):
            conn.abort(1001, SHUTDOWN_REASON)


SHUTDOWN_REASON = "server shutting down"


@web.middleware
async def _bind_remote(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every line logged while serving a request (or a socket) names the remote address."""
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


def _http_error(status: int, text: str, code: Code) -> web.Response:
    body = {"error": text, "code": str(code)}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
