"""Property (issue 18): snapshot + later changes, applied by ``LiveTable``, equal the table.

A writer updates, deletes, inserts and re-keys rows continuously while SDK clients join at
random moments with snapshots, each with a random filter and random claims under policies
evaluated in the relay (``grp`` in an array claim, ``val`` under a claim) and in Postgres
(``val % 7`` against a claim, which the relay cannot compile); some clients go through a proxy
that drops their connections at random moments, during snapshots too.  Then, for each client:

- its ``LiveTable.rows`` equals the table's content restricted to its filter and policies at a
  commit after the writer stopped — the client has seen that commit: a fence row committed last
  for it (one that its filter and policies let through) is in its rows, and changes arrive in
  commit order;
- after each snapshot marker, every change it received has a position after the marker and
  after the previous change (nothing the snapshot already held, nothing twice).

Seeded and bounded (``RELAY_LIVE_SEEDS`` to widen: a comma-separated list of seeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from relay_client import (
    Change,
    LiveTable,
    RelayClient,
    ResyncNeeded,
    SnapshotComplete,
    SnapshotError,
    SnapshotRow,
)

from relay.postgres.migrate import apply_migrations
from tests.sdk.helpers import until, url
from tests.support.relay import running_relay, token
from tests.support.tcp_proxy import FaultProxy

pytestmark = pytest.mark.pg

TABLE = "snap_items"
GROUPS = (1, 2, 3, 4)
SEEDS = [int(s) for s in os.environ.get("RELAY_LIVE_SEEDS", "18,1818").split(",")]

SETUP = [
    f"create table public.{TABLE} (id bigint primary key, grp int not null, val int not null, note text)",
    f"create index on public.{TABLE} (grp)",
    f"select realtime.enable_table('public.{TABLE}')",
    # in the relay: an array claim, a scalar claim
    f"select realtime.create_policy('public.{TABLE}', 'my groups', "
    "$$grp = any (select jsonb_array_elements_text(claims->'grps')::int)$$)",
    f"select realtime.create_policy('public.{TABLE}', 'small values', $$val <= (claims->>'max_val')::int$$)",
    # in Postgres: an expression the relay does not compile
    f"select realtime.create_policy('public.{TABLE}', 'residue', $$val % 7 = (claims->>'mod7')::int$$)",
]


# -- what each client may see, in Python ------------------------------------------------------------
Row = dict[str, Any]
Pred = Callable[[Row], bool]


@dataclass
class Subscriber:
    """One client's filter and claims, and the Python predicates they stand for."""

    name: str
    filter: str | None
    matches: Pred
    role: str
    claims: dict[str, Any]
    flaky: bool  # through the proxy that drops connections

    def visible(self, row: Row) -> bool:
        if self.role == "service_role":
            return True
        c = self.claims
        return (
            row["grp"] in c.get("grps", [])
            or ("max_val" in c and row["val"] <= c["max_val"])
            or ("mod7" in c and row["val"] % 7 == c["mod7"])
        )

    def sees(self, row: Row) -> bool:
        return self.matches(row) and self.visible(row)


def random_filter(rng: random.Random) -> tuple[str | None, Pred]:
    kind = rng.randrange(7)
    k = rng.randrange(10, 90)
    a, b = sorted(rng.sample(GROUPS, 2))
    if kind == 0:
        return None, lambda r: True
    if kind == 1:
        return f"val=gt.{k}", lambda r: r["val"] > k
    if kind == 2:
        return f"val=lte.{k}", lambda r: r["val"] <= k
    if kind == 3:
        return f"grp=in.({a},{b})", lambda r: r["grp"] in (a, b)
    if kind == 4:
        return f"grp=neq.{a}", lambda r: r["grp"] != a
    if kind == 5:
        lo, hi = sorted(rng.sample(range(100), 2))
        return f"val=gte.{lo},val=lt.{hi}", lambda r: lo <= r["val"] < hi
    return f"grp=eq.{a}", lambda r: r["grp"] == a


def random_subscriber(rng: random.Random, i: int) -> Subscriber:
    while True:
        flt, pred = random_filter(rng)
        if rng.random() < 0.15:
            role, claims = "service_role", dict[str, Any]()
        else:
            role, claims = "authenticated", dict[str, Any](grps=rng.sample(GROUPS, rng.randrange(0, 3)))
            if rng.random() < 0.4:
                claims["max_val"] = rng.randrange(0, 100)
            if rng.random() < 0.4:
                claims["mod7"] = rng.randrange(7)
        sub = Subscriber(f"live-{i}", flt, pred, role, claims, flaky=rng.random() < 0.4)
        if fence_for(sub) is not None:  # it can see at least one possible row: it has a fence
            return sub


def fence_for(sub: Subscriber) -> tuple[int, int] | None:
    """A (grp, val) this subscriber sees: its fence row is one."""
    for grp in GROUPS:
        for val in range(100):
            if sub.sees({"grp": grp, "val": val}):
                return grp, val
    return None


# -- the writer -----------------------------------------------------------------------------------
class Writer:
    """Random inserts, updates (value, group, key) and deletes, 1-3 per transaction, from a thread."""

    def __init__(self, dsn: str, rng: random.Random, next_id: int, max_seconds: float) -> None:
        self.dsn = dsn
        self.rng = rng
        self.next_id = next_id
        self.max_seconds = max_seconds
        self.ids: list[int] = []
        self.transactions = 0
        self.ops: list[tuple[int, str, int, Any]] = []  # (transaction, what, id, value): for reports
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-writer", daemon=True)

    def _op(self, conn: psycopg.Connection[Any]) -> None:
        rng = self.rng
        roll = rng.random()
        if not self.ids or roll < 0.3:
            self.next_id += 1
            grp, val = rng.choice(GROUPS), rng.randrange(100)
            conn.execute(
                f"insert into {TABLE} values (%s, %s, %s, %s)", (self.next_id, grp, val, f"n{self.next_id}")
            )
            self.ids.append(self.next_id)
            self.ops.append((self.transactions, "insert", self.next_id, (grp, val)))
            return
        victim = rng.choice(self.ids)
        if roll < 0.55:
            val = rng.randrange(100)
            conn.execute(f"update {TABLE} set val = %s where id = %s", (val, victim))
            self.ops.append((self.transactions, "val", victim, val))
        elif roll < 0.7:
            grp = rng.choice(GROUPS)
            conn.execute(f"update {TABLE} set grp = %s where id = %s", (grp, victim))
            self.ops.append((self.transactions, "grp", victim, grp))
        elif roll < 0.78:
            self.next_id += 1
            conn.execute(f"update {TABLE} set id = %s where id = %s", (self.next_id, victim))
            self.ids[self.ids.index(victim)] = self.next_id
            self.ops.append((self.transactions, "rekey", victim, self.next_id))
        elif roll < 0.85:
            conn.execute(f"update {TABLE} set note = %s where id = %s", (f"t{self.transactions}", victim))
            self.ops.append((self.transactions, "note", victim, None))
        else:
            conn.execute(f"delete from {TABLE} where id = %s", (victim,))
            self.ids.remove(victim)
            self.ops.append((self.transactions, "delete", victim, None))

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            with psycopg.connect(self.dsn) as conn:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    for _ in range(self.rng.randrange(1, 4)):
                        self._op(conn)
                    conn.commit()
                    self.transactions += 1
                    self._stop.wait(0.015)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> Writer:
        self._thread.start()
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)
        assert not self._thread.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error


def table_rows(dsn: str) -> list[Row]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"select id, grp, val, note from {TABLE}")
        return [{"id": r[0], "grp": r[1], "val": r[2], "note": r[3]} for r in cur.fetchall()]


def execute(dsn: str, sql: str, args: tuple[Any, ...] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, args)  # (no args: a '%' in the SQL is an operator, not a placeholder)


# -- one client -------------------------------------------------------------------------------------
@dataclass
class Joined:
    sub: Subscriber
    client: RelayClient
    live: LiveTable
    events: list[Any] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


async def join(
    sub: Subscriber, relay_port: int, proxy_port: int, hb_interval: float = 15.0, timeout: float = 10.0
) -> Joined:
    port = proxy_port if sub.flaky else relay_port
    tok = token(sub.role, **sub.claims)
    client = RelayClient(
        url(port), tok, initial_backoff=0.05, max_backoff=0.5, timeout=timeout, hb_interval=hb_interval
    )
    channel = client.channel(sub.name)
    live = LiveTable(channel, TABLE, filter=sub.filter)
    joined = Joined(sub, client, live)
    stream = channel.changes(snapshot=True, resync=True)

    async def read() -> None:
        async for item in stream:
            joined.events.append(item)

    joined.reader = asyncio.create_task(read())
    await channel.subscribe(timeout=20)
    return joined


def check_positions(j: Joined) -> None:
    """After each marker: positions after the marker's and strictly increasing."""
    last: str | None = None
    for item in j.events:
        if isinstance(item, SnapshotError):
            raise AssertionError(f"{j.sub.name}: snapshot failed: {item!r} ({item.code})")
        if isinstance(item, SnapshotComplete):
            last = item.position
        elif isinstance(item, SnapshotRow):
            continue
        elif isinstance(item, Change):
            if last is not None:
                assert item.position > last, f"{j.sub.name}: {item.type} at {item.position} not after {last}"
            last = item.position


def trace(j: Joined, k: int) -> list[str]:
    """What the client received about row ``k`` (for failure reports)."""
    out = []
    for item in j.events:
        if isinstance(item, SnapshotComplete):
            out.append(f"marker {item.position}")
        elif isinstance(item, SnapshotRow | Change):
            rows = [item.record, item.old_record]
            if any(r.get("id") == k for r in rows):
                pos = getattr(item, "position", "")
                out.append(
                    f"{item.type}{' moved_out' if getattr(item, 'moved_out', False) else ''} {pos} {rows}"
                )
        elif isinstance(item, ResyncNeeded):
            out.append(f"resync {item.position}")
    return out


def _holds(live: LiveTable, keys: set[tuple[Any, ...]]) -> Callable[[], bool]:
    return lambda: keys <= live.rows.keys()


async def prepare(dsn: str, rng: random.Random, initial: int = 60) -> None:
    await asyncio.to_thread(apply_migrations, dsn)
    for sql in SETUP:
        await asyncio.to_thread(execute, dsn, sql)
    for i in range(1, initial + 1):
        await asyncio.to_thread(
            execute, dsn, f"insert into {TABLE} values (%s, %s, %s, %s)",
            (i, rng.choice(GROUPS), rng.randrange(100), None if i % 5 == 0 else f"r{i}"),
        )  # fmt: skip


async def compare(dsn: str, joined: list[Joined], writer: Writer) -> list[str]:
    """Fences, then each client's rows against the table: the failures, described."""
    # A fence per client, committed after everything else: once a client holds every fence it
    # may see, it has seen every commit before them (changes come in commit order).
    fence_id = 1_000_000
    for j in joined:
        place = fence_for(j.sub)
        assert place is not None
        fence_id += 1
        await asyncio.to_thread(
            execute, dsn, f"insert into {TABLE} values (%s, %s, %s, 'fence')", (fence_id, *place)
        )
    final = await asyncio.to_thread(table_rows, dsn)
    failures: list[str] = []
    for j in joined:
        expected = {(r["id"],): r for r in final if j.sub.sees(r)}
        fences = {k for k, r in expected.items() if r["note"] == "fence"}
        assert fences, f"{j.sub.name} sees no fence"
        who = (
            f"{j.sub.name} filter={j.sub.filter!r} role={j.sub.role} claims={j.sub.claims} "
            f"flaky={j.sub.flaky} snapshots={j.live.snapshots} resyncs={j.live.channel.stats.resyncs}"
        )
        try:
            await until(_holds(j.live, fences), 30, "fences")
        except AssertionError:
            failures.append(f"{who}: fences {sorted(fences - j.live.rows.keys())} never arrived")
        got = j.live.rows
        missing = sorted(k for k in expected if k not in got)
        extra = sorted(k for k in got if k not in expected)
        wrong = sorted(k for k in expected if k in got and got[k] != expected[k])
        if missing or extra or wrong:
            failures.append(
                f"{who}: missing {missing[:10]}, extra {extra[:10]}, "
                f"wrong {[(k, got[k], expected[k]) for k in wrong[:5]]}"
            )
            for (k,) in (missing + extra + wrong)[:3]:
                failures.append(f"  {k}: writer {[o for o in writer.ops if k in (o[2], o[3])]}")
                failures.append(f"  {k}: client {trace(j, k)}")
        if not j.live.ready or j.live.skipped:
            failures.append(f"{who}: ready={j.live.ready} skipped={j.live.skipped}")
        try:
            check_positions(j)
        except AssertionError as exc:
            failures.append(f"{who}: {exc}")
    return failures


async def all_ready(joined: list[Joined], timeout: float = 60.0) -> None:
    """Every LiveTable loaded; if not, say how far each got."""
    try:
        async with asyncio.timeout(timeout):
            for j in joined:
                await j.live.wait_ready()
    except TimeoutError:
        raise AssertionError(
            "not ready: "
            + "; ".join(
                f"{j.sub.name} flaky={j.sub.flaky} {j.live!r} {j.live.channel.stats} {j.client.status}"
                for j in joined
                if not j.live.ready
            )
        ) from None


async def close_all(joined: list[Joined]) -> None:
    for j in joined:
        await j.client.close()
        if j.reader is not None:
            j.reader.cancel()
            await asyncio.gather(j.reader, return_exceptions=True)


@pytest.mark.parametrize("seed", SEEDS)
async def test_live_tables_equal_the_table_under_filter_and_policies(pg_dsn: str, seed: int) -> None:
    rng = random.Random(seed)
    await prepare(pg_dsn, rng)
    subs = [random_subscriber(rng, i) for i in range(8)]
    joins = sorted(rng.uniform(0.0, 4.0) for _ in subs)
    async with running_relay(pg_dsn, demo=False) as relay, FaultProxy(relay.port) as proxy:
        writer = Writer(pg_dsn, random.Random(seed + 1), 10_000, max_seconds=60).start()
        writer.ids.extend(range(1, 61))
        joined: list[Joined] = []
        dropping = True

        async def drops() -> None:
            for _ in range(12):  # bounded: a snapshot must be able to finish between two drops
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                if not dropping:
                    return
                proxy.drop()

        dropper = asyncio.create_task(drops())
        try:
            start = time.monotonic()
            for sub, at in zip(subs, joins, strict=True):
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                joined.append(await join(sub, relay.port, proxy.port))
            await all_ready(joined)
            await asyncio.sleep(1.0)  # changes keep coming after every snapshot
            dropping = False
            await dropper
            await writer.stop()
            assert writer.transactions > 50, "the writer barely wrote"
            failures = await compare(pg_dsn, joined, writer)
            assert not failures, f"seed {seed}:\n" + "\n".join(failures)
            assert proxy.stats.killed > 0 or not any(s.flaky for s in subs)
        finally:
            dropping = False
            await asyncio.gather(dropper, return_exceptions=True)
            with contextlib.suppress(Exception):
                await writer.stop()
            await close_all(joined)


async def test_live_tables_after_resync_needed_are_the_table_again(pg_dsn: str) -> None:
    """Clients away longer than the relay's replay window get ``resync_needed`` on their rejoin;
    their LiveTables start again from a fresh snapshot by themselves and end equal to the table."""
    rng = random.Random(1818)
    await prepare(pg_dsn, rng)
    subs = [random_subscriber(rng, i) for i in range(4)]
    for sub in subs:
        sub.flaky = True
    # a replay window of a few kB: a few seconds away under the writer is too long
    async with (
        running_relay(pg_dsn, demo=False, resume_max_bytes=48 * 1024) as relay,
        FaultProxy(relay.port) as proxy,
    ):
        writer = Writer(pg_dsn, random.Random(7), 10_000, max_seconds=60).start()
        writer.ids.extend(range(1, 61))
        joined: list[Joined] = []
        try:
            # handshake timeout 3 s: a reconnect attempt made into the blackhole hangs that long
            # after the network is back (it was 10 s of the test's 13)
            joined = [await join(sub, relay.port, proxy.port, hb_interval=0.5, timeout=3.0) for sub in subs]
            await all_ready(joined)
            proxy.blackhole(True)  # silent network: every client notices within ~1 s, cannot rejoin
            await until(lambda: not any(j.client.status.online for j in joined), 10, "all offline")
            # away until the writer has pushed every position they could hold out of the window
            # (what a fixed 3 s sleep stood for): each rejoin must then be told resync_needed
            head = relay.server.log.head
            await until(lambda: not relay.server.log.covers(head), 30, "positions out of the window")
            proxy.blackhole(False)
            await until(lambda: all(j.live.snapshots >= 2 for j in joined), 30, "fresh snapshots")
            await asyncio.sleep(0.5)
            await writer.stop()
            failures = await compare(pg_dsn, joined, writer)
            failures += [f"{j.sub.name}: no resync" for j in joined if j.live.channel.stats.resyncs < 1]
            assert not failures, "\n".join(failures)
        finally:
            with contextlib.suppress(Exception):
                await writer.stop()
            await close_all(joined)
