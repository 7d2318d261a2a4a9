"""HTTP endpoints beside the WebSocket: REST broadcast and the statistics API.

Why here and not in the socket code: both are plain request/response handlers over the same
hub.  REST broadcast is what both official clients fall back to (``httpSend`` / ``http_send``,
and realtime-js's ``send()`` before a channel is joined), so its paths and status codes follow
the reference server: ``202`` on success, ``{"error": ...}`` otherwise.  The statistics API is
for operators and dashboards and requires a ``service_role`` token, because it lists who is
connected.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from relay.core.broadcast import Broadcast, BroadcastError, checked, event_name, from_push
from relay.core.errors import Code, RelayError
from relay.core.payload_limits import PayloadLimits, PayloadRejected
from relay.core.protocol import BINARY_ENCODING
from relay.core.quotas import REST_MESSAGES, KeyedBuckets
from relay.core.tokens import Claims, TokenError
from relay.logs import audit_event
from relay.server.topics import JoinRefused, write_denied

if TYPE_CHECKING:
    from relay.server.app import RelayServer

__all__ = ["PREFIXES", "HttpApi"]

PREFIXES = ("", "/realtime/v1")  # served at the root and under the path the clients use
MAX_MESSAGES = 100


class HttpError(RelayError):
    """An error answer: ``{"error": message, "code": code}`` plus ``index`` when it is known."""

    def __init__(self, status: int, message: str, code: Code, index: int | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.index = index


class HttpApi:
    """Route handlers; ``add_routes`` registers them under every prefix."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        # REST broadcasts per caller (token ``sub``, else the remote address), at the same rate
        # as a socket's broadcasts: any holder of the public anon key can call this endpoint, so
        # without a limit one caller could flood every member of every public room.  The burst
        # holds one full request (MAX_MESSAGES) even when the rate is lower.
        rate = server.config.max_events_per_second
        self.rest_rate = KeyedBuckets(rate, burst=max(rate, MAX_MESSAGES))

    def add_routes(self, app: web.Application) -> None:
        for p in PREFIXES:
            app.router.add_post(f"{p}/api/broadcast", self.broadcast)
            app.router.add_post(f"{p}/api/broadcast/{{topic}}/events/{{event}}", self.broadcast_one)
            app.router.add_get(f"{p}/api/stats", self.stats)
            app.router.add_get(f"{p}/api/channels/{{topic}}", self.channel)

    # -- auth -------------------------------------------------------------------------------
    def _claims(self, request: web.Request) -> Claims:
        """The caller's claims: ``Authorization: Bearer`` (a user's token) over ``apikey``."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        token = token or request.headers.get("apikey", "") or request.query.get("apikey", "")
        if not token:
            raise HttpError(
                401, "MissingJWT: send an apikey header or Authorization: Bearer <jwt>", Code.MISSING_JWT
            )
        try:
            claims = self.server.verifier.verify(token)
        except TokenError as exc:
            raise HttpError(401, exc.reason, exc.code) from None
        if claims.get("role") == "service_role":
            audit_event("service_role_http", method=request.method, path=request.path)
        return claims

    def _service(self, request: web.Request) -> Claims:
        claims = self._claims(request)
        if claims.get("role") != "service_role":
            raise HttpError(
                403, "Unauthorized: the statistics API needs a service_role token", Code.UNAUTHORIZED
            )
        return claims

    # -- REST broadcast -------------------------------------------------------------------
    async def broadcast(self, request: web.Request) -> web.Response:
        """``POST /api/broadcast`` ``{"messages": [{topic, event, payload, private}]}``: all or none."""
        try:
            claims = self._claims(request)
            body = await _json_body(request)
            messages = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(messages, list) or not messages:
                raise HttpError(
                    400,
                    'the body is {"messages": [{"topic", "event", "payload", "private"}]}',
                    Code.INVALID_MESSAGE,
                )
            if len(messages) > MAX_MESSAGES:
                raise HttpError(400, f"at most {MAX_MESSAGES} messages per request", Code.INVALID_MESSAGE)
            # every message is checked (and encoded) before any is sent: all or none
            limits = self.server.config.payload_limits
            parsed = [_message(i, m, limits) for i, m in enumerate(messages)]
            self._check_rate(request, claims, len(parsed))  # before the policies' queries
            await self._check_write(claims, {(name, private) for name, private, _ in parsed})
            self._check_cluster(len(parsed))
        except HttpError as exc:
            return _error(exc.status, str(exc), exc.code, exc.index)
        for name, private, msg in parsed:
            self.server.topics.publish(name, private, msg, cluster=True)
        return web.Response(status=202)

    async def broadcast_one(self, request: web.Request) -> web.Response:
        """``POST /api/broadcast/{topic}/events/{event}``: the body is the payload (JSON or bytes)."""
        try:
            claims = self._claims(request)
            name = request.match_info["topic"].removeprefix("realtime:")
            private = request.query.get("private", "false").lower() == "true"
            if request.content_type == "application/octet-stream":
                data = await request.read()
                try:
                    msg = Broadcast(event_name(request.match_info["event"]), None, data, BINARY_ENCODING)
                except BroadcastError as exc:
                    raise HttpError(400, str(exc), exc.code) from None
            else:
                payload = await _json_body(request)
                msg = _broadcast({"event": request.match_info["event"], "payload": payload})
            if not name:
                raise HttpError(400, "the topic must not be empty", Code.INVALID_BROADCAST)
            msg = _checked(msg, self.server.config.payload_limits)
            self._check_rate(request, claims, 1)  # before the policies' queries
            await self._check_write(claims, {(name, private)})
            self._check_cluster()
        except HttpError as exc:
            return _error(exc.status, str(exc), exc.code)
        self.server.topics.publish(name, private, msg, cluster=True)
        return web.Response(status=202)

    def _check_rate(self, request: web.Request, claims: Claims, n: int) -> None:
        """``n`` messages within the caller's rate, or 429 (nothing of the request is sent).

        ``service_role`` is not limited: it is the operator's own key (it bypasses the policies
        too), and backends fanning out notifications use it."""
        if claims.get("role") == "service_role":
            return
        sub = claims.get("sub")
        key = ("sub", sub) if isinstance(sub, str) and sub else ("address", str(request.remote))
        if not self.rest_rate.take(key, time.monotonic(), n):
            self.server.metrics.rate_limited(
                REST_MESSAGES.kind, code=str(REST_MESSAGES.code), remote=str(request.remote), messages=n
            )
            raise HttpError(429, REST_MESSAGES.reason, REST_MESSAGES.code)

    def _check_cluster(self, n: int = 1) -> None:
        """Cluster mode without Redis: refuse (503, retryable) rather than reach one node silently."""
        why = self.server.topics.cluster_unavailable(n)
        if why is not None:
            raise HttpError(
                503,
                f"cluster unavailable: {why}; the broadcast would reach this relay node's members only",
                Code.CLUSTER_UNAVAILABLE,
            )

    async def _check_write(self, claims: Claims, topics: set[tuple[str, bool]]) -> None:
        for name, private in sorted(topics):
            try:
                grants = await self.server.topics.grants(name, private, claims)
            except JoinRefused as exc:
                raise HttpError(503, str(exc), exc.code) from None
            if not grants.broadcast_write:
                self.server.topics.denied += 1
                raise HttpError(403, write_denied(name), Code.UNAUTHORIZED)

    # -- statistics -----------------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        """Sockets, channels and rooms right now (service_role)."""
        try:
            self._service(request)
        except HttpError as exc:
            return _error(exc.status, str(exc), exc.code)
        server = self.server
        topics = server.topics
        now = time.time()
        sockets = [
            {
                "peer": c.peer,
                "vsn": c.vsn,
                "role": c.claims.get("role"),
                "sub": c.claims.get("sub"),
                "connected_s": round(now - c.connected_at, 1),
                "channels": sorted(c.channels),
                "queued_frames": len(c.queue),
                "sent_frames": c.sent,
            }
            for c in sorted(server.connections, key=lambda c: c.connected_at)
        ]
        cluster = topics.cluster
        body = {
            # sockets, channels, rooms' members and the counters are this node's; in cluster
            # mode "cluster" says which node answered and what it knows of the others
            "scope": "node",
            "cluster": cluster.stats() if cluster is not None else None,
            "connections": len(server.connections),
            "channels": sum(len(c.channels) for c in server.connections),
            "rooms": topics.room_stats(),
            "broadcasts": {
                "sent": topics.broadcasts,
                "from_database": topics.db_broadcasts,
                "denied": topics.denied,
            },
            # payloads and presences refused by the limits; stored metas repaired (should stay 0)
            "limits": {"refused": topics.refused, "presence_errors": topics.presence_errors},
            "sockets": sockets,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def channel(self, request: web.Request) -> web.Response:
        """Who is in one room: its members (claims) and its presence state (service_role)."""
        try:
            self._service(request)
        except HttpError as exc:
            return _error(exc.status, str(exc), exc.code)
        name = request.match_info["topic"].removeprefix("realtime:")
        private = request.query.get("private", "false").lower() == "true"
        topics = self.server.topics
        body = topics.room_users(name, private) or {
            "topic": name,
            "private": private,
            "members": [],
            "presence": topics.remote_state(name, private),
        }
        # members are this node's sockets; presence is the cluster's in cluster mode
        body["scope"] = "node"
        body["presence_scope"] = "node" if topics.cluster is None else "cluster"
        return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, "request body too large", Code.PAYLOAD_TOO_LARGE) from None
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}", Code.INVALID_MESSAGE) from None


def _broadcast(obj: dict[str, Any]) -> Broadcast:
    try:
        return from_push(obj)
    except BroadcastError as exc:
        raise HttpError(400, str(exc), exc.code) from None


def _checked(msg: Broadcast, limits: PayloadLimits, index: int | None = None) -> Broadcast:
    """Within the payload limits, or 422 (the reference server's status for an oversized payload)."""
    try:
        return checked(msg, limits)
    except PayloadRejected as exc:
        where = "" if index is None else f"messages[{index}]: "
        raise HttpError(422, f"{where}{exc}", exc.code, index) from None


def _message(i: int, m: Any, limits: PayloadLimits) -> tuple[str, bool, Broadcast]:
    if not isinstance(m, dict):
        raise HttpError(400, f"messages[{i}] must be an object", Code.INVALID_BROADCAST, i)
    topic = m.get("topic")
    if not isinstance(topic, str) or not topic.removeprefix("realtime:"):
        raise HttpError(400, f"messages[{i}]: topic must be a non-empty string", Code.INVALID_BROADCAST, i)
    private = m.get("private", False)
    if not isinstance(private, bool):
        raise HttpError(400, f"messages[{i}]: private must be true or false", Code.INVALID_BROADCAST, i)
    try:
        msg = from_push({"event": m.get("event"), "payload": m.get("payload", {})})
    except BroadcastError as exc:
        raise HttpError(400, f"messages[{i}]: {exc}", exc.code, i) from None
    return topic.removeprefix("realtime:"), private, _checked(msg, limits, i)


def _error(status: int, text: str, code: Code, index: int | None = None) -> web.Response:
    body: dict[str, Any] = {"error": text, "code": str(code)}
    if index is not None:
        body["index"] = index
    # 429: the bucket refills within a second at any rate the quota allows (rate >= 1/s)
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
