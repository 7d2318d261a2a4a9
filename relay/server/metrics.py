"""Prometheus metrics: plain counters bumped where things happen, exported at scrape time.

Why a custom collector instead of ``prometheus_client.Counter`` objects everywhere: the
fan-out runs per change and per delivery, and a labelled ``Counter.inc()`` takes a lock and a
label lookup.  The hot paths bump plain ints (many of which the relay already kept for
``/health`` and ``/api/stats``); :class:`RelayCollector` reads them only when Prometheus
scrapes; the commit-to-hand-off latency histogram is bucket counts too, observed once per
transaction.

Label values are always from small fixed sets (reasons, kinds, error codes the relay itself
defines): never a user, a topic or a token, so a hostile client cannot grow the series count.
Each relay has its own :class:`~prometheus_client.CollectorRegistry`, so several relays in one
process (tests, the demo) never mix their numbers.

To add a counter (e.g. a quota): bump ``metrics.rate_limit_hits[kind]`` via
:meth:`RelayMetrics.rate_limited`; it is exported as ``relay_rate_limit_hits_total{kind}``.
"""

from __future__ import annotations

import hmac
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.core.changes import Commit, commit_epoch
from relay.core.protocol import Frame
from relay.core.quotas import Quota
from relay.logs import audit_event

if TYPE_CHECKING:
    from relay.server.app import RelayServer

__all__ = ["CLOSE_REASONS", "RelayCollector", "RelayMetrics", "join_refusal_code", "token_refusal_reason"]

audit = logging.getLogger("relay.audit")

# Why a socket ended.  "client": the peer closed it; the others are the relay's decisions.
CLOSE_REASONS = ("client", "heartbeat_timeout", "slow_consumer", "shutdown", "error")
# Stable codes a refused join can carry; anything else is counted as "other".
JOIN_CODES = frozenset(
    {
        "UnknownTopic",
        "MalformedJWT",
        "JwtSignatureError",
        "InvalidJWTToken",
        "InvalidResume",
        "InvalidReplay",
        "InvalidBinding",
        "Unauthorized",
        "TopicPolicyError",
        "payload_too_large",
        "payload_too_deep",
        "publication_row_filter",
    }
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_REASONS = ("malformed", "signature", "expired", "not_yet_valid", "missing_claims", "invalid", "missing")


def join_refusal_code(reason: str, code: str | None) -> str:
    """The bounded label for a refused join: its explicit code, else the ``Code:`` prefix."""
    if code is None:
        code = reason.partition(":")[0].strip()
    return code if code in JOIN_CODES else "other"


def token_refusal_reason(code: str, message: str) -> str:
    """A :class:`~relay.core.tokens.TokenError` as one of :data:`TOKEN_REASONS`."""
    if code == "MalformedJWT":
        return "malformed"
    if code == "JwtSignatureError":
        return "signature"
    if code == "MissingJWT":
        return "missing"
    low = message.lower()
    if "expired" in low:
        return "expired"
    if "nbf" in low or "not yet valid" in low:
        return "not_yet_valid"
    if "required" in low:
        return "missing_claims"
    return "invalid"


class RelayMetrics:
    """Counters the server bumps; each is one int (or a Counter keyed by a bounded label)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections_opened = 0
        self.connections_closed: Counter[str] = Counter()
        # frames/bytes of sockets that are gone (live sockets are added at scrape time)
        self.closed_frames = 0
        self.closed_bytes = 0
        self.joins: Counter[tuple[str, str]] = Counter()  # (extension, "private"|"public")
        self.join_refusals: Counter[str] = Counter()
        self.token_refusals: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()  # insert/update/delete/moved_in/moved_out/error
        self.presence_events: Counter[str] = Counter()  # track/untrack
        self.rate_limit_hits: Counter[str] = Counter()  # quota hits by kind (also on /health)
        self.expiry_warnings = 0  # token_expiring system messages sent
        # Client messages whose handler raised: the relay's own bugs (logged with a traceback and
        # answered UnknownErrorOnChannel), never a client's mistake.
        self.handler_errors = 0
        self.transactions = 0  # transactions handed off (observe_commit)
        self.last_lag: float | None = None  # commit -> hand-off of the last transaction
        # commit -> hand-off latency histogram: bucket counts kept here (bisect, no lock), exported
        # as a HistogramMetricFamily; prometheus_client's Histogram.observe cost ~5 us per
        # transaction, a measurable share of a small transaction's ~60 us.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def quota_hit(self, quota: Quota, peer: str, topic: str | None = None, audited: bool = True) -> None:
        """Count a quota hit and write it to the audit log (never a token: kind, code, peer, topic).

        ``audited=False`` counts without a log line: a client hammering a rate limit is logged
        once a second, not once per refused message (see Connection.refuse).
        """
        self.rate_limit_hits[quota.kind] += 1  # relay_rate_limit_hits_total{kind}
        if audited:
            audit_event("quota_hit", kind=quota.kind, code=quota.code, remote=peer, topic=topic)

    def join_refused(self, f: Frame, reason: str, code: str) -> None:
        """A join was answered with an error: count it by code and write an audit line."""
        label = join_refusal_code(reason, code)
        self.join_refusals[label] += 1
        payload = f.payload if isinstance(f.payload, dict) else {}
        config = payload.get("config")
        private = isinstance(config, dict) and str(config.get("private", False)).lower() == "true"
        denied = private and label in ("Unauthorized", "TopicPolicyError")
        event = "private_channel_refused" if denied else "join_refused"
        audit_event(event, code=label, topic=f.topic[:200], reason=reason[:300])

    def joined(self, private: bool, postgres_changes: bool, presence: bool) -> None:
        """A channel joined: once per extension it uses (every channel is a broadcast room)."""
        vis = "private" if private else "public"
        self.joins[("broadcast", vis)] += 1
        if postgres_changes:
            self.joins[("postgres_changes", vis)] += 1
        if presence:
            self.joins[("presence", vis)] += 1

    def observe_commit(self, commit: Commit) -> None:
        """Once per transaction: how long after its commit it was handed to the fan-out."""
        self.transactions += 1
        committed = commit_epoch(commit.commit_timestamp)  # parsed once per transaction
        if committed is None:
            return
        lag = self.last_lag = max(0.0, time.time() - committed)
        self.latency_counts[bisect_left(LATENCY_BUCKETS, lag)] += 1
        self.latency_sum += lag

    def rate_limited(self, kind: str, **context: object) -> None:
        """A quota or rate limit refused something: count it and write an audit line."""
        self.rate_limit_hits[kind] += 1
        from relay.logs import audit_event

        audit_event("quota_hit", kind=kind, **context)


class RelayCollector(Collector):
    """Reads the server's counters at scrape time (see the module docstring for why)."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server
        m = s.metrics
        conns = list(s.connections)

        g = GaugeMetricFamily("relay_connections", "WebSocket connections open now")
        g.add_metric([], len(conns))
        yield g
        c = CounterMetricFamily("relay_connections_opened", "WebSocket connections accepted")
        c.add_metric([], m.connections_opened)
        yield c
        c = CounterMetricFamily(
            "relay_connections_closed", "WebSocket connections ended, by reason", labels=["reason"]
        )
        for reason in CLOSE_REASONS:
            c.add_metric([reason], m.connections_closed[reason])
        yield c

        chans = [ch for conn in conns for ch in conn.channels.values()]
        g = GaugeMetricFamily("relay_channels", "Channels joined now", labels=["visibility"])
        private = sum(ch.private for ch in chans)
        g.add_metric(["private"], private)
        g.add_metric(["public"], len(chans) - private)
        yield g
        c = CounterMetricFamily(
            "relay_channel_joins",
            "Channels joined, by extension used (a channel counts once per extension)",
            labels=["extension", "visibility"],
        )
        for ext in ("postgres_changes", "broadcast", "presence"):
            for vis in ("private", "public"):
                c.add_metric([ext, vis], m.joins[(ext, vis)])
        yield c
        c = CounterMetricFamily("relay_join_refusals", "Joins refused, by error code", labels=["code"])
        for code in sorted(JOIN_CODES | {"other"}):
            c.add_metric([code], m.join_refusals[code])
        yield c
        c = CounterMetricFamily(
            "relay_token_refusals",
            "Tokens refused (connect, join, access_token, HTTP), by reason",
            labels=["reason"],
        )
        for reason in TOKEN_REASONS:
            c.add_metric([reason], m.token_refusals[reason])
        yield c

        c = CounterMetricFamily("relay_changes_decoded", "Row changes decoded from the replication stream")
        c.add_metric([], s.changes_seen)
        yield c
        c = CounterMetricFamily(
            "relay_deliveries", "Change frames queued to channels, by kind", labels=["kind"]
        )
        for kind in ("insert", "update", "delete", "moved_in", "moved_out", "error"):
            c.add_metric([kind], m.deliveries[kind])
        yield c
        frames = m.closed_frames + sum(conn.sent for conn in conns)
        sent_bytes = m.closed_bytes + sum(conn.bytes_sent for conn in conns)
        c = CounterMetricFamily("relay_frames_sent", "WebSocket frames written to clients")
        c.add_metric([], frames)
        yield c
        c = CounterMetricFamily("relay_sent_bytes", "Bytes of WebSocket frames written to clients")
        c.add_metric([], sent_bytes)
        yield c
        c = CounterMetricFamily(
            "relay_slow_consumer_disconnects", "Sockets closed because their queue overflowed"
        )
        c.add_metric([], m.connections_closed["slow_consumer"])
        yield c

        c = CounterMetricFamily(
            "relay_policy_evaluations",
            "Row policy evaluations: in the relay (per claims and row) and in Postgres (per query)",
            labels=["where"],
        )
        c.add_metric(["relay"], s.authorizer.evaluations)
        c.add_metric(["postgres"], s.evaluator.queries)
        yield c
        c = CounterMetricFamily(
            "relay_policy_errors",
            "Policy failures: error deliveries to subscribers, and Postgres evaluations that failed",
            labels=["where"],
        )
        c.add_metric(["delivery"], s.policy_errors)
        c.add_metric(["postgres"], s.evaluator.failures)
        yield c

        c = CounterMetricFamily("relay_resume_replays", "Resumes served from the replay log")
        c.add_metric([], s.resumes)
        yield c
        c = CounterMetricFamily(
            "relay_resync_needed", "Channels told resync_needed (changes could not be replayed)"
        )
        c.add_metric([], s.resyncs)
        yield c

        t = s.topics
        c = CounterMetricFamily(
            "relay_broadcasts", "Broadcast messages accepted, by source", labels=["source"]
        )
        c.add_metric(["client"], t.broadcasts - t.db_broadcasts)
        c.add_metric(["database"], t.db_broadcasts)
        yield c
        c = CounterMetricFamily(
            "relay_broadcast_denied", "Broadcast or presence writes denied by topic policies"
        )
        c.add_metric([], t.denied)
        yield c
        c = CounterMetricFamily(
            "relay_payload_refusals", "Payloads or presences refused by the size/depth/count limits"
        )
        c.add_metric([], t.refused)
        yield c
        c = CounterMetricFamily(
            "relay_presence_events", "Presence pushes from clients, by event", labels=["event"]
        )
        for event in ("track", "untrack"):
            c.add_metric([event], m.presence_events[event])
        yield c
        c = CounterMetricFamily(
            "relay_rate_limit_hits", "Requests refused by a quota or rate limit, by kind", labels=["kind"]
        )
        for kind, n in sorted(m.rate_limit_hits.items()):
            c.add_metric([kind], n)
        yield c

        health = dict(s.slot_health)
        if m.last_lag is not None:
            health["lag_seconds"] = m.last_lag
        h = HistogramMetricFamily(
            "relay_commit_to_handoff_seconds",
            "Seconds from a transaction's commit in Postgres to the relay handing its changes to the "
            "sockets' queues",
        )
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), m.latency_counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        h.add_metric([], buckets, m.latency_sum)
        yield h
        c = CounterMetricFamily("relay_transactions", "Transactions handed off to the fan-out")
        c.add_metric([], m.transactions)
        yield c
        yield from _replication(s.status, health)
        rooms = s.topics.cluster
        yield from _cluster(s.status.get("cluster"), rooms.stats() if rooms is not None else None)


def _cluster(node: object, rooms: dict[str, object] | None) -> Iterator[Metric]:
    """Cluster mode only (``RELAY_REDIS_URL``): who leads, and whether this node's two Redis links
    work.

    Why as metrics and not only on /health: a failover or a Redis outage is an event operators
    alert on and graph over time (how often leadership moved, how long a node served its members
    only), which a scrape of counters shows and a probe's current state does not.
    """
    if isinstance(node, dict):
        gauges = (
            (
                "relay_cluster_leader",
                "1 while this node holds the capture lease (it streams from Postgres)",
                1.0 if node.get("role") == "leader" else 0.0,
            ),
            (
                "relay_cluster_epoch",
                "Fencing epoch of this node's latest capture term (0: it never led); "
                "the highest over the nodes is the current term",
                node.get("epoch"),
            ),
            (
                "relay_cluster_log_up",
                "1 while this node reads the shared change log from Redis",
                1.0 if node.get("redis") == "ok" else 0.0,
            ),
            (
                "relay_cluster_log_length",
                "Entries in the shared change log (Redis stream) at the last read",
                node.get("log_length"),
            ),
        )
        for name, doc, value in gauges:
            if isinstance(value, int | float):
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(value))
                yield g
        counters = (
            ("relay_cluster_leader_terms", "Times this node became the capture leader", node.get("terms")),
            (
                "relay_cluster_log_entries_read",
                "Change-log entries this node read from Redis",
                node.get("log_entries_read"),
            ),
            (
                "relay_cluster_log_gaps",
                "Times the change log had lost entries this node had not read "
                "(its channels were told resync_needed)",
                node.get("log_gaps"),
            ),
            (
                "relay_cluster_log_appended",
                "Change-log entries this node appended while it led",
                node.get("appended"),
            ),
        )
        for name, doc, value in counters:
            if isinstance(value, int):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], value)
                yield c
    if rooms is not None:
        g = GaugeMetricFamily(
            "relay_cluster_rooms_up", "1 while broadcast and presence reach the other nodes through Redis"
        )
        g.add_metric([], 1.0 if rooms.get("redis") == "up" else 0.0)
        yield g
        others = rooms.get("other_nodes")
        g = GaugeMetricFamily("relay_cluster_nodes", "Relay nodes this node sees, itself included")
        g.add_metric([], float(1 + (len(others) if isinstance(others, list) else 0)))
        yield g
        for key, name, doc in (
            (
                "published",
                "relay_cluster_room_messages_published",
                "Broadcast and presence messages sent to the other nodes",
            ),
            (
                "received",
                "relay_cluster_broadcasts_received",
                "Broadcasts from other nodes delivered to this node's members",
            ),
            (
                "local_only",
                "relay_cluster_broadcasts_local_only",
                "Client broadcasts that reached this node's members only (Redis was unreachable)",
            ),
            (
                "outages",
                "relay_cluster_rooms_outages",
                "Times this node lost its broadcast/presence link to Redis",
            ),
        ):
            v = rooms.get(key)
            if isinstance(v, int):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], v)
                yield c


def _replication(status: dict[str, object], health: dict[str, object]) -> Iterator[Metric]:
    g = GaugeMetricFamily("relay_replication_streaming", "1 while the replication stream runs")
    g.add_metric([], 1.0 if status.get("streaming") else 0.0)
    yield g
    for key, name, doc in (
        (
            "lag_bytes",
            "relay_replication_lag_bytes",
            "Bytes of WAL the server wrote and has not yet streamed to the relay",
        ),
        (
            "lag_seconds",
            "relay_replication_lag_seconds",
            "Seconds from commit to hand-off of the last transaction handed off",
        ),
        ("retained_bytes", "relay_slot_retained_wal_bytes", "WAL bytes the slot keeps on the server's disk"),
        (
            "retained_share",
            "relay_slot_retained_wal_share",
            "Retained WAL as a share of max_slot_wal_keep_size (absent when unlimited)",
        ),
        ("over", "relay_slot_wal_over_threshold", "1 while the slot watchdog's threshold is exceeded"),
    ):
        v = health.get(key)
        if isinstance(v, int | float):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(v))
            yield g
    restarts = status.get("restarts")
    if isinstance(restarts, int):
        c = CounterMetricFamily("relay_replication_restarts", "Replication stream restarts")
        c.add_metric([], restarts)
        yield c


def metrics_handler(
    server: RelayServer, token: str | None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``GET /metrics``; with ``token`` set, only for ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode() if token else None

    async def handle(request: web.Request) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(
                    status=401,
                    text='{"error":"the metrics endpoint needs Authorization: Bearer <RELAY_METRICS_TOKEN>"}',
                    content_type="application/json",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        body = generate_latest(server.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle
