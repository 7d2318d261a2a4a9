"""One relay process as a node of a cluster: a capture candidate and a reader of the log.

Why both in every node: any node can lead (no node is special, so any can die), and every node
serves its sockets from the log, the leader included (relay/cluster/follower.py).  The node
knows nothing of the server: it feeds the server's sink and reports its state through
``publish`` (the service wires both), so the layers stay one way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis.asyncio import Redis

from relay.config import Config
from relay.pipeline import ChangeSink
from relay.postgres.catalog import Catalog

from .changelog import ClusterKeys
from .follower import LogFollower
from .leader import CaptureLeader

__all__ = ["ClusterNode", "default_node_id"]

log = logging.getLogger("relay.cluster")

STATUS_INTERVAL = 0.5


def default_node_id() -> str:
    """Host name and process id: unique per process, readable in logs and on /health."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ClusterNode:
    """Runs the leader candidate and the log follower; publishes their state for /health."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        sink: ChangeSink,
        publish: Callable[[dict[str, Any]], None],
    ) -> None:
        assert config.redis_url, "cluster mode needs RELAY_REDIS_URL"
        self.config = config
        self.node_id = config.node_id or default_node_id()
        self.keys = ClusterKeys(config.slot)
        # socket_timeout outlasts the follower's blocking read (1 s); health_check_interval
        # notices a Redis that restarted behind a pooled connection.
        self.redis = Redis.from_url(
            config.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0, health_check_interval=10
        )
        self.leader = CaptureLeader(self.redis, self.keys, config, catalog, self.node_id)
        self.follower = LogFollower(self.redis, self.keys, sink, catalog)
        self.publish = publish
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def types(self) -> Any:
        return self.follower.types

    @property
    def ready(self) -> asyncio.Event:
        return self.follower.ready

    def start(self, stop: asyncio.Event) -> asyncio.Task[None]:
        """Start both parts; the returned task ends when ``stop`` is set and both have ended."""
        return asyncio.create_task(self._run(stop), name="relay-cluster-node")

    async def _run(self, stop: asyncio.Event) -> None:
        parts = [
            asyncio.create_task(self.follower.run(stop), name="relay-log-follower"),
            asyncio.create_task(self.leader.run(stop), name="relay-capture-leader"),
        ]
        try:
            while not stop.is_set():
                self.publish(self.status())
                try:
                    async with asyncio.timeout(STATUS_INTERVAL):
                        await stop.wait()
                except TimeoutError:
                    pass
            for t in parts:
                try:
                    await asyncio.wait_for(asyncio.shield(t), 5)
                except TimeoutError:
                    t.cancel()
        finally:
            for t in parts:
                t.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await t
            self.publish(self.status())
            with suppress(Exception):
                await self.redis.aclose()

    def status(self) -> dict[str, Any]:
        """What /health and /ready show: ``streaming`` means this node serves from the log."""
        f = self.follower
        err = f.last_error or self.leader.last_error
        capture = self.leader.stats
        out: dict[str, Any] = {
            "streaming": f.ready.is_set() and f.redis_ok,
            "last_error": f.last_error if not f.redis_ok else None,
            "cluster": {
                "node_id": self.node_id,
                **self.leader.as_dict(),
                "redis": "ok" if f.redis_ok else (err or "connecting"),
                "log_generation": f.gen,
                "log_length": f.log_length,
                "log_entries_read": f.entries,
                "log_gaps": f.gaps,
            },
        }
        if capture is not None:
            out["capture"] = capture.as_dict()
        return out
