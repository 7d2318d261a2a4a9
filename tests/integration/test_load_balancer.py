"""docker/haproxy.cfg, run by a real HAProxy in front of real relay processes on loopback.

Why: there is no Docker engine here, but the load balancer's behaviour does not need one.  The
compose file's HAProxy configuration is used as it is, with only the addresses changed (its
``bind`` and ``server`` lines point at loopback ports, Docker's DNS resolver is left out) and a
stats socket added to read the servers' states.  What it must do:

* pass the WebSocket upgrade and frames both ways (a join through it is answered, a row change
  arrives through it);
* send new connections only to a node whose ``/ready`` answers 200: of two relays on one slot
  (without Redis only one can stream; the other answers ``/health`` but not ``/ready``) every
  socket lands on the streaming one;
* no stickiness: when that node stops, the same clients reconnect through the balancer to the
  other node once it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from relay.postgres.cluster import free_port
from tests.support.redis_server import RedisServer
from tests.support.relay import SECRET, PhoenixClient
from tests.support.relay_cluster import RelayNode, prepare_database, relay_cluster
from tests.support.relay_process import relay_env
from tests.unit.test_cluster_compose import HAPROXY_CFG, haproxy_binary

pytestmark = pytest.mark.timeout(180)


def loopback_config(text: str, lb_port: int, servers: dict[str, int], stats: Path) -> str:
    """docker/haproxy.cfg with loopback addresses; every other line as in the file."""
    text = text.replace("bind :4000", f"bind 127.0.0.1:{lb_port}")
    text = re.sub(r"\nresolvers docker\n(?:[ \t]+.*\n)+", "\n", text)
    text = text.replace(" resolvers docker init-addr last,libc,none", "")
    for name, port in servers.items():
        text, n = re.subn(rf"(server {name}) \S+:4000", rf"\1 127.0.0.1:{port}", text)
        assert n == 1, f"no server line for {name}"
    text = text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    assert "127.0.0.11" not in text and ":4000" not in text
    return text


def server_states(stats: Path) -> dict[str, str]:
    """``{"relay-1": "UP", ...}`` from HAProxy's runtime API (``show stat``)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "relays" and row.get("svname", "").startswith("relay-"):
            out[row["svname"]] = row["status"]
    return out


@pytest.fixture()
def haproxy(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("haproxy is not installed (scripts/install-system-deps.sh installs it)")
    yield binary, tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"


async def wait_states(stats: Path, want: dict[str, str], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    got: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            got = await asyncio.to_thread(server_states, stats)
        except OSError:
            got = {}
        if got == want:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"haproxy server states {got}, expected {want}")


async def connections(node: RelayNode) -> int:
    h = await node.health()
    assert h is not None, node.log_tail()
    return int(h["connections"])


async def test_haproxy_routes_on_readiness_and_without_stickiness(
    pg_dsn: str, haproxy: tuple[str, Path, Path], tmp_path: Path
) -> None:
    binary, cfg_path, stats = haproxy
    await asyncio.to_thread(prepare_database, pg_dsn)
    nodes = []
    for name in ("relay-1", "relay-2"):
        port = free_port()
        env = relay_env(
            pg_dsn, port, SECRET, "lb_slot", {"RELAY_NODE_ID": name, "RELAY_PUBLICATION_POLL": "0.5"}
        )
        nodes.append(RelayNode(name, port, env, tmp_path / f"{name}.log"))
    first, second = nodes
    lb_port = free_port()
    cfg_path.write_text(
        loopback_config(HAPROXY_CFG.read_text(), lb_port, {n.name: n.port for n in nodes}, stats)
    )
    lb_log = tmp_path / "haproxy.log"
    proc = None
    try:
        first.start()
        await first.wait("ready")
        second.start()  # same slot, no Redis: it serves HTTP but cannot stream
        await second.wait("health")
        got = await second.get("/ready")
        assert got is not None and got[0] == 503, got
        proc = _start_haproxy(binary, cfg_path, lb_log)
        await wait_states(stats, {"relay-1": "UP", "relay-2": "DOWN"})

        # frames pass both ways through the balancer, and every socket lands on the ready node
        bindings = [{"event": "INSERT", "schema": "public", "table": "alerts"}]
        async with PhoenixClient.connect(lb_port) as client:
            reply = await client.join("lb", bindings)
            assert reply["payload"]["status"] == "ok", reply
            await asyncio.to_thread(_insert, pg_dsn, "through the balancer")
            change = await client.recv_until(lambda m: m["event"] == "postgres_changes", timeout=15)
            assert change["payload"]["data"]["record"]["title"] == "through the balancer"
            assert await connections(first) == 1 and await connections(second) == 0

        # the ready node goes away: the same clients come back through the balancer on the other
        await asyncio.to_thread(first.terminate)
        await second.wait("ready")
        await wait_states(stats, {"relay-1": "DOWN", "relay-2": "UP"})
        async with PhoenixClient.connect(lb_port) as client:
            reply = await client.join("lb", bindings)
            assert reply["payload"]["status"] == "ok", reply
            await asyncio.to_thread(_insert, pg_dsn, "after failover")
            change = await client.recv_until(
                lambda m: (
                    m["event"] == "postgres_changes"
                    and m["payload"]["data"]["record"]["title"] == "after failover"
                ),
                timeout=15,
            )
            assert await connections(second) == 1
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n--- haproxy ---\n{_tail(lb_log)}\n--- relays ---\n{first.log_tail()}\n"
            f"{second.log_tail()}"
        ) from None
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        for node in nodes:
            await asyncio.to_thread(node.terminate)


def _start_haproxy(binary: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as logf:
        return subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=logf, stderr=subprocess.STDOUT)


def _insert(dsn: str, title: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into alerts (branch_id, severity, kind, title) values (1, 'info', 'lb', %s)", (title,)
        )


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-30:])
    except OSError:
        return "(no log)"


async def test_haproxy_spreads_a_cluster_and_moves_a_dead_nodes_clients(
    pg_dsn: str, redis_server: RedisServer, haproxy: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """The compose topology on loopback: two cluster nodes behind docker/haproxy.cfg.

    Both nodes are ready (each serves from the shared change log), so leastconn spreads sockets
    over both; a SIGKILLed node is marked down and its clients, reconnecting through the same
    address, land on the other node and still receive every change.
    """
    binary, cfg_path, stats = haproxy
    lb_log = tmp_path / "haproxy.log"
    async with relay_cluster(pg_dsn, redis_server.url, tmp_path, nodes=2) as cluster:
        a, b = cluster.nodes
        names = {"relay-1": a.port, "relay-2": b.port}
        lb_port = free_port()
        cfg_path.write_text(loopback_config(HAPROXY_CFG.read_text(), lb_port, names, stats))
        proc = _start_haproxy(binary, cfg_path, lb_log)
        bindings = [{"event": "INSERT", "schema": "public", "table": "alerts"}]
        try:
            await wait_states(stats, {"relay-1": "UP", "relay-2": "UP"})
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(PhoenixClient.connect(lb_port)) for _ in range(8)]
                for c in clients:
                    assert (await c.join("lb", bindings))["payload"]["status"] == "ok"
                spread = (await connections(a), await connections(b))
                assert sum(spread) == 8 and min(spread) >= 3, f"leastconn should even out: {spread}"
            a.kill()  # SIGKILL
            await wait_states(stats, {"relay-1": "DOWN", "relay-2": "UP"})
            async with contextlib.AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(PhoenixClient.connect(lb_port)) for _ in range(4)]
                for c in clients:
                    assert (await c.join("lb", bindings))["payload"]["status"] == "ok"
                assert await connections(b) == 4
                await asyncio.to_thread(_insert, pg_dsn, "after a node died")
                for c in clients:
                    m = await c.recv_until(lambda m: m["event"] == "postgres_changes", timeout=20)
                    assert m["payload"]["data"]["record"]["title"] == "after a node died"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- haproxy ---\n{_tail(lb_log)}\n{cluster.logs()}") from None
        finally:
            proc.terminate()
            proc.wait(10)
