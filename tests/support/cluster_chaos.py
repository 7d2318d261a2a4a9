"""The chaos scenario, extended to a cluster: the capture leader is SIGKILLed under a writer.

Why a module beside tests/support/resume_client.py rather than a copy: the subscribers, the
writer, the expected rows and the judgement are the single-process chaos test's own (imported
from there), so "exactly once, in commit order, never told to resync" means the same thing
here.  What is new: several ``relay serve`` nodes sharing one Redis and one slot; subscribers
that reconnect to the *next* node each time (a client resumes on any node); kills aimed at the
node that leads capture (and at followers); and each failover timed from the kill to the first
row change the new leader appended to the log (its entry id is Redis' clock in ms).

Used by tests/integration/test_cluster_failover.py and bench/failover.py (the same code).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.resume_client import (
    ChaosResult,
    RelayProcess,
    ResumeClient,
    SubscriberSpec,
    Writer,
    _report,
    _wait_caught_up,
    _wait_first_change,
    chaos_seed,
    default_subscribers,
    expected_rows,
    install_auditor_policy,
)

__all__ = ["ClusterChaos", "NodeClient", "first_change_after", "run_cluster_chaos"]

SLOT = "chaos_relay"
LOG_KEY = f"relay:{{{SLOT}}}:log"
LEASE_KEY = f"relay:{{{SLOT}}}:leader"


class NodeClient(ResumeClient):
    """A resuming subscriber that connects to the next node each time it (re)connects."""

    def __init__(self, name: str, ports: Sequence[int], first: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, ports[first % len(ports)], *args, **kwargs)
        self.ports = list(ports)
        self._next = first
        self.nodes_used: set[int] = set()

    async def _session(self, session: aiohttp.ClientSession) -> bool:
        self.port = self.ports[self._next % len(self.ports)]
        self._next += 1
        self.nodes_used.add(self.port)
        return await super()._session(session)


async def node_health(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/health") as resp:
            out = orjson.loads(await resp.read())
            return out if isinstance(out, dict) else None
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError):
        return None


async def find_leader(nodes: Sequence[RelayProcess], timeout: float = 15.0) -> RelayProcess:
    """The node whose /health says it leads capture (and has appended since it took over)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while time.monotonic() < deadline:
            for n in nodes:
                if n.proc is None or n.proc.poll() is not None:
                    continue
                h = await node_health(session, n.port)
                if h is not None and (h.get("cluster") or {}).get("role") == "leader":
                    return n
            await asyncio.sleep(0.05)
    raise TimeoutError(f"no node leads capture after {timeout}s")


async def first_change_after(
    redis: Redis, after_ms: int, timeout: float, old_lease: Any = None
) -> int | None:
    """Redis-clock ms of the first row change a new leader appended after ``after_ms``.

    ``old_lease``: the lease value of the leader that was stopped.  Entries are counted only
    from the moment the lease holds another value: a request the old leader sent just before
    it died (or froze) may still be executed by Redis after ``after_ms``, and must not pass for
    the new leader's first append.  (Noticing the new lease takes up to 10 ms, so a first
    append made in between is missed and the next one timed: the figure errs long, by at most
    the writer's interval.)
    """
    deadline = time.monotonic() + timeout
    if old_lease is not None:
        while time.monotonic() < deadline:
            now = await redis.get(LEASE_KEY)
            if now is not None and now != old_lease:
                after_ms = max(after_ms, int(time.time() * 1000))
                break
            await asyncio.sleep(0.01)
    start = f"{after_ms}-0"
    while time.monotonic() < deadline:
        entries: Any = await redis.xrange(LOG_KEY, start, "+", count=200)
        for entry_id, fields in entries:
            h = orjson.loads(fields[b"h"])
            if h.get("t") == "c":
                return int(entry_id.decode().partition("-")[0])
        if entries:
            last = entries[-1][0].decode()
            ms, _, seq = last.partition("-")
            start = f"{ms}-{int(seq) + 1}"
        await asyncio.sleep(0.02)
    return None


@dataclass
class ClusterChaos:
    """A cluster chaos run: the single-process result plus failover times (seconds)."""

    result: ChaosResult
    failovers: list[float] = field(default_factory=list)  # after a SIGKILL of the leader
    follower_kills: int = 0
    nodes_per_client: list[int] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)  # failovers caused by a frozen leader

    @property
    def ok(self) -> bool:
        return self.result.ok

    def summary(self) -> str:
        fo = ", ".join(f"{s:.2f}" for s in self.failovers)
        fp = ", ".join(f"{s:.2f}" for s in self.pauses)
        return (
            self.result.summary()
            + f"\n  leader failovers (kill -> first change appended by the new leader, s): [{fo}]"
            + f"\n  frozen-leader failovers (SIGSTOP -> first change appended by the new leader, s): [{fp}]"
            + f"\n  follower kills: {self.follower_kills}; nodes used per client: {self.nodes_per_client}"
        )


async def run_cluster_chaos(
    dsn: str,
    redis_url: str,
    *,
    nodes: int = 3,
    leader_kills: int = 3,
    follower_kills: int = 1,
    leader_pauses: int = 0,
    gap: tuple[float, float] = (1.0, 3.0),
    seed: int | None = None,
    subscribers: Sequence[SubscriberSpec] | None = None,
    catch_up_timeout: float = 45.0,
    failover_timeout: float = 15.0,
    drop_sockets: bool = True,
    log: Callable[[str], None] | None = None,
) -> ClusterChaos:
    """Run ``nodes`` relay processes on one Redis; kill leaders and followers under a writer.

    ``leader_pauses``: the leader is frozen (SIGSTOP) instead, as a partition or a long GC pause
    would: its TCP connections stay open, so its walsender keeps the slot until the new leader
    terminates it; resumed (SIGCONT) after the takeover, it must find itself fenced.
    """
    seed = chaos_seed(seed)
    say = log or (lambda _s: None)
    say(f"cluster chaos seed={seed} (set RELAY_CHAOS_SEED={seed} to repeat)")
    specs = list(subscribers or default_subscribers())
    rng = random.Random(seed)
    drop_rng = random.Random(seed + 1)
    await asyncio.to_thread(apply_migrations, dsn)
    await asyncio.to_thread(apply_demo_schema, dsn)
    await asyncio.to_thread(install_auditor_policy, dsn)
    t0 = time.monotonic()
    redis = Redis.from_url(redis_url)
    failovers: list[float] = []
    pauses: list[float] = []
    notes: list[str] = []
    fkills = 0
    with tempfile.TemporaryDirectory(prefix="relay-cluster-chaos-") as tmp:
        procs = [
            RelayProcess(
                dsn,
                free_port(),
                Path(tmp) / f"node{i}.log",
                {"RELAY_REDIS_URL": redis_url, "RELAY_NODE_ID": f"node{i}"},
            )
            for i in range(nodes)
        ]
        ports = [p.port for p in procs]
        clients = [
            NodeClient(s.name, ports, i, s.token(), s.bindings(), seed=seed + 10 + i, vsn=s.vsn)
            for i, s in enumerate(specs)
        ]
        writer = Writer(dsn, seed + 2)
        expected: dict[str, list[tuple[str, int]]] = {}
        caught_up = False
        stats: dict[str, Any] | None = None
        disconnects = 0
        kills = 0
        try:
            for p in procs:
                p.start()
            for p in procs:
                await p.wait_streaming(45.0)
            for c in clients:
                c.start()
            for c in clients:
                await c.wait_positioned(15.0)
            writer.start()
            say(f"{nodes} nodes on ports {ports}; {len(clients)} subscribers; writer started")
            await _wait_first_change(clients, 20.0)
            chaos_over = asyncio.Event()

            async def dropper() -> None:
                nonlocal disconnects
                while not chaos_over.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(chaos_over.wait(), drop_rng.uniform(0.3, 2.0))
                        return
                    victim = drop_rng.choice(clients)
                    if await victim.disconnect(abrupt=drop_rng.random() < 0.5):
                        disconnects += 1

            drop_task = asyncio.create_task(dropper()) if drop_sockets else None
            try:
                plan = ["leader"] * leader_kills + ["follower"] * follower_kills + ["pause"] * leader_pauses
                rng.shuffle(plan)
                for i, what in enumerate(plan):
                    await asyncio.sleep(rng.uniform(*gap))
                    leader = await find_leader(procs)
                    if what in ("leader", "pause"):
                        victim = leader
                    else:
                        victim = rng.choice([p for p in procs if p is not leader])
                    old_lease = await redis.get(LEASE_KEY)
                    if what == "pause":
                        assert victim.proc is not None
                        victim.proc.send_signal(signal.SIGSTOP)
                    else:
                        victim.kill()
                    killed_ms = int(time.time() * 1000)
                    kills += 1
                    if what == "pause":
                        first = await first_change_after(redis, killed_ms, failover_timeout, old_lease)
                        took = (first - killed_ms) / 1000 if first is not None else float("inf")
                        pauses.append(took)
                        say(f"pause {i + 1}/{len(plan)}: leader {victim.port} frozen; took {took:.2f}s")
                        await asyncio.sleep(rng.uniform(0.5, 2.0))
                        assert victim.proc is not None
                        victim.proc.send_signal(signal.SIGCONT)
                        continue
                    if what == "leader":
                        first = await first_change_after(redis, killed_ms, failover_timeout, old_lease)
                        took = (first - killed_ms) / 1000 if first is not None else float("inf")
                        failovers.append(took)
                        say(f"kill {i + 1}/{len(plan)}: leader {victim.port}; appended after {took:.2f}s")
                    else:
                        fkills += 1
                        say(f"kill {i + 1}/{len(plan)}: follower {victim.port}")
                    await asyncio.sleep(rng.uniform(0.0, 1.0))
                    victim.start()
                for p in procs:
                    await p.wait_streaming(45.0)
                await asyncio.sleep(1.0)
            finally:
                chaos_over.set()
                if drop_task is not None:
                    await drop_task
            await asyncio.to_thread(writer.stop)
            say(f"writer stopped: {writer.transactions} transactions, {writer.rows} rows")
            expected = {s.name: await asyncio.to_thread(expected_rows, dsn, s) for s in specs}
            caught_up = await _wait_caught_up(clients, expected, catch_up_timeout)
            if not caught_up:
                notes.append(f"subscribers did not catch up within {catch_up_timeout}s")
            await asyncio.sleep(0.3)
            stats = await procs[0].stats()
        finally:
            writer.stopping.set()
            for c in clients:
                await c.stop()
            for p in procs:
                p.terminate()
            if writer.is_alive():
                writer.join(10)
            await redis.aclose()
        reports = [_report(s, c, expected.get(s.name, [])) for s, c in zip(specs, clients, strict=True)]
        result = ChaosResult(
            seed=seed,
            kills=kills,
            disconnects=disconnects,
            transactions=writer.transactions,
            rows=writer.rows,
            seconds=time.monotonic() - t0,
            caught_up=caught_up,
            subscribers=reports,
            relay_stats=stats,
            relay_log="\n".join(f"--- node {p.port} ---\n{p.log_tail(40)}" for p in procs),
            writer_error=repr(writer.error) if writer.error is not None else None,
            relay_exits=[e for p in procs for e in p.exits],
            notes=notes,
        )
        return ClusterChaos(result, failovers, fkills, [len(c.nodes_used) for c in clients], pauses)
