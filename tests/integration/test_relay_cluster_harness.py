"""The multi-process harness the cluster tests stand on (tests/support/relay_cluster.py).

Why test the harness: a cluster test that "kills node 1" proves nothing if the harness killed
the wrong process, left it running, or restarted it under another identity.  Here: K real
``relay serve`` processes with their own ports and node ids answer, a SIGKILL by PID ends exactly
that one while the others go on, and a restart brings the same node back on the same port.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.redis_server import RedisServer
from tests.support.relay_cluster import node_id, relay_cluster


async def test_nodes_start_kill_and_restart_by_pid(
    pg_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with relay_cluster(pg_dsn, redis_server.url, tmp_path, nodes=3, until="ready") as cluster:
        ports = {n.port for n in cluster.nodes}
        assert len(ports) == 3
        for node in cluster.nodes:
            health = await node.health()
            assert node_id(health) == node.name, (node.name, health)
        victim, others = cluster.nodes[1], [cluster.nodes[0], cluster.nodes[2]]
        old_pid = victim.pid
        assert old_pid is not None
        cluster.kill(1)
        assert not victim.alive
        assert victim.proc is not None and victim.proc.returncode == -9
        assert await victim.health() is None  # nothing answers on its port any more
        for node in others:
            assert node.alive and node_id(await node.health()) == node.name
        await cluster.restart(1, until="ready")
        assert victim.pid != old_pid and victim.starts == 2
        assert node_id(await victim.health()) == "node1"
        procs = [n.proc for n in cluster.nodes]
    await asyncio.sleep(0)
    assert all(p is not None and p.poll() is not None for p in procs), "stop_all left a node running"
