"""Commit -> client latency under fan-out, with a load generator that is not the bottleneck.

Not part of CI.  ``python bench/latency.py [--rate 100] [--subscribers 500] [--seconds 10]``

One run on a throwaway cluster (migrations + demo schema), the relay in this process:

1. ``--processes`` client processes (the cheap client of ``bench/wsload.py``) hold
   ``--subscribers`` sockets in total, each with its own ``service_role`` token (distinct
   ``sub``) and one channel with an ``INSERT`` binding on ``public.bookings``;
2. a writer process commits ``--rate`` single-row transactions/s for ``--seconds`` (autocommit,
   prepared INSERT); each row's ``notes`` carries ``time.time()`` taken just before its
   INSERT+COMMIT round trip (the writer of ``bench/throughput.py``);
3. each client reads only what it checks: the ``notes`` stamp of each change frame (a byte
   search, no JSON parse); latency = receive time - stamp (an upper bound of commit -> client),
   over every delivery.  Each socket must receive exactly the written changes (counted, and
   the distinct stamps per process must equal the writer's count) or the bench fails;
4. CPU over the measured window is printed for the relay, every client process and the writer,
   as a share of one core, with the relay's run-queue wait (``/proc/self/schedstat``) and the
   load average; a ``VERDICT`` line (and ``bound_by`` in the table row) says what the figure
   measured: ``machine`` (the relay waited for a CPU ≥ 20 % of the time: frames queued behind
   other processes), ``relay`` (runnable ≥ 90 % of the time: the relay is the bottleneck),
   ``client`` (a client process near a core) or ``relay code`` (none of these).

Baseline, same run and same relay: the same rate to ONE subscriber (phase 1), then the fan-out
(phase 2).  Relay settings raised for the bench (printed): ``RELAY_MAX_CONNECTIONS`` and
``RELAY_HEARTBEAT_TIMEOUT`` (the clients send no heartbeats).

``--pin on`` gives the relay a CPU of its own (``bench/affinity.py``): the relay (this process,
every thread) on the last CPU, Postgres (the postmaster, so every backend it forks, and the
backends already running), the writer and the client processes on the others.  Nothing else of
the bench then runs on the relay's CPU, but other users' processes still can: the report adds
how busy the relay's CPU was in total and the relay's share of it, next to its run-queue wait.
``--pin both`` measures both phases unpinned, then both pinned, with the same relay and cluster,
and prints one table row for each (``latency``, ``latency_pinned``).

``--nice N`` (root for N < 0) gives the relay (a session of its own: with the kernel's scheduler
autogroups a CPU is shared between sessions first, so a thread's nice value alone does not
outrank other users' processes) and Postgres (its own session already) the niceness N, for them
and for their session's group; the writer and the clients start sessions of their own (nice 0).
On a shared machine other users' processes then take less of the relay's CPU; the report still
prints the relay's run-queue wait.  ``--probe`` times, inside the relay's
process, what can hold a change besides the CPU: garbage-collector pauses (``gc.callbacks``) and
the event loop's lag (a task that sleeps 5 ms and measures how late it wakes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import os
import sys
import time
import uuid
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affinity import CpuTimes, Pinning, postmaster_pid, set_nice
from idle_sockets import raise_nofile
from tablerow import emit
from throughput import END_MARKER, writer_main
from wsload import WsClient, cpu_seconds, run_wait_seconds

from relay.config import Config
from relay.core.tokens import mint
from relay.gc_policy import GEN0_THRESHOLD, tune_gc
from relay.postgres.cluster import LocalCluster
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import start_relay

SECRET = "bench-latency-secret-0123456789-0123456789"
PATH = "/realtime/v1/websocket"
JOIN = (
    '{"topic":"realtime:lat","event":"phx_join","ref":"1","join_ref":"1","payload":{"config":'
    '{"postgres_changes":[{"event":"INSERT","schema":"public","table":"bookings"}]}}}'
)
NOTES = b'"notes":"'


def _own_session(nice: int) -> None:
    """With ``--nice``: leave the relay's session (and scheduler autogroup), with the same niceness."""
    if nice:
        os.setsid()
        set_nice(os.getpid(), nice)


def bench_writer_main(dsn: str, rate: float, seconds: float, pipe: Connection, nice: int) -> None:
    _own_session(nice)
    writer_main(dsn, rate, seconds, pipe)


def clients_main(port: int, tokens: list[str], pipe: Connection, nice: int = 0) -> None:
    try:
        _own_session(nice)
        raise_nofile()
        asyncio.run(_clients(port, tokens, pipe))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


async def _clients(port: int, tokens: list[str], pipe: Connection) -> None:
    lat = array("d")  # ms, every delivery of this process
    counts: list[int] = []
    stamps: set[bytes] = set()
    end = END_MARKER.encode()

    async def one(tok: str, k: int, joined: asyncio.Event) -> None:
        c = await WsClient.connect("127.0.0.1", port, PATH, {"apikey": tok, "vsn": "1.0.0"})
        c.send_text(JOIN)
        for _ in range(20):
            data = await asyncio.wait_for(c.recv(), 60)
            if b'"phx_reply"' in data:
                if b'"status":"ok"' not in data:
                    raise RuntimeError(f"join refused: {data[:300]!r}")
                break
        joined.set()
        for _ in range(10_000_000):  # bounded: ends at the writer's end marker
            batch = await asyncio.wait_for(c.recv_batch(), 120)
            t = time.time()
            for data in batch:
                if b'"postgres_changes"' not in data:
                    continue
                i = data.find(NOTES) + len(NOTES)
                stamp = data[i : data.index(b'"', i)]
                if stamp == end:
                    c.close()
                    return
                if stamp[:1].isdigit():  # the writer's warm-up row is not a sample
                    lat.append((t - float(stamp)) * 1000)
                    counts[k] += 1
                    stamps.add(stamp)
        c.close()

    events = [asyncio.Event() for _ in tokens]
    counts.extend(0 for _ in tokens)
    tasks = [asyncio.create_task(one(t, k, e)) for k, (t, e) in enumerate(zip(tokens, events, strict=True))]
    waiter: asyncio.Future[list[bool]] = asyncio.gather(*(e.wait() for e in events))
    pending: list[asyncio.Future[Any]] = [waiter, *tasks]
    done, _ = await asyncio.wait(pending, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()  # type: ignore[misc]
        raise RuntimeError("not every socket joined within 120 s")
    pipe.send(("joined", len(tokens)))
    cpu0, wait0 = time.process_time(), run_wait_seconds() or 0.0
    await asyncio.gather(*tasks)
    cpu, wait = time.process_time() - cpu0, (run_wait_seconds() or 0.0) - wait0
    pipe.send(("done", cpu, lat.tobytes(), counts, len(stamps), wait))


class StallProbe:
    """GC pauses and event-loop lag in the relay's process (the relay runs in the bench's process).

    Why: a change can wait between the walsender's message and the socket write while the relay
    is not running it — a collection of a large heap stops everything, and a long callback delays
    every other one.  Both are wall-clock times, so a run-queue wait inside them counts too.
    """

    INTERVAL = 0.005

    def __init__(self) -> None:
        self.gc: dict[int, array[float]] = {0: array("d"), 1: array("d"), 2: array("d")}
        self.gc_cpu: dict[int, array[float]] = {0: array("d"), 1: array("d"), 2: array("d")}
        self.lag = array("d")
        self.heap = ""
        self._t = self._c = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t, self._c = time.perf_counter(), time.thread_time()
        else:
            self.gc[info["generation"]].append((time.perf_counter() - self._t) * 1000)
            self.gc_cpu[info["generation"]].append((time.thread_time() - self._c) * 1000)

    async def _lag(self) -> None:
        for _ in range(100_000_000):  # bounded; cancelled at the end of the phase
            t = time.perf_counter()
            await asyncio.sleep(self.INTERVAL)
            self.lag.append((time.perf_counter() - t - self.INTERVAL) * 1000)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._lag())

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
        sizes = [len(gc.get_objects(g)) for g in range(3)]
        self.heap = f"tracked objects by generation {sizes}, frozen {gc.get_freeze_count()}"

    def summary(self) -> str:
        parts = []
        for g, d in self.gc.items():
            if d:
                c = self.gc_cpu[g]
                parts.append(
                    f"gen{g} {len(d)}x max {max(d):.1f} ms (CPU {max(c):.1f}), "
                    f"total {sum(d):.0f} ms (CPU {sum(c):.0f})"
                )
        lag = sorted(self.lag)
        lag_text = (
            f"loop lag p50 {_pct(lag, 0.5):.1f} ms, p99 {_pct(lag, 0.99):.1f} ms, max {lag[-1]:.1f} ms "
            f"({sum(1 for x in lag if x > 10)} wake-ups > 10 ms late)"
            if lag
            else "no loop-lag samples"
        )
        return f"GC: {', '.join(parts) or 'none'}; {self.heap}; {lag_text}"


def _recv(pipe: Connection, what: str, limit: float) -> tuple[Any, ...]:
    if not pipe.poll(limit):
        raise SystemExit(f"bench invalid: timed out waiting for {what}")
    msg = pipe.recv()
    if msg[0] == "error":
        raise SystemExit(f"bench invalid: {what}: {msg[1]}")
    return tuple(msg)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


async def phase(
    port: int, dsn: str, subs: int, args: argparse.Namespace, plan: Pinning | None = None
) -> dict[str, Any]:
    """One measured run: ``subs`` sockets over at most ``--processes`` client processes.

    With ``plan``, each child process is moved to the bench's CPUs right after it starts (it was
    forked from the pinned relay and inherited the relay's CPU).
    """
    loop = asyncio.get_running_loop()
    ctx = mp.get_context("spawn")
    tokens = [
        mint(SECRET, role="service_role", sub=str(uuid.uuid4()), ttl=7200, claims={}) for _ in range(subs)
    ]
    procs = min(subs, args.processes)
    children = []
    writer = None
    try:
        for k in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=clients_main, args=(port, tokens[k::procs], child, args.nice), daemon=True)
            p.start()
            if plan is not None and p.pid is not None:
                plan.pin_rest(p.pid)
            children.append((parent, p))
        for parent, _ in children:
            await loop.run_in_executor(None, _recv, parent, "the subscribers to join", 180)
        w_parent, w_child = ctx.Pipe()
        wargs = (dsn, args.rate, args.seconds, w_child, args.nice)
        writer = ctx.Process(target=bench_writer_main, args=wargs, daemon=True)
        relay_cpu0, t0 = cpu_seconds() or 0.0, time.monotonic()
        wait0 = run_wait_seconds() or 0.0
        cpus = CpuTimes()
        cpus.begin()
        probe = StallProbe() if args.probe else None
        if probe is not None:
            probe.start()
        writer.start()
        if plan is not None and writer.pid is not None:
            plan.pin_rest(writer.pid)
        _, acks, achieved = await loop.run_in_executor(
            None, _recv, w_parent, "the writer", 4 * args.seconds + 60
        )
        writer_cpu = cpu_seconds(writer.pid)
        results = [
            await loop.run_in_executor(None, _recv, parent, "the deliveries", 120) for parent, _ in children
        ]
        wall = time.monotonic() - t0
        relay_cpu = (cpu_seconds() or 0.0) - relay_cpu0
        relay_wait = (run_wait_seconds() or 0.0) - wait0
        if probe is not None:
            probe.stop()
        relay_cpus = sorted(plan.relay) if plan is not None else sorted(os.sched_getaffinity(0))
        cpu_busy, cpu_steal = cpus.shares(relay_cpus)
    finally:
        for _, p in children:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        if writer is not None:
            writer.join(10)
    written = len(acks)
    lat: list[float] = []
    for r in results:
        lat.extend(array("d", r[2]))
    lat.sort()
    counts = [c for r in results for c in r[3]]
    distinct = [r[4] for r in results]
    if not lat or min(counts) != written or max(counts) != written or min(distinct) != written:
        raise SystemExit(
            f"bench invalid: {written} changes written; per socket received {min(counts, default=0)}.."
            f"{max(counts, default=0)}, distinct per process {distinct}: not printing a latency"
        )
    return {
        "subs": subs,
        "procs": procs,
        "written": written,
        "achieved": achieved,
        "deliveries": len(lat),
        "p50": _pct(lat, 0.5),
        "p99": _pct(lat, 0.99),
        "max": lat[-1],
        "wall": wall,
        "relay_cpu": relay_cpu,
        "relay_wait": relay_wait,
        "client_cpu": [r[1] for r in results],
        "client_wait": [r[5] for r in results],
        "writer_cpu": writer_cpu,
        "load": os.getloadavg()[0],
        "pinned": plan is not None,
        "relay_cpus": relay_cpus,
        "cpu_busy": cpu_busy,
        "cpu_steal": cpu_steal,
        "probe": probe.summary() if probe is not None else None,
    }


def verdict(r: dict[str, Any]) -> tuple[str, str]:
    """What the figure measured: ``(key, sentence)``; the key goes into the table row.

    ``machine``: the relay was runnable but waited for a CPU a large share of the time (other
    processes on the cores), so frames queued behind the wait — the figure is the machine's.
    ``machine (clients)``: the same for a client process (frames sat in its socket buffer while it
    waited for a CPU: with ``--pin on`` the clients share one CPU with Postgres and the writer).
    ``relay``: the relay was runnable nearly all the time and mostly running: it is the
    bottleneck.  ``client``: a client process used nearly a core.  ``relay code``: none of these.
    """
    w = r["wall"]
    busy, wait = r["relay_cpu"] / w, r["relay_wait"] / w
    client = max(r["client_cpu"]) / w
    if client > 0.8:
        return "client", f"a client process used {client:.0%} of a core: the latency is partly the client's"
    if wait >= 0.2:
        ours = busy + sum(r["client_cpu"]) / w + (r["writer_cpu"] or 0.0) / w
        return "machine", (
            f"the relay waited for a CPU {wait:.0%} of the time while it needed {busy:.0%} of one "
            f"(this bench's relay, clients and writer used {ours:.1f} of the {os.cpu_count()} cores, "
            f"load average {r['load']:.1f}): frames queued behind the machine, "
            "this is not a measurement of the relay's code"
        )
    cwait = max(r["client_wait"]) / w
    if cwait >= 0.2:
        return "machine (clients)", (
            f"the relay ran {busy:.0%} and waited {wait:.0%} of the time, but a client process waited "
            f"for a CPU {cwait:.0%} of the time (load average {r['load']:.1f}): frames queued in the "
            "clients' socket buffers, the figure is not the relay's alone"
        )
    if busy + wait >= 0.9:
        return "relay", f"the relay ran {busy:.0%} of the time: it is the bottleneck at this load"
    return "relay code", (
        f"the relay ran {busy:.0%} and waited {wait:.0%} of the time, the busiest client used "
        f"{client:.0%} of a core: the figure is the relay's own"
    )


def report(r: dict[str, Any]) -> None:
    w = r["wall"]
    print(
        f"{r['subs']:>5} subscriber(s) in {r['procs']} process(es): {r['written']} changes at "
        f"{r['achieved']:,.0f}/s, {r['deliveries']:,} deliveries "
        f"({r['deliveries'] / w:,.0f}/s over {w:.1f}s); "
        f"commit->client p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms"
    )
    cc = r["client_cpu"]
    wc = r["writer_cpu"]
    print(
        f"      CPU share of a core: relay {r['relay_cpu'] / w:.0%}; clients {sum(cc) / w:.0%} in total, "
        f"busiest process {max(cc) / w:.0%}; writer {'n/a' if wc is None else f'{wc / w:.0%}'}"
    )
    print(
        f"      relay main thread waited {r['relay_wait'] / w:.0%} of the time for a CPU (run queue), "
        f"client processes up to {max(r['client_wait']) / w:.0%}; "
        f"load average {r['load']:.1f} on {os.cpu_count()} cores"
    )
    n = len(r["relay_cpus"])
    others = max(0.0, r["cpu_busy"] - r["relay_cpu"] / w / n)
    where = "pinned: the relay" if r["pinned"] else "unpinned: the relay may use"
    print(
        f"      {where} CPU {r['relay_cpus']}, "
        f"busy {r['cpu_busy']:.0%} in total (relay {r['relay_cpu'] / w / n:.0%}, everything else "
        f"{others:.0%}), hypervisor steal {r['cpu_steal']:.0%}"
    )
    if r["probe"]:
        print(f"      relay process: {r['probe']}")
    key, sentence = verdict(r)
    print(f"      VERDICT ({key}): {sentence}")


async def main_async(args: argparse.Namespace) -> int:
    with LocalCluster() as pg:
        dsn = pg.dsn()
        if args.nice:
            print(f"Postgres: {set_nice(postmaster_pid(pg.data_dir), args.nice)}")
        apply_migrations(dsn)
        apply_demo_schema(dsn)
        cfg = Config(
            database_url=dsn,
            jwt_secret=SECRET,
            port=0,
            log_level="WARNING",
            max_connections=args.subscribers + 100,
            heartbeat_timeout=3600.0,  # the clients send no heartbeats
        )
        print(
            f"relay config raised for the bench: RELAY_MAX_CONNECTIONS={cfg.max_connections}, "
            f"RELAY_HEARTBEAT_TIMEOUT={cfg.heartbeat_timeout:.0f}"
        )
        relay = await start_relay(cfg)
        if args.gc_gen0 > 0:  # what `relay serve` does once the relay is started
            tune_gc(args.gc_gen0)
        print(f"relay GC: thresholds {gc.get_threshold()}, {gc.get_freeze_count()} objects frozen")
        rows = []
        try:
            for pinned in {"off": [False], "on": [True], "both": [False, True]}[args.pin]:
                plan = Pinning.split() if pinned else None
                try:
                    if plan is not None:
                        plan.pin_relay(os.getpid())
                        plan.pin_rest_tree(postmaster_pid(pg.data_dir))
                        print(f"pinned: {plan.describe()}")
                    base = await phase(relay.port, dsn, 1, args, plan)
                    report(base)
                    fan = await phase(relay.port, dsn, args.subscribers, args, plan)
                    report(fan)
                finally:
                    if plan is not None:
                        plan.undo()
                rows.append((base, fan))
        finally:
            await relay.stop()
    for base, fan in rows:
        emit(
            "latency_pinned" if fan["pinned"] else "latency",
            f"p50 {fan['p50']:.1f} ms, p99 {fan['p99']:.1f} ms (VERDICT {verdict(fan)[0]})",
            f"1 subscriber: p50 {base['p50']:.1f} ms, p99 {base['p99']:.1f} ms",
            round(fan["p99"] / base["p99"], 2),
            "p99 <= 20 ms",
            rate=args.rate,
            subscribers=args.subscribers,
            pinned=fan["pinned"],
            relay_core=round(fan["relay_cpu"] / fan["wall"], 2),
            busiest_client_core=round(max(fan["client_cpu"]) / fan["wall"], 2),
            relay_run_queue_wait=round(fan["relay_wait"] / fan["wall"], 2),
            relay_cpu_busy=round(fan["cpu_busy"], 2),
            bound_by=verdict(fan)[0],
            load_average=round(fan["load"], 1),
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="changes per second written")
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--processes", type=int, default=4, help="client processes")
    ap.add_argument("--nice", type=int, default=0, help="niceness of the relay and Postgres (< 0 needs root)")
    ap.add_argument("--probe", action="store_true", help="time GC pauses and loop lag in the relay")
    ap.add_argument(
        "--gc-gen0",
        type=int,
        default=GEN0_THRESHOLD,
        help="the relay's GC tuning as `relay serve` applies it (relay/gc_policy.py), with this young "
        "threshold; 0: Python's default GC (the code before the tuning, for before/after runs)",
    )
    ap.add_argument(
        "--pin",
        choices=("off", "on", "both"),
        default="off",
        help="give the relay a CPU of its own (on), or measure unpinned then pinned in one run (both)",
    )
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.subscribers < 1 or not 0 < args.seconds <= 120 or args.processes < 1:
        ap.error("need --rate > 0, --subscribers >= 1, 0 < --seconds <= 120, --processes >= 1")
    logging.basicConfig(level=logging.ERROR)
    raise_nofile()
    if args.nice:
        try:
            os.setsid()  # the relay's own session, so its own autogroup (children leave it)
        except OSError as exc:
            print(f"no session of its own for the relay ({exc}): its niceness is shared with its parent's")
        print(f"relay: {set_nice(os.getpid(), args.nice)}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
