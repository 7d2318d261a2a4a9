"""Idle sockets: relay memory per socket (from the relay's own RSS) and connect+join rate.

Not part of CI.  ``python bench/idle_sockets.py [--sockets 10000] [--processes 4]``

One run on a throwaway cluster (migrations + demo schema), the relay in this process (its RSS is
this process's: the clients live in other processes):

1. the relay's VmRSS is read once it runs (after a settle), the baseline;
2. ``--processes`` client processes (the cheap client of ``bench/wsload.py``) open ``--sockets``
   WebSockets in total, ``--concurrency`` at a time each; every socket has its own token
   (``authenticated``, a distinct ``sub``) and joins one channel with a ``postgres_changes``
   binding on ``public.bookings``; a join counts when its ``phx_reply`` says ``ok``;
3. joins/s = sockets joined ÷ (last join reply - first connect), over all processes;
4. after a settle, the relay's VmRSS again: KiB per socket = growth ÷ sockets; then every socket
   sends a heartbeat and must get its reply (the sockets are really alive), and the relay must
   count exactly ``--sockets`` connections.  Anything less fails the bench (non-zero exit).

Relay quotas raised for the bench (printed): ``RELAY_MAX_CONNECTIONS`` (default 10,000 would
refuse the last sockets of a 10,000 run plus nothing to spare) and ``RELAY_HEARTBEAT_TIMEOUT``
(idle sockets here send no heartbeats until the end).  Per-socket quotas (joins/s, channels) are
not hit: one join per socket.  Each process reports its CPU, next to the relay's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
import tracemalloc
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tablerow import emit
from wsload import ClosedError, WsClient, cpu_seconds, rss_kib, run_wait_seconds

from relay.config import Config
from relay.core.tokens import mint
from relay.gc_policy import tune_gc
from relay.postgres.cluster import LocalCluster
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import start_relay

SECRET = "bench-idle-secret-0123456789-0123456789"
PATH = "/realtime/v1/websocket"
JOIN = (
    '{{"topic":"realtime:idle","event":"phx_join","ref":"1","join_ref":"1","payload":{{"config":'
    '{{"postgres_changes":[{{"event":"*","schema":"public","table":"bookings"}}]}},"access_token":"{tok}"}}}}'
)
HEARTBEAT = '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}'


def raise_nofile() -> None:
    """Sockets are file descriptors: use the hard limit (20,000 here) in every process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def clients_main(port: int, tokens: list[str], concurrency: int, pipe: Connection) -> None:
    try:
        raise_nofile()
        asyncio.run(_clients(port, tokens, concurrency, pipe))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


async def _reply(c: WsClient, ref: bytes, limit: float) -> bytes:
    """The ``phx_reply`` to ``ref`` (other frames — system messages — are skipped, bounded)."""
    for _ in range(20):
        data = await asyncio.wait_for(c.recv(), limit)
        if b'"phx_reply"' in data and b'"ref":"' + ref + b'"' in data:
            return data
    raise RuntimeError("no reply within 20 frames")


async def _clients(port: int, tokens: list[str], concurrency: int, pipe: Connection) -> None:
    sem = asyncio.Semaphore(concurrency)
    socks: list[WsClient] = []
    failures: list[str] = []

    async def one(tok: str) -> None:
        async with sem:
            try:
                c = await WsClient.connect("127.0.0.1", port, PATH, {"apikey": tok, "vsn": "1.0.0"})
                c.send_text(JOIN.format(tok=tok))
                data = await _reply(c, b"1", 60)
                if b'"status":"ok"' in data:
                    socks.append(c)
                else:
                    failures.append(data[:300].decode(errors="replace"))
                    c.close()
            except (OSError, ClosedError, RuntimeError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failures.append(repr(exc))

    cpu0, t0 = time.process_time(), time.time()
    await asyncio.gather(*(one(t) for t in tokens))
    t1 = time.time()
    pipe.send(("joined", len(socks), len(failures), failures[:3], t0, t1, time.process_time() - cpu0))
    loop = asyncio.get_running_loop()
    cmd = await loop.run_in_executor(None, pipe.recv)  # idle until the relay's RSS was read
    assert cmd == "check"
    alive = 0

    async def beat(c: WsClient) -> None:
        nonlocal alive
        async with sem:
            try:
                c.send_text(HEARTBEAT)
                if b'"status":"ok"' in await _reply(c, b"hb", 60):
                    alive += 1
            except (OSError, ClosedError, RuntimeError, TimeoutError, asyncio.IncompleteReadError):
                pass

    await asyncio.gather(*(beat(c) for c in socks))
    pipe.send(("alive", alive, rss_kib()))
    cmd = await loop.run_in_executor(None, pipe.recv)  # close when told: the relay's teardown is timed
    for c in socks:
        c.close()


def _recv(pipe: Connection, what: str, limit: float) -> tuple[Any, ...]:
    if not pipe.poll(limit):
        raise SystemExit(f"bench invalid: timed out waiting for {what}")
    msg = pipe.recv()
    if msg[0] == "error":
        raise SystemExit(f"bench invalid: a client process failed: {msg[1]}")
    return tuple(msg)


FLOOR_REPLY = '{"topic":"realtime:idle","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":%s}'


def floor_main(max_msg_size: int, pipe: Connection) -> None:
    """A bare aiohttp WebSocket server in its own process: the floor the relay is compared with.

    Same aiohttp, same ``WebSocketResponse`` settings as the relay, a handler that parses each
    text frame (orjson) and answers it with one ``phx_reply`` ok: no token, no channel, no
    bookkeeping.  What it costs per socket (RSS) and per connect + join (rate, CPU) is what
    aiohttp and asyncio cost before any line of the relay runs.
    """
    try:
        raise_nofile()
        asyncio.run(_floor(max_msg_size, pipe))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


async def _floor(max_msg_size: int, pipe: Connection) -> None:
    import orjson
    from aiohttp import WSMsgType, web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=max_msg_size, compress=False, autoping=True, heartbeat=None)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                ref = orjson.loads(msg.data).get("ref")
                await ws.send_str(FLOOR_REPLY % orjson.dumps(ref).decode())
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    loop = asyncio.get_running_loop()
    await asyncio.sleep(1.0)
    gc.collect()
    pipe.send(("ready", port, rss_kib()))
    for _ in range(10):  # bounded: "measure" (after the joins), then "stop"
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd == "measure":
            pipe.send(("rss", rss_kib(), cpu_seconds() or 0.0, run_wait_seconds() or 0.0))
        elif cmd == "cpu":
            pipe.send(("cpu", cpu_seconds() or 0.0, run_wait_seconds() or 0.0))
        else:
            break
    await runner.cleanup()


class Clients:
    """``--processes`` client processes holding ``tokens`` sockets on one server (relay or floor)."""

    def __init__(self, port: int, tokens: list[str], args: argparse.Namespace) -> None:
        ctx = mp.get_context("spawn")
        self.n = len(tokens)
        self.children: list[tuple[Connection, Any]] = []
        for k in range(args.processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=clients_main,
                args=(port, tokens[k :: args.processes], args.concurrency, child),
                daemon=True,
            )
            p.start()
            self.children.append((parent, p))

    async def ask(self, what: str, limit: float, say: str | None = None) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        if say is not None:
            for parent, _ in self.children:
                parent.send(say)
        return [await loop.run_in_executor(None, _recv, parent, what, limit) for parent, _ in self.children]

    def tell(self, cmd: str) -> None:
        for parent, _ in self.children:
            parent.send(cmd)

    def stop(self) -> None:
        for _, p in self.children:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)


def _joined(results: list[tuple[Any, ...]]) -> tuple[int, int, float, list[float]]:
    """(sockets joined, failed, span from first connect to last reply, CPU per client process)."""
    span = max(r[5] for r in results) - min(r[4] for r in results)
    return sum(r[1] for r in results), sum(r[2] for r in results), span, [r[6] for r in results]


async def floor_phase(args: argparse.Namespace, tokens: list[str], max_msg_size: int) -> dict[str, Any]:
    """The same clients against a bare aiohttp server (``floor_main``), in the same run."""
    loop = asyncio.get_running_loop()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=floor_main, args=(max_msg_size, child), daemon=True)
    server.start()
    clients: Clients | None = None
    try:
        _, port, rss0 = await loop.run_in_executor(None, _recv, parent, "the floor server", 60)
        parent.send("cpu")
        _, cpu0, wait0 = await loop.run_in_executor(None, _recv, parent, "the floor server", 60)
        clients = Clients(port, tokens, args)
        results = await clients.ask("the clients to join (floor)", 600)
        parent.send("cpu")
        _, cpu1, wait1 = await loop.run_in_executor(None, _recv, parent, "the floor server", 60)
        await asyncio.sleep(2.0)
        parent.send("measure")
        _, rss1, _, _ = await loop.run_in_executor(None, _recv, parent, "the floor server", 60)
        checks = await clients.ask("the heartbeats (floor)", 600, say="check")
        clients.tell("close")
    finally:
        if clients is not None:
            clients.stop()
        parent.send("stop")
        server.join(30)
        if server.is_alive():
            server.terminate()
            server.join(5)
    joined, _, span, client_cpu = _joined(results)
    n = len(tokens)
    alive = sum(c[1] for c in checks)
    if joined != n or alive != n:
        raise SystemExit(f"bench invalid: floor server: {joined} joined, {alive} alive of {n}")
    return {
        "kib": (rss1 - rss0) / n,
        "rss0": rss0,
        "rss1": rss1,
        "rate": joined / span,
        "span": span,
        "cpu": cpu1 - cpu0,
        "wait": wait1 - wait0,
        "client_cpu": client_cpu,
    }


async def main_async(args: argparse.Namespace) -> int:
    n, procs = args.sockets, args.processes
    with LocalCluster() as pg:
        dsn = pg.dsn()
        apply_migrations(dsn)
        apply_demo_schema(dsn)
        cfg = Config(
            database_url=dsn,
            jwt_secret=SECRET,
            port=0,
            log_level="WARNING",
            max_connections=n + 100,
            heartbeat_timeout=3600.0,
        )
        print(
            f"relay config raised for the bench: RELAY_MAX_CONNECTIONS={cfg.max_connections}, "
            f"RELAY_HEARTBEAT_TIMEOUT={cfg.heartbeat_timeout:.0f}"
        )
        tokens = [
            mint(SECRET, role="authenticated", sub=str(uuid.uuid4()), ttl=7200, claims={}) for _ in range(n)
        ]
        floor = await floor_phase(args, tokens, cfg.max_frame_bytes * 4) if args.floor else None
        relay = await start_relay(cfg)
        tune_gc()  # as `relay serve` does once started
        clients: Clients | None = None
        try:
            await asyncio.sleep(1.0)
            gc.collect()
            if args.tracemalloc:
                tracemalloc.start(args.tracemalloc_depth)
                snap0 = tracemalloc.take_snapshot()
            rss0 = rss_kib()
            cpu0, wait0 = cpu_seconds() or 0.0, run_wait_seconds() or 0.0
            clients = Clients(relay.port, tokens, args)
            results = await clients.ask("the clients to join", 600)
            relay_cpu = (cpu_seconds() or 0.0) - cpu0
            relay_wait = (run_wait_seconds() or 0.0) - wait0
            joined, failed, span, client_cpu = _joined(results)
            await asyncio.sleep(2.0)  # settle: anything the joins left for later
            rss1 = rss_kib()
            if args.tracemalloc:
                gc.collect()
                growth = tracemalloc.take_snapshot().compare_to(snap0, "traceback")
                tracemalloc.stop()
                traced = sum(d.size_diff for d in growth)
                print(f"tracemalloc: Python heap grew {traced / 1024 / n:.1f} KiB per socket; top sites:")
                for d in growth[: args.tracemalloc]:
                    print(f"  {d.size_diff / n:8.0f} B/socket  {d.count_diff / n:5.1f} blocks/socket")
                    for line in d.traceback.format()[-2 * args.tracemalloc_depth :]:
                        print(f"      {line}")
            on_relay = len(relay.server.connections)
            channels = sum(len(c.channels) for c in relay.server.connections)
            checks = await clients.ask("the heartbeats", 600, say="check")
            alive = sum(c[1] for c in checks)
            client_rss = [c[2] / 1024 for c in checks]
            # the clients close every socket after the check: how long the relay takes to let go
            t_close = time.monotonic()
            clients.tell("close")
            for _ in range(60_000):  # bounded: at most 600 s
                if not relay.server.connections:
                    break
                await asyncio.sleep(0.01)
            close_s = time.monotonic() - t_close
            left = len(relay.server.connections)
        finally:
            if clients is not None:
                clients.stop()
            await relay.stop()

    per_socket = (rss1 - rss0) / max(1, n)
    rate = joined / span if span > 0 else 0.0
    print(f"sockets: {n} in {procs} client processes, {args.concurrency} connecting at a time each")
    print(
        f"joined: {joined} (failed {failed}); on the relay: {on_relay} connections, {channels} channels; "
        f"alive at the end (heartbeat answered): {alive}"
    )
    for r in results:
        for f in r[3]:
            print(f"  failure: {f}")
    print(f"relay RSS: {rss0 / 1024:.1f} MiB with 0 sockets -> {rss1 / 1024:.1f} MiB with {n}")
    print(f"    = {per_socket:.1f} KiB per socket (aim <= 16 KiB)")
    print(f"connect + join: {joined} in {span:.2f}s = {rate:,.0f} joins/s (aim >= 3,000)")
    print(
        f"    CPU while joining: relay {relay_cpu:.2f}s ({relay_cpu / span:.0%} of a core, "
        f"{relay_cpu / max(1, joined) * 1e6:.0f} µs per join); clients "
        f"{sum(client_cpu):.2f}s in {procs} processes (busiest {max(client_cpu) / span:.0%} of a core); "
        f"client RSS {', '.join(f'{x:.0f}' for x in client_rss)} MiB; relay waited "
        f"{relay_wait / span:.0%} of the time for a CPU (run queue)"
    )
    if floor is not None:
        print(
            f"floor, same run (bare aiohttp WebSocket server, same clients): {floor['rss0'] / 1024:.1f} -> "
            f"{floor['rss1'] / 1024:.1f} MiB = {floor['kib']:.1f} KiB per socket; "
            f"{floor['rate']:,.0f} joins/s, {floor['cpu'] / floor['span']:.0%} of a core "
            f"({floor['cpu'] / n * 1e6:.0f} µs per join), "
            f"waited {floor['wait'] / floor['span']:.0%} for a CPU"
        )
        print(
            f"    relay / floor: memory {per_socket / floor['kib']:.2f}x "
            f"(+{per_socket - floor['kib']:.1f} KiB per socket are the relay's), "
            f"joins/s {rate / floor['rate']:.2f}x, CPU per join {relay_cpu / floor['cpu']:.2f}x"
        )
    print(
        f"teardown: {n - left} of {n} sockets released by the relay {close_s:.2f}s after the clients "
        f"closed them ({(n - left) / close_s:,.0f}/s)"
    )
    if args.tracemalloc:
        print("(--tracemalloc slows the relay and adds its own memory: no table rows from this run)")
        return 0 if joined == n == alive else 1
    if joined != n or alive != n or on_relay != n or channels != n:
        print(
            f"bench invalid: {joined} joined, {alive} alive, {on_relay} connections and {channels} channels "
            f"on the relay for {n} sockets: not printing a figure"
        )
        return 1
    floor_mem = f"; bare aiohttp floor {floor['kib']:.1f} KiB/socket" if floor is not None else ""
    floor_rate = f"; bare aiohttp floor {floor['rate']:,.0f} joins/s" if floor is not None else ""
    emit(
        "idle_memory",
        f"{per_socket:.1f} KiB/socket",
        f"relay RSS {rss0 / 1024:.1f} MiB with 0 sockets{floor_mem}",
        round(per_socket / floor["kib"], 2) if floor is not None else None,
        "<= 16 KiB/socket",
        sockets=n,
    )
    emit(
        "joins",
        f"{rate:,.0f} joins/s",
        f"relay CPU {relay_cpu / span:.0%} of a core, busiest client process {max(client_cpu) / span:.0%}"
        f"{floor_rate}",
        round(rate / floor["rate"], 2) if floor is not None else None,
        ">= 3,000 joins/s",
        sockets=n,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=max(2, (os.cpu_count() or 2) * 2))
    ap.add_argument("--concurrency", type=int, default=100, help="connects in flight per client process")
    ap.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="N",
        help="print the N biggest allocation sites of the growth",
    )
    ap.add_argument("--tracemalloc-depth", type=int, default=4, help="frames per allocation site")
    ap.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the same-run floor (a bare aiohttp WebSocket server with the same clients)",
    )
    args = ap.parse_args(argv)
    if args.sockets < 1 or args.processes < 1 or args.concurrency < 1:
        ap.error("need positive --sockets, --processes and --concurrency")
    logging.basicConfig(level=logging.ERROR)
    raise_nofile()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
