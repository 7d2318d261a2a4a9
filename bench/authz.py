"""Authorized fan-out: changes/s with many subscribers of distinct claims, against a baseline.

Not part of CI.  ``python bench/authz.py [--changes 5000] [--subscribers 500 5000]``

One run on a throwaway cluster (migrations + demo schema) with three policies on
``public.bookings`` — branch membership (``branch_id = (claims->>'branch_id')::int``), ownership
(``assignee_id = auth.uid()``) and a role grant (``claims->>'user_role' = 'admin'``):

1. one slot per phase is created, then a backlog of ``--changes`` single-row INSERTs (random
   branch, assignee drawn from the subscribers' user ids);
2. **baseline**: the relay drains slot 0 to one ``service_role`` subscriber (no policy work);
3. for each subscriber count N: N WebSocket subscribers in a separate process, each with its
   own token (distinct ``sub``; 80 % plain users of one branch who may see their branch's rows
   or their own, 15 % branch managers, 5 % admins), all joined to ``realtime:dash`` with a ``*``
   binding on bookings; the relay drains its slot and the clock runs from the moment its stream
   starts until every change was handed to the sockets and every frame was read by the clients.

Prints changes/s, deliveries/s and the ratio to the baseline changes/s measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import sys
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relay.config import Config
from relay.core.tokens import mint
from relay.postgres.cluster import LocalCluster
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import start_relay

SECRET = "bench-authz-secret-0123456789-0123456789"
POLICIES = [
    ("branch", "branch_id = (claims->>'branch_id')::int"),
    ("assignee", "assignee_id = auth.uid()"),
    ("admins", "claims->>'user_role' = 'admin'"),
]


def subscriber_tokens(n: int, branches: list[int], rng: random.Random) -> tuple[list[str], list[str]]:
    """Distinct claims: every subscriber has its own ``sub``; roles mixed as documented above."""
    tokens, users = [], []
    for i in range(n):
        sub = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        users.append(sub)
        kind = i % 20
        claims: dict[str, Any] = {"branch_id": branches[i % len(branches)]}
        if kind == 0:
            claims = {"user_role": "admin"}
        elif kind <= 3:
            claims["user_role"] = "manager"
        else:
            claims = {"assignee_only": True}  # a plain user: sees only rows assigned to it
        tokens.append(mint(SECRET, role="authenticated", sub=sub, ttl=7200, claims=claims))
    return tokens, users


def make_backlog(dsn: str, n: int, users: list[str], rng: random.Random) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        branches = [r[0] for r in conn.execute("select id from branches order by id")]
        client = conn.execute("select min(id) from clients").fetchone()
        assert client is not None
        conn.execute("set synchronous_commit = off")
        batch: list[str] = []
        for i in range(n):
            assignee = rng.choice(users) if users else None
            a = f"'{assignee}'" if assignee else "null"
            batch.append(
                "begin; insert into bookings (branch_id, client_id, assignee_id, service, status, "
                f"starts_at, ends_at, price) values ({rng.choice(branches)}, {client[0]}, {a}, 'bench', "
                "'pending', now(), now() + interval '1 hour', 10); commit;"
            )
            if len(batch) == 200 or i == n - 1:
                conn.execute("".join(batch).encode())
                batch.clear()


def clients_main(url: str, tokens: list[str], pipe: Connection) -> None:
    asyncio.run(_clients(url, tokens, pipe))


async def _clients(url: str, tokens: list[str], pipe: Connection) -> None:
    received = 0
    done = asyncio.Event()

    async def one(session: aiohttp.ClientSession, tok: str, ready: asyncio.Event) -> None:
        nonlocal received
        async with session.ws_connect(url, params={"apikey": tok, "vsn": "2.0.0"}, max_msg_size=0) as ws:
            await ws.send_str(
                '["1","1","realtime:dash","phx_join",{"config":{"postgres_changes":'
                '[{"event":"*","schema":"public","table":"bookings"}]}}]'
            )
            await ws.receive(timeout=30)
            ready.set()
            while not done.is_set():
                try:
                    msg = await ws.receive(timeout=1)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                if '"postgres_changes"' in msg.data[:200]:
                    received += 1

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        readies = [asyncio.Event() for _ in tokens]
        tasks = [asyncio.create_task(one(session, t, r)) for t, r in zip(tokens, readies, strict=True)]
        for r in readies:
            await asyncio.wait_for(r.wait(), 60)
        pipe.send(("joined", len(tokens)))
        loop = asyncio.get_running_loop()
        while True:  # report counts on request, until told to stop
            cmd = await loop.run_in_executor(None, pipe.recv)
            if cmd == "count":
                pipe.send(("count", received))
            else:
                break
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        pipe.send(("count", received))


async def phase(dsn: str, slot: str, tokens: list[str], n_changes: int) -> tuple[float, int]:
    """Drain ``slot`` to the given subscribers; returns (seconds, deliveries)."""
    cfg = Config(database_url=dsn, jwt_secret=SECRET, port=0, slot=slot, socket_queue_frames=1_000_000)
    # hold the slot until every subscriber has joined (the relay retries until it is free)
    blocker = psycopg.connect(dsn, autocommit=True, replication="database")
    blocker.execute(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (\"format-version\" '2')")
    relay = await start_relay(cfg, wait_ready=False)
    try:
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(
            target=clients_main, args=(relay.url + "/websocket", tokens, child)
        )
        proc.start()
        loop = asyncio.get_running_loop()
        assert (await loop.run_in_executor(None, parent.recv))[0] == "joined"
        blocker.close()
        await asyncio.wait_for(relay.pipeline.ready.wait(), 60)
        t0 = time.perf_counter()
        while relay.pipeline.stats.changes < n_changes:
            await asyncio.sleep(0.01)
        expected = relay.server.frames_queued
        while True:  # every queued frame read by the clients
            parent.send("count")
            got = (await loop.run_in_executor(None, parent.recv))[1]
            if got >= expected:
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        parent.send("stop")
        await loop.run_in_executor(None, parent.recv)
        proc.join(30)
        return elapsed, expected
    finally:
        await relay.stop()


async def main_async(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    with LocalCluster() as pg:
        dsn = pg.dsn()
        apply_migrations(dsn)
        apply_demo_schema(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            branches = [r[0] for r in conn.execute("select id from branches order by id")]
            conn.execute("delete from realtime.row_policies")  # the bench states its own policies
            for name, expr in POLICIES:
                conn.execute("select realtime.create_policy('public.bookings', %s, %s)", (name, expr))
            slots = ["authz_base"] + [f"authz_{n}" for n in args.subscribers]
            for s in slots:
                conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (s,))
        max_n = max(args.subscribers)
        tokens, users = subscriber_tokens(max_n, branches, rng)
        make_backlog(dsn, args.changes, users[: max(args.subscribers)], rng)
        print(
            f"backlog: {args.changes} single-row transactions; policies: {', '.join(p for p, _ in POLICIES)}"
        )
        base_s, _ = await phase(dsn, "authz_base", [mint(SECRET, role="service_role")], args.changes)
        base_rate = args.changes / base_s
        print(f"baseline (1 service_role subscriber, no policies): {base_rate:,.0f} changes/s")
        for n in args.subscribers:
            secs, deliveries = await phase(dsn, f"authz_{n}", tokens[:n], args.changes)
            rate = args.changes / secs
            print(
                f"{n:>5} subscribers, distinct claims: {rate:,.0f} changes/s, {deliveries / secs:,.0f} "
                f"deliveries/s ({deliveries / args.changes:.1f} per change); "
                f"ratio to baseline {rate / base_rate:.2f}x"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[500, 5000])
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
