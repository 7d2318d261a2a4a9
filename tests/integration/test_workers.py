"""``relay serve --workers 2``: two real relay processes share one port and are supervised.

What is checked with the real relay (the supervision rules themselves: tests/unit/test_workers.py):
the kernel really spreads connections over both workers (each worker's /health names its own
node id and counts its own sockets, and together they count every socket), a SIGKILLed worker
comes back under a new node id while the other keeps its sockets, and SIGTERM to the supervisor
reaches the workers, which close their sockets with 1001 as a single relay does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.support.redis_server import RedisServer
from tests.support.relay import PhoenixClient, token
from tests.support.relay_cluster import RelayNode, node_id, relay_cluster

SOCKETS = 40
_GONE = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.ERROR,
)


async def per_worker(node: RelayNode, want: int, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
    """/health of each worker, asked over fresh connections until ``want`` distinct nodes answered."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        h = await node.health()
        if h is not None:
            seen[str(node_id(h))] = h
    return seen


@contextlib.asynccontextmanager
async def sockets(url: str, n: int) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
    """``n`` WebSockets, each on a connection of its own (the kernel places each one)."""
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            session = await stack.enter_async_context(aiohttp.ClientSession())
            ws = await stack.enter_async_context(session.ws_connect(url, params={"apikey": token()}))
            out.append(ws)
        yield out


@pytest.mark.timeout(180)
async def test_two_workers_share_the_port_restart_and_stop_cleanly(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with relay_cluster(
        pg_dsn, redis_server.url, tmp_path, nodes=1, workers=2, until="health", env={"RELAY_NODE_ID": "api"}
    ) as cluster:
        node = cluster.nodes[0]
        deadline = time.monotonic() + 30
        while len(node.worker_pids()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pids = node.worker_pids()
        assert len(pids) == 2, cluster.logs()
        assert set(await per_worker(node, 2)) == {"api-w1", "api-w2"}, cluster.logs()
        # the supervisor logs the start-up findings once; its workers do not repeat them
        warned = [line for line in node.log_tail(400).splitlines() if "preflight: " in line]
        assert warned, "this test's cluster has preflight warnings (unlimited slot WAL); none was logged"
        assert len(warned) == len(set(w.partition("preflight: ")[2] for w in warned)), warned

        async with sockets(node.ws_url, SOCKETS) as socks:
            workers = await per_worker(node, 2)
            counts = {name: h["connections"] for name, h in workers.items()}
            assert sum(counts.values()) == SOCKETS, counts
            assert all(c > 0 for c in counts.values()), f"one worker took every socket: {counts}"

            # SIGKILL worker 2: the supervisor starts a new one; worker 1 keeps its sockets
            victim = next(p for p in pids if _node_of(p) == "api-w2")
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = await per_worker(node, 2, timeout=2)
                if set(now) == {"api-w1", "api-w2-r1"}:
                    break
                await asyncio.sleep(0.2)
            assert set(now) == {"api-w1", "api-w2-r1"}, cluster.logs()
            assert now["api-w1"]["connections"] == counts["api-w1"]
            assert victim not in node.worker_pids()
            assert "worker 2 (node api-w2) ended (signal SIGKILL)" in node.log_tail(200)

            ended = await asyncio.gather(*(_ended(ws, 2.0) for ws in socks))
            assert ended.count(True) == counts["api-w2"], "exactly the killed worker's sockets end"
            survivors = [ws for ws, gone in zip(socks, ended, strict=True) if not gone]

            # SIGTERM to the supervisor: forwarded; the sockets of the surviving worker get 1001
            last_pids = node.worker_pids()
            node.kill(signal.SIGTERM)
            codes = await asyncio.gather(*(_close_code(ws) for ws in survivors))
            assert set(codes) == {1001}, codes
        assert node.proc is not None and await asyncio.to_thread(node.proc.wait, 30) == 0, node.log_tail()
        assert not any(_exists(p) for p in last_pids), "a worker outlived its supervisor"


async def _close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async with asyncio.timeout(20):
        while True:
            msg = await ws.receive()
            if msg.type in _GONE:
                return ws.close_code


async def _ended(ws: aiohttp.ClientWebSocketResponse, wait: float) -> bool:
    """True when the socket ends (close or error) within ``wait`` seconds."""
    try:
        async with asyncio.timeout(wait):
            while True:
                msg = await ws.receive()
                if msg.type in _GONE:
                    return True
    except TimeoutError:
        return False


def _node_of(pid: int) -> str | None:
    """RELAY_NODE_ID in the environment of process ``pid``."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"RELAY_NODE_ID="):
            return item.partition(b"=")[2].decode()
    return None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
async def test_changes_reach_the_sockets_of_every_worker(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Cluster mode behind one port: one worker captures, both deliver to their own sockets."""
    async with relay_cluster(
        pg_dsn, redis_server.url, tmp_path, nodes=1, workers=2, until="health", env={"RELAY_NODE_ID": "api"}
    ) as cluster:
        node = cluster.nodes[0]
        deadline = time.monotonic() + 60
        workers: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            workers = await per_worker(node, 2, timeout=5)
            if len(workers) == 2 and all(h["status"] == "ok" for h in workers.values()):
                break
            await asyncio.sleep(0.2)
        assert {n: h["status"] for n, h in workers.items()} == {"api-w1": "ok", "api-w2": "ok"}, (
            cluster.logs()
        )
        bindings = [{"event": "INSERT", "schema": "public", "table": "alerts"}]
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(PhoenixClient.connect(node.port)) for _ in range(SOCKETS // 2)
            ]
            for c in clients:
                assert (await c.join("w", bindings))["payload"]["status"] == "ok"
            counts = {n: h["connections"] for n, h in (await per_worker(node, 2)).items()}
            assert all(v > 0 for v in counts.values()) and sum(counts.values()) == len(clients), counts
            await asyncio.to_thread(_insert, pg_dsn, "to every worker")
            for c in clients:
                m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=20)
                assert m["payload"]["data"]["record"]["title"] == "to every worker"


def _insert(dsn: str, title: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'w', %s)", (title,)
        )
