"""Run the relay: HTTP/WebSocket server + capture pipeline, until a signal or ``stop``.

Why separate from the CLI: tests and the demo start the same service in-process (on a free port)
and stop it by setting an event, exactly as Ctrl-C does for ``relay serve``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import suppress

from aiohttp import web

from relay.cluster.node import ClusterNode
from relay.cluster.rooms import ClusterRooms
from relay.config import Config
from relay.core.changes import Commit, Lsn
from relay.core.position import pack
from relay.core.relay_messages import (
    DatabaseBroadcast,
    PolicyChanged,
    RelayMessage,
    SnapshotFence,
    TopicPolicyChanged,
)
from relay.core.tokens import Verifier
from relay.pipeline import Pipeline, PipelineStats
from relay.postgres.catalog import Catalog
from relay.postgres.policy_store import PolicyStore
from relay.server.app import RelayServer
from relay.server.probes import SlotWatchdog

__all__ = ["RunningRelay", "run_until_stopped", "start_relay"]

log = logging.getLogger("relay")


class RunningRelay:
    """Handles of a started relay: its server, pipeline, bound port and stop event."""

    def __init__(
        self,
        server: RelayServer,
        pipeline: Pipeline | None,
        runner: web.AppRunner,
        port: int,
        task: asyncio.Task[None],
        stop: asyncio.Event,
        catalog: Catalog,
    ) -> None:
        self.server = server
        self._pipeline = pipeline
        self.runner = runner
        self.port = port
        self.task = task
        self.stop_event = stop
        self.catalog = catalog
        self.policy_task: asyncio.Task[None] | None = None
        self.rooms_task: asyncio.Task[None] | None = None  # cluster mode: rooms across nodes
        self.policies: PolicyStore | None = None
        self.watchdog_task: asyncio.Task[None] | None = None
        self.cluster: ClusterNode | None = None  # cluster mode: the node (no pipeline of its own)

    @property
    def pipeline(self) -> Pipeline:
        """The capture pipeline (single-process mode; in cluster mode the leader's is in ``cluster``)."""
        if self._pipeline is None:
            raise RuntimeError("cluster mode: this relay has no pipeline of its own (see relay.cluster)")
        return self._pipeline

    @property
    def url(self) -> str:
        host = self.server.config.host
        return f"ws://{host}:{self.port}/realtime/v1"

    async def stop(self) -> None:
        """Stop accepting, tell every client it is going away (1001), then wind down.

        Why the listener first: closing sockets while it still accepts lets clients reconnect
        straight into a relay that is shutting down, where nobody serves them.
        """
        for site in list(self.runner.sites):
            await site.stop()
        self.stop_event.set()
        await self.server.close_all()
        with suppress(asyncio.CancelledError):
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 5)
            except TimeoutError:
                self.task.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await self.task
        if self.rooms_task is not None:  # lets it say goodbye: its presences leave the others now
            await asyncio.wait({self.rooms_task}, timeout=3)
        for extra in (self.policy_task, self.watchdog_task, self.rooms_task):
            if extra is not None:
                extra.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await extra
        await self.runner.cleanup()
        await self.server.snapshots.close()
        await self.catalog.close()


class ServerSink:
    """The pipeline's :class:`~relay.pipeline.ChangeSink` for a serving relay.

    Why here: this is where the parts are put together, so it is the one place that knows which
    part wants which of the pipeline's outputs (the server, the policy store, the metrics, the
    slot watchdog); none of them knows the pipeline.
    """

    def __init__(self, server: RelayServer, store: PolicyStore, watchdog: SlotWatchdog) -> None:
        self.server = server
        self.store = store
        self.watchdog = watchdog
        self.change = server.feed.dispatch  # the hot path: no wrapper call per change
        self.batch_end = server.outbox.flush
        self.slot = server.feed.on_slot

    def commit(self, commit: Commit) -> None:
        self.server.metrics.observe_commit(commit)
        self.server.feed.on_commit(commit)

    def message(self, message: RelayMessage) -> None:
        if type(message) is DatabaseBroadcast:  # realtime.send: in commit order with the changes
            self.server.topics.db_message(message.body, pack(message.commit_lsn, 0))
        elif type(message) is PolicyChanged:
            self.store.poke()
        elif type(message) is TopicPolicyChanged:
            self.server.topics.policies_changed(message.xid)
        elif type(message) is SnapshotFence:  # a snapshot on join: the stream passed its point
            self.server.snapshots.fence(message.id)

    def status(self, stats: PipelineStats) -> None:
        self.server.status = stats.as_dict()

    def hold(self) -> Lsn | None:
        """The replay window's hold on the slot, unless the slot watchdog says WAL piles up."""
        held = self.server.feed.hold()
        return None if self.watchdog.release_hold else held


async def start_relay(
    config: Config, *, wait_ready: bool = True, ready_timeout: float = 30.0
) -> RunningRelay:
    """Start server and pipeline; returns once the replication stream runs (if ``wait_ready``)."""
    dsn = config.require_database()
    config.require_jwt()
    verifier = Verifier(secret=config.jwt_secret, public_key=config.jwt_public_key, jwks=config.jwt_jwks)
    catalog = Catalog(dsn)
    await catalog.open()
    server = RelayServer(config, verifier, catalog)
    rooms: ClusterRooms | None = None
    if config.redis_url:  # cluster mode: broadcast and presence reach every node (docs/scale-out.md)
        rooms = server.topics.cluster = ClusterRooms(config, server.topics)

    store = PolicyStore(catalog, server.authorizer, interval=config.policy_poll_interval)
    watchdog = SlotWatchdog(server, config.slot, config.slot_wal_threshold, config.slot_check_interval)
    server.watchdog = watchdog
    stop = asyncio.Event()
    sink = ServerSink(server, store, watchdog)
    node: ClusterNode | None = None
    pipeline: Pipeline | None = None
    if config.redis_url:
        # Cluster mode (docs/scale-out.md): this process serves from the shared change log and
        # captures only while it holds the leader lease; the same sink feeds the server.
        node = ClusterNode(config, catalog, sink, publish=lambda status: setattr(server, "status", status))
        server.types = node.types
        server.feed.catch_up = node.follower.caught_up
    else:
        pipeline = Pipeline(
            dsn,
            catalog,
            sink,
            slot=config.slot,
            publication=config.publication,
            poll_interval=config.publication_poll_interval,
        )
        server.types = pipeline.types
    policy_task = asyncio.create_task(store.run(stop), name="relay-policies")
    try:
        await asyncio.wait_for(asyncio.shield(store.loaded.wait()), ready_timeout)
    except TimeoutError:
        log.warning("row policies not loaded yet; rows go only to service_role until they are")
    # aiohttp arms its keep-alive timer when a connection opens and closes the connection if
    # no complete request has arrived when it fires: the same timeout bounds a half-sent
    # (trickled) upgrade request and an idle keep-alive connection.  Its default is an hour.
    runner = web.AppRunner(
        server.app(), handle_signals=False, access_log=None, keepalive_timeout=config.handshake_timeout
    )
    await runner.setup()
    # cluster mode: SO_REUSEPORT, so the workers of `relay serve --workers N` (and other nodes
    # on this machine) share the port and the kernel spreads connections over them
    site = web.TCPSite(
        runner, config.host, config.port, reuse_address=True, reuse_port=bool(config.redis_url)
    )
    await site.start()
    port = config.port
    if port == 0 and site._server is not None:
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            port = sockets[0].getsockname()[1]
    if node is not None:
        task = node.start(stop)
        ready_event = node.ready
    else:
        assert pipeline is not None
        task = asyncio.create_task(pipeline.run(stop), name="relay-pipeline")
        ready_event = pipeline.ready
    relay = RunningRelay(server, pipeline, runner, port, task, stop, catalog)
    relay.cluster = node
    relay.policy_task = policy_task
    relay.watchdog_task = asyncio.create_task(watchdog.run(stop), name="relay-slot-watchdog")
    if rooms is not None:
        relay.rooms_task = asyncio.create_task(rooms.run(stop), name="relay-cluster-rooms")
    relay.policies = store
    if wait_ready:
        ready = asyncio.create_task(ready_event.wait())
        done, _ = await asyncio.wait(
            {ready, task}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            err = server.status.get("last_error") or "timed out"
            await relay.stop()
            raise RuntimeError(f"replication did not start: {err}")
    return relay


def freeze_startup_heap() -> None:
    """Keep what start-up left alive (modules, the parts of the server) out of the cyclic GC.

    Why (issue 16, joins): every socket adds a few dozen long-lived objects, and CPython runs a
    full collection each time the long-lived objects grew by a quarter — traversing every
    object of the process, start-up's ≈ 90,000 included.  Frozen, those are not traversed again:
    ``bench/idle_sockets.py`` spent 0.79 s in full collections while 6,000 sockets joined, 0.33 s
    with them frozen (483 → 408 µs of CPU per connect + join).  Only for a serving process
    (``relay serve``, each worker): a test process starting many relays would keep their
    garbage cycles for good.
    """
    gc.collect()
    gc.freeze()


async def run_until_stopped(
    config: Config, on_started: Callable[[RunningRelay], Awaitable[None]] | None = None
) -> None:
    """``relay serve``: run until SIGINT/SIGTERM."""
    relay = await start_relay(config, wait_ready=False)
    freeze_startup_heap()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    log.info("relay listening on %s (slot %s, publication %s)", relay.url, config.slot, config.publication)
    if on_started is not None:
        await on_started(relay)
    waiter = asyncio.create_task(stopping.wait())
    await asyncio.wait({waiter, relay.task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    log.info("stopping")
    await relay.stop()
