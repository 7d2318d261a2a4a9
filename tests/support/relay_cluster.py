"""K ``relay serve`` processes of one cluster (issue 17): same database, slot and Redis.

Why processes and not in-process relays: cluster mode is about what survives when a *process*
dies (the capture leader, a fan-out node, a worker), so the tests must be able to SIGKILL one by
its PID while the others go on.  Each node is ``python -m relay serve`` with its own port (one
port shared by several processes is ``relay serve --workers N``: ``workers=N``), its own
``RELAY_NODE_ID`` and its own log file, which a failing test prints.

Readiness: ``until="ready"`` waits for ``/ready`` to answer 200 (the node can deliver changes:
the probe a load balancer uses); ``until="health"`` only for ``/health`` to answer (the process
serves HTTP), for tests about processes rather than delivery.

Usage::

    async with relay_cluster(pg_dsn, redis_server.url, tmp_path, nodes=3) as cluster:
        url = cluster.nodes[0].ws_url
        cluster.nodes[0].kill()            # SIGKILL, by PID
        await cluster.nodes[0].restart()   # same port, same node id, waits until ready
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson

from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import SECRET
from tests.support.relay_process import log_tail, relay_env, spawn_relay

__all__ = ["RelayCluster", "RelayNode", "child_pids", "node_id", "relay_cluster"]

Until = Literal["ready", "health"]


def node_id(health: dict[str, Any] | None) -> str | None:
    """The node id a cluster node's ``/health`` names (``cluster.node_id``), or None."""
    cluster = (health or {}).get("cluster")
    return cluster.get("node_id") if isinstance(cluster, dict) else None


def child_pids(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (Linux ``/proc``): a supervisor's workers."""
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return sorted(set(out))


class RelayNode:
    """One ``relay serve`` process (a supervisor with its workers when ``--workers`` > 1)."""

    def __init__(
        self,
        name: str,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self.args = tuple(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- process ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1/websocket"

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== {self.name} start #{self.starts} =====\n".encode())
            logf.flush()
            self.proc = spawn_relay(self.env, logf, "--no-migrate", *self.args)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: a crash) to this node's process, by PID, and reap it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int | None:
        """Orderly stop (SIGTERM: clients get 1001), SIGKILL if it is not gone within ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def worker_pids(self) -> list[int]:
        """The worker processes of a ``--workers`` node (empty for a single-process node)."""
        return child_pids(self.proc.pid) if self.alive and self.proc is not None else []

    async def restart(self, until: Until | None = "ready", timeout: float = 60.0) -> dict[str, Any]:
        """Stop (if running), start again on the same port with the same node id, wait."""
        await asyncio.to_thread(self.terminate)
        self.start()
        return await self.wait(until or "health", timeout)

    # -- HTTP ---------------------------------------------------------------------------------
    async def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any] | None:
        """``(status, JSON body)`` of ``GET path`` on a fresh connection, or None if no answer.

        Why a fresh connection each time: with SO_REUSEPORT the kernel picks the worker per
        connection, so a kept-alive connection would always ask the same worker.
        """
        conn = aiohttp.TCPConnector(force_close=True)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as session,
                session.get(f"{self.http_url}{path}") as resp,
            ):
                body = await resp.read()
                try:
                    return resp.status, orjson.loads(body)
                except orjson.JSONDecodeError:
                    return resp.status, body.decode(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    async def health(self) -> dict[str, Any] | None:
        got = await self.get("/health")
        return got[1] if got is not None and got[0] == 200 and isinstance(got[1], dict) else None

    async def wait(self, until: Until = "ready", timeout: float = 60.0) -> dict[str, Any]:
        """Until ``/ready`` says 200 (or ``/health`` answers); fails early if the process died.

        For a ``--workers`` node, whichever worker the kernel hands the connection answers: ask
        ``health()`` repeatedly (fresh connections) to hear from each.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            got = await self.get("/ready" if until == "ready" else "/health")
            last = got
            if got is not None and got[0] == 200 and isinstance(got[1], dict):
                return got[1]
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not {until} after {timeout}s (last: {last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


class RelayCluster:
    """K relay nodes behind one slot and one Redis; every node has its own port and log.

    ``workers``: each node runs ``relay serve --workers N`` (its workers share the node's port).
    ``env``: extra ``RELAY_*`` settings for every node (last, so they win).
    """

    def __init__(
        self,
        dsn: str,
        redis_url: str,
        log_dir: Path,
        *,
        nodes: int = 2,
        workers: int = 1,
        slot: str = "cluster_relay",
        secret: str = SECRET,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.redis_url = redis_url
        self.slot = slot
        self.nodes: list[RelayNode] = []
        for i in range(nodes):
            name = f"node{i}"
            port = free_port()
            node_env = relay_env(
                dsn,
                port,
                secret,
                slot,
                {
                    "RELAY_HOST": "127.0.0.1",
                    "RELAY_REDIS_URL": redis_url,
                    "RELAY_NODE_ID": name,
                    "RELAY_WORKERS": str(workers),
                    "RELAY_PUBLICATION_POLL": "0.5",
                    "RELAY_LOG_LEVEL": "INFO",
                    **(env or {}),
                },
            )
            self.nodes.append(RelayNode(name, port, node_env, log_dir / f"{name}.log"))

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    async def wait(self, until: Until = "ready", timeout: float = 60.0) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(n.wait(until, timeout) for n in self.nodes)))

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.nodes[index].kill(sig)

    async def restart(self, index: int, until: Until | None = "ready") -> dict[str, Any]:
        return await self.nodes[index].restart(until)

    def stop_all(self) -> None:
        """SIGTERM every node that still runs (in parallel: each may take seconds), then reap."""
        running = [n for n in self.nodes if n.alive and n.proc is not None]
        for node in running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        for node in running:
            node.terminate()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {n.name} (port {n.port}) ---\n{n.log_tail(lines)}" for n in self.nodes)


def prepare_database(dsn: str) -> None:
    """Migrations and the demo schema, once, before any node starts (nodes run --no-migrate)."""
    apply_migrations(dsn)
    apply_demo_schema(dsn)


@contextlib.asynccontextmanager
async def relay_cluster(
    dsn: str,
    redis_url: str,
    log_dir: Path,
    *,
    nodes: int = 2,
    until: Until | None = "ready",
    timeout: float = 60.0,
    **kwargs: Any,
) -> AsyncIterator[RelayCluster]:
    """Prepare the database, start ``nodes`` relays, wait until each is ``until``; stop all after.

    A node that does not become ready fails the test with every node's log tail.
    """
    await asyncio.to_thread(prepare_database, dsn)
    cluster = RelayCluster(dsn, redis_url, log_dir, nodes=nodes, **kwargs)
    try:
        cluster.start()
        if until is not None:
            try:
                await cluster.wait(until, timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"{exc}\n{cluster.logs()}") from None
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop_all)
