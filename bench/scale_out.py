"""Cluster mode scale-out: authorized changes/s and deliveries/s with 1, 2 and 4 fan-out processes.

Not part of CI.  ``python bench/scale_out.py [--changes 2000] [--subscribers 500] [--fanout 1 2 4]``

The load is bench/authz.py's: subscribers with distinct claims (5 % admins, 15 % branch managers,
80 % plain users who see only the rows assigned to them) under three row policies on
``public.bookings``, all joined to ``realtime:dash`` before the changes exist (live fan-out), and
a backlog of ``--changes`` single-row INSERTs written while the capture is cut off (the bench
holds the slot), then released.  Per phase, on one throwaway Postgres:

* a fresh ``redis-server`` (AOF on, as docs/scale-out.md asks) and a fresh slot;
* P ``relay serve`` processes (cluster mode: same slot, same ``RELAY_REDIS_URL``, one port each)
  — one of them is the capture leader, every one of them fans out to its own sockets; the
  subscribers are dealt evenly over the P processes;
* the clock runs from the first change any subscriber receives to the moment every subscriber
  has read every change its claims allow (checked against the count the policies imply: a phase
  that delivers nothing, or not what it should, fails instead of printing a rate).

The **baseline** is P = 1 in the same run; each P prints its ratio to it.  An extra first phase
runs the embedded default (no Redis, one process) with the same load, to show the cost of going
through the shared log.  Configurations are interleaved over ``--rounds`` and each one's best
round is kept (the machine is shared).

Every relay process's CPU and run-queue wait over the drain are printed with the figures: on a
2-core machine (Postgres, Redis, the clients and the relays share the cores) the wall-clock curve
is expected to flatten at 2, and on a busy one it measures the neighbours.  Hence a second,
CPU-based figure: the relays are CPU-bound (their CPU plus run-queue wait is nearly the whole
drain), so with a core per relay process the drain would take about the busiest process's CPU
time — ``changes / max(CPU seconds)`` — an extrapolation that leaves out Postgres and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz import POLICIES, SECRET, audience, make_backlog, subscriber_tokens, take_slot
from idle_sockets import raise_nofile
from tablerow import emit
from wsload import ClosedError, cpu_seconds, join_bookings, run_wait_seconds

from relay.postgres.cluster import LocalCluster, free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations

ROOT = Path(__file__).resolve().parents[1]


# -- Redis ------------------------------------------------------------------------------------
@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port (AOF, fsync every second); its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", f"{workdir}/log"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start ({binary})")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# -- relay processes --------------------------------------------------------------------------
@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])


def start_nodes(
    dsn: str, slot: str, redis_url: str | None, count: int, logdir: Path, conns: int
) -> list[Node]:
    nodes = []
    for i in range(count):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RELAY_DATABASE_URL": dsn,
            "RELAY_JWT_SECRET": SECRET,
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(port),
            "RELAY_SLOT": slot,
            "RELAY_NODE_ID": f"bench-{i}",
            "RELAY_LOG_LEVEL": "WARNING",
            # raised for the bench, as in bench/authz.py: a backlog is not a slow client, and
            # the clients send no heartbeats
            "RELAY_SOCKET_QUEUE_FRAMES": "1000000",
            "RELAY_MAX_CONNECTIONS": str(conns + 100),
            "RELAY_MAX_CONNECTIONS_PER_SUB": "0",
            "RELAY_HEARTBEAT_TIMEOUT": "3600",
        }
        if redis_url:
            env["RELAY_REDIS_URL"] = redis_url
        log = logdir / f"{slot}-{i}.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--no-migrate"],
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        nodes.append(Node(proc, port, log))
    deadline = time.monotonic() + 90
    for node in nodes:  # every node can deliver: /ready (a follower: it reads the change log)
        while node.get("/ready") != 200:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                stop_nodes(nodes)
                raise SystemExit(f"bench invalid: relay on port {node.port} not ready:\n{node.tail()}")
            time.sleep(0.1)
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        try:
            node.proc.wait(20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(10)


# -- clients ----------------------------------------------------------------------------------
def clients_main(ports: list[int], tokens: list[str], pipe: Connection) -> None:
    """A client process: subscriber ``i`` connects to ``ports[i]``."""
    raise_nofile()
    asyncio.run(_clients(ports, tokens, pipe))


async def _clients(ports: list[int], tokens: list[str], pipe: Connection) -> None:
    """Counts the change events of every subscriber, and when the first and the last arrived."""
    received = 0
    first: float | None = None
    last: float | None = None
    closed: list[str] = []
    done = asyncio.Event()

    async def one(port: int, tok: str, ready: asyncio.Event) -> None:
        nonlocal received, first, last
        try:
            c = await join_bookings(port, tok)
            ready.set()
            while not done.is_set():
                try:
                    batch = await asyncio.wait_for(c.recv_batch(), 1)
                except TimeoutError:
                    continue
                n = sum(1 for data in batch if b'"postgres_changes",{' in data[:200])
                if n:
                    now = time.monotonic()  # system-wide clock: comparable across processes
                    first = now if first is None else first
                    last = now
                    received += n
            c.close()
        except (OSError, ClosedError, asyncio.IncompleteReadError, TimeoutError) as exc:
            closed.append(repr(exc))
            ready.set()

    readies = [asyncio.Event() for _ in tokens]
    tasks = [asyncio.create_task(one(port, t, r)) for port, t, r in zip(ports, tokens, readies, strict=True)]
    for r in readies:
        await asyncio.wait_for(r.wait(), 120)
    pipe.send(("joined", len(tokens) - len(closed)))
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, pipe.recv) == "count":
        pipe.send((received, first, last, len(closed), closed[:2]))
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- one phase --------------------------------------------------------------------------------
@dataclass
class Result:
    seconds: float
    changes: int
    deliveries: int
    relay_cpu: list[float]  # CPU seconds of each relay process from the release to the end
    relay_wait: list[float]  # seconds each relay process waited on a run queue for a CPU
    wall: float  # seconds from the release of the slot to the end


def phase(
    dsn: str,
    slot: str,
    redis_url: str | None,
    fanout: int,
    tokens: list[str],
    users: list[str],
    kinds: list[tuple[str, int | None]],
    changes: int,
    clients: int,
    logdir: Path,
    rng: random.Random,
) -> Result:
    who = audience(users, kinds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
    nodes = start_nodes(dsn, slot, redis_url, fanout, logdir, len(tokens))
    ports = [n.port for n in nodes]
    ctx = mp.get_context("spawn")
    pipes: list[Connection] = []
    procs = []
    try:
        # the same number of subscribers per node, roles mixed: dealt in a shuffled order (the
        # roles repeat every 20 subscribers, so dealing by index would put every admin on one node)
        order = list(range(len(tokens)))
        random.Random(5).shuffle(order)
        port_of = [0] * len(tokens)
        for pos, i in enumerate(order):
            port_of[i] = ports[pos % len(ports)]
        for k in range(clients):
            mine = tokens[k::clients]
            node_of = port_of[k::clients]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=clients_main, args=(node_of, mine, child), daemon=True)
            p.start()
            pipes.append(parent)
            procs.append(p)
        joined = sum(pipe.recv()[1] for pipe in pipes)
        if joined != len(tokens):
            raise SystemExit(f"bench invalid: {joined} of {len(tokens)} subscribers joined")
        blocker = take_slot(dsn, slot)
        rows = make_backlog(dsn, changes, users, rng)
        expected = sum(who.sees(b, a) for b, a in rows)
        cpu0 = [cpu_seconds(n.proc.pid) or 0.0 for n in nodes]
        wait0 = [run_wait_seconds(n.proc.pid) or 0.0 for n in nodes]
        t0 = time.monotonic()
        blocker.close()
        deadline = time.monotonic() + 600
        while True:
            for pipe in pipes:
                pipe.send("count")
            counts = [pipe.recv() for pipe in pipes]
            got = sum(c[0] for c in counts)
            if sum(c[3] for c in counts):
                why = [w for c in counts for w in c[4]][:2]
                raise SystemExit(f"bench invalid: subscriber sockets ended during the drain, e.g. {why}")
            if got >= expected:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"bench invalid: {got} of {expected} deliveries read")
            time.sleep(0.02)
        wall = time.monotonic() - t0
        cpu = [(cpu_seconds(n.proc.pid) or 0.0) - c0 for n, c0 in zip(nodes, cpu0, strict=True)]
        waited = [(run_wait_seconds(n.proc.pid) or 0.0) - w0 for n, w0 in zip(nodes, wait0, strict=True)]
        for pipe in pipes:
            pipe.send("stop")
        if got != expected:
            raise SystemExit(f"bench invalid: {got} deliveries, the policies imply {expected}")
        firsts = [c[1] for c in counts if c[1] is not None]
        lasts = [c[2] for c in counts if c[2] is not None]
        return Result(max(lasts) - min(firsts), len(rows), got, cpu, waited, wall)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
        stop_nodes(nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=2000, help="backlog per phase (single-row INSERTs)")
    ap.add_argument("--subscribers", type=int, default=500, help="live subscribers, distinct claims")
    ap.add_argument("--fanout", type=int, nargs="+", default=[1, 2, 4], help="relay processes per phase")
    ap.add_argument("--clients", type=int, default=2, help="client processes holding the subscribers")
    ap.add_argument("--no-embedded", action="store_true", help="skip the embedded (no Redis) phase")
    ap.add_argument("--log-dir", type=Path, default=None, help="keep the relays' logs here")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all configurations; best kept")
    args = ap.parse_args()
    rng = random.Random(17)
    logdir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    logdir.mkdir(parents=True, exist_ok=True)
    with LocalCluster() as pg:
        dsn = pg.dsn()
        apply_migrations(dsn)
        apply_demo_schema(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            branches = [r[0] for r in conn.execute("select id from branches order by id")]
            conn.execute("delete from realtime.row_policies")
            for name, expr in POLICIES:
                conn.execute("select realtime.create_policy('public.bookings', %s, %s)", (name, expr))
        tokens, users, kinds = subscriber_tokens(args.subscribers, branches, rng)
        print(
            f"load: {args.subscribers} subscribers with distinct claims, {args.changes} single-row "
            f"changes per phase, policies {', '.join(p for p, _ in POLICIES)}; {os.cpu_count()} cores; "
            f"relay logs in {logdir}",
            flush=True,
        )

        # rounds interleave the configurations, so that a burst of load from the machine's other
        # users hits all of them alike; each configuration's best round is reported
        configs: list[int] = ([0] if not args.no_embedded else []) + list(args.fanout)
        runs: dict[int, list[Result]] = {c: [] for c in configs}
        for rnd in range(args.rounds):
            shift = rnd % len(configs)  # each round starts with another configuration
            for c in configs[shift:] + configs[:shift]:
                slot = f"scale_{c or 'embedded'}_{rnd}"
                if c == 0:
                    r = phase(
                        dsn, slot, None, 1, tokens, users, kinds, args.changes, args.clients, logdir, rng
                    )
                else:
                    with redis_server() as url:
                        r = phase(
                            dsn, slot, url, c, tokens, users, kinds, args.changes, args.clients, logdir, rng
                        )
                runs[c].append(r)
                print(
                    f"  round {rnd + 1}, {_label(c)}: {r.changes / r.seconds:,.0f} changes/s "
                    f"(load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        best = {c: max(rs, key=lambda r: r.changes / r.seconds) for c, rs in runs.items()}
        base = best[args.fanout[0]]
        base_rate = base.changes / base.seconds
        base_proj = base.changes / max(base.relay_cpu)
        for c in configs:
            r = best[c]
            rate = r.changes / r.seconds
            # The extrapolation for a machine with a core per relay process: the relays are
            # CPU-bound (CPU + run-queue wait is nearly all of the drain), so the drain would
            # take about the busiest process's CPU time.  Postgres and Redis are not counted.
            busiest, total = max(r.relay_cpu), sum(r.relay_cpu)
            proj = r.changes / busiest
            cpu = " + ".join(f"{x / r.wall:.0%}" for x in r.relay_cpu)
            wait = " + ".join(f"{x / r.wall:.0%}" for x in r.relay_wait)
            print(
                f"{_label(c)}: {rate:,.0f} changes/s, {r.deliveries / r.seconds:,.0f} deliveries/s "
                f"({r.deliveries / r.changes:.1f} per change); ratio to {_label(args.fanout[0])} "
                f"{rate / base_rate:.2f}x (best of {len(runs[c])})\n"
                f"    from the slot's release to the last delivery ({r.wall:.1f} s): relay CPU {cpu} "
                f"of a core; relay waited for a CPU (run queue) {wait} of the time\n"
                f"    relay CPU {total:.2f} s in all, {r.deliveries / total:,.0f} deliveries per relay "
                f"CPU-second; with a core per relay process (drain = the busiest one's {busiest:.2f} "
                f"CPU-s): {proj:,.0f} changes/s, {proj / base_proj:.2f}x",
                flush=True,
            )
            if c == 0:
                continue
            emit(
                f"scale_out_{c}",
                f"{rate:,.0f} changes/s ({r.deliveries / r.seconds:,.0f} deliveries/s), {_label(c)}",
                f"{_label(args.fanout[0])} {base_rate:,.0f} changes/s",
                round(rate / base_rate, 3),
                "grows with processes up to the core count",
                processes=c,
                changes=r.changes,
                core_per_process_changes_per_s=round(proj),
                core_per_process_ratio=round(proj / base_proj, 3),
                deliveries_per_relay_cpu_second=round(r.deliveries / total),
            )


def _label(c: int) -> str:
    if c == 0:
        return "embedded (no Redis, 1 process)"
    return f"cluster, {c} fan-out process{'es' if c > 1 else ''}"


if __name__ == "__main__":
    main()
