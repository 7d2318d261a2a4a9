"""Authorized fan-out: changes/s with many subscribers of distinct claims, against a baseline.

Not part of CI.  ``python bench/authz.py [--changes 5000] [--subscribers 500 5000]``

One run on a throwaway cluster (migrations + demo schema) with three policies on
``public.bookings`` — branch membership (``branch_id = (claims->>'branch_id')::int``), ownership
(``assignee_id = auth.uid()``) and a role grant (``claims->>'user_role' = 'admin'``).  Per phase:

1. a fresh slot and a relay streaming it; N WebSocket subscribers spread over ``--processes``
   client processes (the cheap client of bench/wsload.py; each reports its CPU), each with
   its own token (distinct ``sub``; 5 % admins, 15 % branch managers, 80 % plain users who see
   only the rows assigned to them), all joined to ``realtime:dash`` with a ``*`` binding on
   bookings — **live** subscribers, joined before the changes exist;
2. the bench takes the slot away from the relay (ends its walsender and holds the slot), writes
   a backlog of ``--changes`` single-row INSERTs (random branch, assignee drawn from the
   subscribers' user ids) and gives the slot back: the relay reconnects and drains the backlog
   through the live fan-out path (not the resume path), and the clock runs from the moment its
   stream is up again until every change was handed to the sockets and every frame was read;
3. the deliveries are checked against the count the policies imply (computed here from the
   claims): a bench that delivers nothing, or not what it should, fails instead of printing a rate.

The **baseline** is the same phase with one ``service_role`` subscriber (no policy work).
Prints changes/s, deliveries/s and the ratio to the baseline changes/s measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import random
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idle_sockets import raise_nofile
from tablerow import emit
from wsload import ClosedError, join_bookings, run_wait_seconds

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


@dataclass
class Audience:
    """Who may see a row, by the bench's three policies: to compute the expected deliveries."""

    admins: int = 0
    managers: dict[int, int] = field(default_factory=dict)  # branch -> managers of it
    roles: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # sub -> (kind, branch)

    def sees(self, branch: int, assignee: str | None) -> int:
        n = self.admins + self.managers.get(branch, 0)
        who = self.roles.get(assignee) if assignee else None
        if who is not None and who[0] == "plain":
            n += 1
        elif who is not None and who[0] == "manager" and who[1] != branch:
            n += 1  # a manager of another branch still sees rows assigned to them
        return n


def subscriber_tokens(
    n: int, branches: list[int], rng: random.Random
) -> tuple[list[str], list[str], list[tuple[str, int | None]]]:
    """Distinct claims: every subscriber has its own ``sub``; roles mixed as documented above."""
    tokens: list[str] = []
    users: list[str] = []
    kinds: list[tuple[str, int | None]] = []
    for i in range(n):
        sub = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        users.append(sub)
        kind = i % 20
        branch = branches[i % len(branches)]
        claims: dict[str, Any] = {"branch_id": branch}
        if kind == 0:
            claims = {"user_role": "admin"}
            kinds.append(("admin", None))
        elif kind <= 3:
            claims["user_role"] = "manager"
            kinds.append(("manager", branch))
        else:
            claims = {"assignee_only": True}  # a plain user: sees only rows assigned to it
            kinds.append(("plain", None))
        tokens.append(mint(SECRET, role="authenticated", sub=sub, ttl=7200, claims=claims))
    return tokens, users, kinds


def audience(users: list[str], kinds: list[tuple[str, int | None]]) -> Audience:
    a = Audience()
    for sub, (kind, branch) in zip(users, kinds, strict=True):
        a.roles[sub] = (kind, branch)
        if kind == "admin":
            a.admins += 1
        elif kind == "manager" and branch is not None:
            a.managers[branch] = a.managers.get(branch, 0) + 1
    return a


def make_backlog(dsn: str, n: int, users: list[str], rng: random.Random) -> list[tuple[int, str | None]]:
    """Write ``n`` single-row transactions; returns each row's (branch, assignee)."""
    rows: list[tuple[int, str | None]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        branches = [r[0] for r in conn.execute("select id from branches order by id")]
        client = conn.execute("select min(id) from clients").fetchone()
        assert client is not None
        conn.execute("set synchronous_commit = off")
        batch: list[str] = []
        for i in range(n):
            assignee = rng.choice(users) if users else None
            branch = rng.choice(branches)
            rows.append((branch, assignee))
            a = f"'{assignee}'" if assignee else "null"
            batch.append(
                "begin; insert into bookings (branch_id, client_id, assignee_id, service, status, "
                f"starts_at, ends_at, price) values ({branch}, {client[0]}, {a}, 'bench', "
                "'pending', now(), now() + interval '1 hour', 10); commit;"
            )
            if len(batch) == 200 or i == n - 1:
                conn.execute("".join(batch).encode())
                batch.clear()
    return rows


def take_slot(dsn: str, slot: str) -> psycopg.Connection[Any]:
    """End the relay's walsender and hold ``slot`` ourselves (the relay retries until it is free)."""
    deadline = time.monotonic() + 30
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = %s and active_pid is not null",
                (slot,),
            )
        blocker = psycopg.connect(dsn, autocommit=True, replication="database")
        try:
            blocker.execute(f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (\"format-version\" '2')")
            return blocker
        except psycopg.Error:
            blocker.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def clients_main(port: int, tokens: list[str], pipe: Connection) -> None:
    raise_nofile()
    asyncio.run(_clients(port, tokens, pipe))


async def _clients(port: int, tokens: list[str], pipe: Connection) -> None:
    """The cheap client of bench/wsload.py: counts change events without parsing them."""
    received = 0
    closed: list[str] = []  # sockets the relay closed: deliveries lost, the bench must fail now
    done = asyncio.Event()

    async def one(tok: str, ready: asyncio.Event) -> None:
        try:
            await _one(tok, ready)
        except (OSError, ClosedError, asyncio.IncompleteReadError) as exc:
            closed.append(repr(exc))
            ready.set()

    async def _one(tok: str, ready: asyncio.Event) -> None:
        nonlocal received
        c = await join_bookings(port, tok)
        ready.set()
        while not done.is_set():
            try:
                batch = await asyncio.wait_for(c.recv_batch(), 1)
            except TimeoutError:
                continue
            for data in batch:
                if b'"postgres_changes",{' in data[:200]:  # the event, not a system message's extension
                    received += 1
        c.close()

    readies = [asyncio.Event() for _ in tokens]
    tasks = [asyncio.create_task(one(t, r)) for t, r in zip(tokens, readies, strict=True)]
    for r in readies:
        await asyncio.wait_for(r.wait(), 120)
    pipe.send(("joined", len(tokens) - len(closed)))
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    while True:  # report counts on request, until told to stop
        cmd = await loop.run_in_executor(None, pipe.recv)
        if cmd == "count":
            pipe.send(("count", received, time.process_time() - cpu0, closed[:3], len(closed)))
        else:
            break
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(("count", received, time.process_time() - cpu0, closed[:3], len(closed)))


async def phase(
    dsn: str,
    slot: str,
    tokens: list[str],
    backlog: Callable[[], list[tuple[int, str | None]]],
    who: Audience | None,
    processes: int,
) -> tuple[float, int, int]:
    """Drain a backlog written while the relay was cut off to live subscribers.

    Returns (seconds, changes, deliveries); fails when the deliveries are not what the policies
    imply (``who`` None: every subscriber sees every change, as service_role).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
    # raised for the bench: a backlog is not a slow client; every subscriber is a connection
    cfg = Config(
        database_url=dsn,
        jwt_secret=SECRET,
        port=0,
        slot=slot,
        socket_queue_frames=1_000_000,
        max_connections=len(tokens) + 100,
        heartbeat_timeout=3600.0,  # the clients send no heartbeats; a 5,000-subscriber phase outlasts 60 s
    )
    relay = await start_relay(cfg)
    loop = asyncio.get_running_loop()
    ctx = mp.get_context("spawn")
    procs = min(len(tokens), processes)
    pipes: list[Connection] = []
    children = []
    try:
        for k in range(procs):  # several client processes: the load generator must not be the limit
            parent, child = ctx.Pipe()
            p = ctx.Process(target=clients_main, args=(relay.port, tokens[k::procs], child), daemon=True)
            p.start()
            pipes.append(parent)
            children.append(p)

        async def ask(cmd: str) -> list[tuple[Any, ...]]:
            for pipe in pipes:
                pipe.send(cmd)
            return [await loop.run_in_executor(None, pipe.recv) for pipe in pipes]

        joined = sum([(await loop.run_in_executor(None, pipe.recv))[1] for pipe in pipes])
        if joined != len(tokens):
            raise SystemExit(f"bench invalid: {joined} of {len(tokens)} subscribers joined")
        blocker = await loop.run_in_executor(None, take_slot, dsn, slot)
        rows = await loop.run_in_executor(None, backlog)
        expected = sum(who.sees(b, a) for b, a in rows) if who is not None else len(rows) * len(tokens)
        changes0, frames0 = relay.pipeline.stats.changes, relay.server.frames_queued
        flushes0 = getattr(relay.server.outbox, "flushes", 0)  # (a checkout without the counter: 0)
        blocker.close()
        while not relay.pipeline.stats.streaming:  # the relay's retry finds the slot free
            await asyncio.sleep(0.001)
        t0, relay_cpu0, wait0 = time.perf_counter(), time.process_time(), run_wait_seconds() or 0.0
        deadline = time.monotonic() + 600
        while relay.pipeline.stats.changes - changes0 < len(rows):
            assert time.monotonic() < deadline, "the relay did not decode the backlog"
            await asyncio.sleep(0.01)
        while True:  # every queued frame read by the clients
            queued = relay.server.frames_queued - frames0
            counts = await ask("count")
            got = sum(c[1] for c in counts)
            n_closed = sum(c[4] for c in counts)
            if n_closed:
                why = [w for c in counts for w in c[3]][:3]
                raise SystemExit(f"bench invalid: the relay closed {n_closed} subscriber sockets, e.g. {why}")
            if got >= expected or (queued >= expected and got >= queued):
                break
            assert time.monotonic() < deadline, f"clients read {got} of {expected} deliveries"
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        relay_cpu = time.process_time() - relay_cpu0
        relay_wait = (run_wait_seconds() or 0.0) - wait0
        client_cpu = [c[2] for c in counts]
        flushes = getattr(relay.server.outbox, "flushes", 0) - flushes0
        await ask("stop")
        if got == 0 or got != expected:
            raise SystemExit(
                f"bench invalid: {got} deliveries read for {len(rows)} changes, the policies imply "
                f"{expected} (queued {queued}): not printing a rate for it"
            )
        print(
            f"      CPU over the drain: relay {relay_cpu / elapsed:.0%} of a core; {procs} client "
            f"process(es) {sum(client_cpu) / elapsed:.0%} in total, busiest {max(client_cpu) / elapsed:.0%} "
            f"of a core; relay waited {relay_wait / elapsed:.0%} of the time for a CPU (run queue)"
        )
        # per delivery: less sensitive to the machine's load than the rate (the relay and the
        # clients share two cores with everything else running)
        writes = (
            f"; {flushes / len(rows):.1f} socket writes per change ({got / flushes:.1f} frames per write)"
            if flushes
            else ""
        )
        print(
            f"      per delivery: relay {relay_cpu / got * 1e6:.1f} us CPU, clients "
            f"{sum(client_cpu) / got * 1e6:.1f} us CPU{writes}"
        )
        return elapsed, len(rows), got
    finally:
        for p in children:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
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
        max_n = max(args.subscribers)
        tokens, users, kinds = subscriber_tokens(max_n, branches, rng)
        print(
            f"backlog: {args.changes} single-row transactions per phase; "
            f"policies: {', '.join(p for p, _ in POLICIES)}"
        )

        def backlog_for(n: int) -> Callable[[], list[tuple[int, str | None]]]:
            return lambda: make_backlog(dsn, args.changes, users[:n], rng)

        base_s, n_base, _ = await phase(
            dsn, "authz_base", [mint(SECRET, role="service_role")], backlog_for(max_n), None, args.processes
        )
        base_rate = n_base / base_s
        print(f"baseline (1 service_role subscriber, no policies): {base_rate:,.0f} changes/s")
        for n in args.subscribers:
            secs, n_changes, deliveries = await phase(
                dsn, f"authz_{n}", tokens[:n], backlog_for(n), audience(users[:n], kinds[:n]), args.processes
            )
            rate = n_changes / secs
            print(
                f"{n:>5} subscribers, distinct claims: {rate:,.0f} changes/s, {deliveries / secs:,.0f} "
                f"deliveries/s ({deliveries / n_changes:.1f} per change); "
                f"ratio to baseline {rate / base_rate:.2f}x"
            )
            emit(
                f"authz_{n}",
                f"{rate:,.0f} changes/s ({deliveries / secs:,.0f} deliveries/s)",
                f"1 service_role subscriber {base_rate:,.0f} changes/s",
                round(rate / base_rate, 3),
                ">= 5,000 changes/s" if n <= 500 else ">= 500 changes/s",
                subscribers=n,
                changes=n_changes,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--processes", type=int, default=4, help="client processes holding the subscribers")
    logging.basicConfig(level=logging.ERROR)  # the relay's expected "slot busy" retries are noise here
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
