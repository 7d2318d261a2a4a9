"""Readiness probe and slot watchdog: what a load balancer and Kubernetes need to know.

Why separate from ``/health``: ``/health`` is liveness (the process answers; restarting it would
not help while Postgres is down), ``/ready`` says whether this relay can serve changes right now:
the replication stream runs, the catalog pool answers, and the slot is neither lost nor
retaining more WAL than the watchdog allows.  A not-ready relay answers 503 with the reasons,
so an operator reading the probe output knows what to fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from relay.core.slot_health import SlotHealth, assess
from relay.logs import redact

if TYPE_CHECKING:
    from relay.server.app import RelayServer

__all__ = ["SlotWatchdog", "ready_handler"]

log = logging.getLogger("relay.watchdog")

CATALOG_TIMEOUT = 2.0
REPEAT_WARNING = 60.0  # seconds between repeated errors while the slot stays over the threshold

_SLOT_QUERY = """
select s.wal_status,
       (pg_current_wal_lsn() - s.restart_lsn)::int8 as retained,
       (pg_current_wal_lsn() - coalesce(r.sent_lsn, s.confirmed_flush_lsn))::int8 as lag,
       (select setting::int8 from pg_catalog.pg_settings where name = 'max_slot_wal_keep_size') as keep_mb
from (select 1) one
left join pg_catalog.pg_replication_slots s on s.slot_name = $1 and s.database = current_database()
left join pg_catalog.pg_stat_replication r on r.pid = s.active_pid
"""


class SlotWatchdog:
    """Reads the slot's retained WAL every ``interval`` seconds; see relay/core/slot_health.py.

    While the retained WAL is over ``threshold`` of ``max_slot_wal_keep_size`` it logs an error
    (again every minute), sets ``relay_slot_wal_over_threshold`` and ``/ready`` to 503, and
    :attr:`release_hold` is True: the service stops holding the slot back for the replay window,
    so the slot is confirmed up to what was handed off (resumes older than that get
    ``resync_needed``).  A relay must never be the reason a database fills its disk.
    """

    def __init__(self, server: RelayServer, slot: str, threshold: float, interval: float) -> None:
        self.server = server
        self.slot = slot
        self.threshold = threshold
        self.interval = interval
        self.health: SlotHealth | None = None
        self.error: str | None = None
        self._warned_unlimited = False
        self._last_warning = 0.0

    @property
    def release_hold(self) -> bool:
        return self.health is not None and self.health.over

    async def check(self) -> SlotHealth | None:
        """One reading; None (and ``error`` set) when Postgres could not be asked."""
        try:
            async with asyncio.timeout(10):
                row = await self.server.catalog.pool.fetchrow(_SLOT_QUERY, self.slot)
        except Exception as exc:  # the database is down: /ready already says so via replication
            self.error = redact(str(exc)) or type(exc).__name__
            return None
        self.error = None
        keep_mb = row["keep_mb"]
        max_keep = int(keep_mb) * 1024 * 1024 if keep_mb is not None and keep_mb >= 0 else None
        health = assess(row["wal_status"], row["retained"] or 0, row["lag"] or 0, max_keep, self.threshold)
        self._report(health)
        self.health = health
        self.server.slot_health.update({k: v for k, v in health.as_dict().items() if v is not None})
        if health.share is None:
            self.server.slot_health.pop("retained_share", None)
        return health

    def _report(self, health: SlotHealth) -> None:
        was_over = self.health is not None and self.health.over
        now = time.monotonic()
        if health.max_keep_bytes is None and not self._warned_unlimited:
            self._warned_unlimited = True
            log.warning(
                "max_slot_wal_keep_size is -1 (unlimited): nothing stops slot %s from keeping WAL "
                "until the disk is full; set it (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '10GB')",
                self.slot,
            )
        if health.problem is not None and (not was_over or now - self._last_warning >= REPEAT_WARNING):
            self._last_warning = now
            log.error(
                "SLOT WATCHDOG: %s; the relay stops holding WAL for its replay window until it is "
                "back under the threshold",
                health.problem,
                extra={"code": health.problem.partition(":")[0], "slot": self.slot},
            )
        elif was_over and not health.over:
            log.warning(
                "slot watchdog: slot %s is back under the threshold (%s bytes retained)",
                self.slot,
                health.retained_bytes,
            )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check()
            # asyncio.timeout, not wait_for: no helper task per interval (a task per tick reads
            # as a leak to an embedding application's task accounting, and costs a little)
            try:
                async with asyncio.timeout(self.interval):
                    await stop.wait()
            except TimeoutError:
                pass


def ready_handler(
    server: RelayServer, watchdog: Callable[[], SlotWatchdog | None]
) -> Callable[[web.Request], Any]:
    """``GET /ready``: 200 ``{"status": "ready"}`` or 503 ``{"status": "not_ready", "reasons": [...]}``."""

    async def ready(request: web.Request) -> web.Response:
        reasons: list[dict[str, str]] = []
        status = server.status
        if not status.get("streaming"):
            err = status.get("last_error")
            reasons.append(
                {
                    "code": "replication_not_streaming",
                    "message": redact(str(err)) if err else "the replication stream has not started",
                }
            )
        cluster = status.get("cluster")
        if isinstance(cluster, dict) and cluster.get("redis") != "ok":
            # cluster mode: this node reads the change log from Redis (docs/scale-out.md)
            reasons.append({"code": "redis_unavailable", "message": redact(str(cluster.get("redis")))})
        try:
            async with asyncio.timeout(CATALOG_TIMEOUT):
                await server.catalog.pool.fetchval("select 1")
        except Exception as exc:
            reasons.append({"code": "catalog_unavailable", "message": redact(str(exc)) or type(exc).__name__})
        cluster = server.topics.cluster  # cluster mode: broadcast/presence need Redis
        if cluster is not None and not any(r["code"] == "redis_unavailable" for r in reasons):
            reasons.extend(cluster.ready_reasons())
        wd = watchdog()
        health = wd.health if wd is not None else None
        if health is not None and health.problem is not None:
            reasons.append({"code": health.problem.partition(":")[0], "message": health.problem})
        body: dict[str, Any] = {"status": "not_ready" if reasons else "ready"}
        if reasons:
            body["reasons"] = reasons
        return web.Response(
            status=503 if reasons else 200, body=orjson.dumps(body), content_type="application/json"
        )

    return ready
