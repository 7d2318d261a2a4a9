"""The aiohttp application: WebSocket endpoints, health, and the fan-out entry point.

Why the fan-out lives here: :meth:`RelayServer.dispatch` is called by the pipeline for every
change, synchronously, so by the time it returns every frame is queued on its socket.  That is
what "handed to the fan-out" means when the pipeline confirms an LSN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from relay.config import Config
from relay.core.authorize import Authorizer, TableIndex, Verdict, VerdictMemo
from relay.core.changes import RowChange
from relay.core.protocol import SUPPORTED_VSN
from relay.core.subscriptions import ERROR, Decide, Delivery, FrameCache, SubscriptionIndex
from relay.core.tokens import TokenError, Verifier
from relay.postgres.catalog import Catalog
from relay.postgres.policy_eval import PolicyEvaluator
from relay.server.connection import Channel, Connection

__all__ = ["RelayServer"]

log = logging.getLogger("relay.server")

WS_PATHS = ("/realtime/v1/websocket", "/socket/websocket")


class RelayServer:
    """Owns the sockets and the subscription index; knows nothing of replication."""

    def __init__(
        self,
        config: Config,
        verifier: Verifier,
        catalog: Catalog,
        authorizer: Authorizer | None = None,
        evaluator: PolicyEvaluator | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.catalog = catalog
        self.authorizer = authorizer or Authorizer()
        self.evaluator = evaluator or PolicyEvaluator(catalog, self.authorizer)
        self.policy_errors = 0
        self.table_index: dict[tuple[str, str], TableIndex[Channel]] = {}
        self.dirty: set[Connection] = set()
        self.authorizer.listeners.append(self._reindex_all)
        self.index: SubscriptionIndex[Channel] = SubscriptionIndex()
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self.changes_seen = 0
        self.frames_queued = 0
        self.status: dict[str, Any] = {}  # filled by the pipeline (slot, lsn, lag)

    # -- fan-out --------------------------------------------------------------------------
    def dispatch(self, change: RowChange) -> Awaitable[None] | None:
        """Queue ``change`` for every channel that matches and may see it.

        Returns None when everything was decided in-process (the common case: frames are
        queued when this returns).  When a policy must be evaluated in Postgres it returns an
        awaitable that the pipeline awaits before the next change, so commit order holds and
        the LSN is confirmed only after delivery.
        """
        self.changes_seen += 1
        memo = VerdictMemo(self.authorizer, change.schema, change.table)

        def decide(chan: Channel, which: int) -> Verdict:
            row = change.record if which == 0 else change.old_record
            if row is None:
                return False
            return memo.get(which, row, chan.claims, chan.claims_key)

        owners = self._owners(change)
        deliveries, pending = self.index.route(change, decide, owners)
        if pending:
            return self._dispatch_slow(change, memo, decide, pending)
        self._deliver(change, deliveries)
        return None

    async def _dispatch_slow(
        self,
        change: RowChange,
        memo: VerdictMemo,
        decide: Decide[Channel],
        pending: list[tuple[Channel, int]],
    ) -> None:
        self.flush()  # what earlier changes queued goes out while Postgres evaluates
        await self.evaluator.resolve(change, memo, [(c.claims, c.claims_key, w) for c, w in pending])
        deliveries, still = self.index.route(change, decide, self._owners(change))
        for chan, _ in still:  # joined while we awaited: decide them next time, never guess
            log.warning(
                "policy verdict for %s unresolved; change %s not delivered to it",
                chan.topic,
                change.commit_lsn,
            )
        self._deliver(change, deliveries)

    def flush(self) -> None:
        """Write the frames queued by a fan-out batch: one write per touched socket."""
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            conn.flush()

    # -- authorization index ----------------------------------------------------------------
    def _owners(self, change: RowChange) -> set[Channel]:
        """Channels of the change's table that may see its row(s), from the index."""
        out: set[Channel] = set()
        ti = self.table_index.get((change.schema, change.table))
        if ti is not None:
            if change.record is not None:
                ti.candidates(change.record, out)
            if change.old_record is not None:
                ti.candidates(change.old_record, out)
        return out

    def index_channel(self, chan: Channel) -> None:
        """(Re)register a channel's claims in the index of each table it binds (join, new token)."""
        self.unindex_channel(chan)
        for spec in chan.specs:
            if spec.table is None:
                continue
            key = (spec.schema, spec.table)
            ti = self.table_index.get(key)
            if ti is None:
                ti = self.table_index[key] = TableIndex()
            ti.add(chan, chan.claims, self.authorizer.policies(*key))

    def unindex_channel(self, chan: Channel) -> None:
        for spec in chan.specs:
            if spec.table is not None:
                ti = self.table_index.get((spec.schema, spec.table))
                if ti is not None:
                    ti.remove(chan)

    def _reindex_all(self) -> None:
        """Policies changed: every channel's candidacy may have changed."""
        self.table_index.clear()
        for conn in self.connections:
            for chan in conn.channels.values():
                self.index_channel(chan)

    def _deliver(self, change: RowChange, deliveries: list[Delivery[Channel]]) -> None:
        if not deliveries:
            return
        cache = FrameCache(change)
        for d in deliveries:
            chan = d.sub
            if d.kind == ERROR and d.error is not None:
                self.policy_errors += 1
                log.warning(
                    "%s: policy %s failed for a subscriber of %s on %s.%s: %s",
                    d.error.code,
                    d.error.policy,
                    chan.topic,
                    change.schema,
                    change.table,
                    d.error.message,
                )
            chan.conn.deliver(cache.variant(d.kind, d.error), chan.topic, d.ids)
        self.frames_queued += len(deliveries)

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
            "policies": len(self.authorizer),
            "policy_errors": self.policy_errors,
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
