"""One very large transaction through ``relay serve``: the scenario shared by the test and the bench.

tests/integration/test_large_tx.py asserts on it; bench/large_tx.py prints numbers and baselines.

Why a subprocess: the relay's resident memory (VmRSS / VmHWM from ``/proc``) must be its own,
not mixed with the subscriber and bookkeeping.  Why one transaction: wal2json hands the relay a
transaction only after its commit, all of it at once and as fast as the walsender can decode it,
so this is the case where anything the relay keeps per change (queues, the replay log, frame
caches) would add up to the transaction's size.

The subscriber must never become the slow consumer the relay is allowed to drop (that case is
tested in test_delivery_limits): since the relay delivers a transaction at tens of thousands of
rows/s, aiohttp's client (tens of us per frame in ``ws.receive``) fell behind and the relay,
correctly, closed it with 1013 once RELAY_SOCKET_QUEUE_FRAMES frames were queued (issue 16).  It
now reads with the cheap client of ``bench/wsload.py`` (frames parsed in batches from one read)
and keeps one byte per expected row.  Its CPU and run-queue wait are measured next to the relay's
over the same interval, so a reader sees which side was the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg

from relay.core.tokens import mint
from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_migrations
from tests.support.relay_process import log_tail, relay_env, spawn_relay, wait_streaming

# The cheap WebSocket client is the benches' (bench/wsload.py, a script directory, not a package):
# one client for every measurement, so none of them measures its own load generator.
BENCH_DIR = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH_DIR not in sys.path:
    sys.path.append(BENCH_DIR)
from wsload import ClosedError as ClosedError  # noqa: E402  (re-exported for the tests)
from wsload import WsClient as WsClient  # noqa: E402
from wsload import cpu_seconds, run_wait_seconds  # noqa: E402

MIB = 1024 * 1024
TABLE = "large_tx"
# This scenario configures the relay it starts, so it owns the signing secret (and stays free of
# the in-process helpers of tests/support/relay.py).
SECRET = "large-tx-secret-0123456789-0123456789-abcdef"


# -- relay memory ------------------------------------------------------------------------------
def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM) in KiB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples the relay's VmRSS every ``interval`` seconds, for the curve and its peak.

    The kernel's VmHWM (high-water mark) is read too at the end: it catches a peak between two
    samples, so the peak is the larger of the two.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS KiB)
        self.hwm_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = status_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.samples.append((time.monotonic(), rss))
            self._halt.wait(self.interval)

    def now_kib(self) -> int:
        return status_kib(self.pid, "VmRSS") or 0

    def finish(self) -> None:
        """Stop sampling and read the kernel's high-water mark (the relay must still be running)."""
        if self._halt.is_set():
            return
        self.hwm_kib = status_kib(self.pid, "VmHWM") or 0
        self._halt.set()
        self.join(timeout=5)

    @property
    def peak_kib(self) -> int:
        return max([self.hwm_kib, *(rss for _, rss in self.samples)])


def rss_curve(samples: list[tuple[float, int]], t0: float, t1: float, points: int = 12) -> str:
    """VmRSS (MiB) at evenly spaced moments between t0 and t1: shows the plateau."""
    span = [kib for t, kib in samples if t0 <= t <= t1]
    step = max(1, len(span) // points)
    return " ".join(f"{kib / 1024:.0f}" for kib in span[::step]) or "(no samples)"


# -- the relay as a user runs it -----------------------------------------------------------------
@contextlib.contextmanager
def relay_serve(
    dsn: str, log_path: Path, env: Mapping[str, str] | None = None, slot: str = "large_tx_test"
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``relay serve --no-migrate`` on a free port; yields (process, port) once it streams.

    Stopped with SIGINT by its PID, killed if it does not exit.
    """
    port = free_port()
    full_env = relay_env(dsn, port, SECRET, slot, {"RELAY_LOG_LEVEL": "WARNING", **(env or {})})
    with open(log_path, "wb") as logf:
        proc = spawn_relay(full_env, logf, "--no-migrate")
    try:
        asyncio.run(wait_streaming(port, proc, lambda: log_tail(log_path)))
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# -- the transaction and its subscriber ----------------------------------------------------------
def prepare_table(dsn: str) -> None:
    """Migrations, then a small table enabled for the relay (REPLICA IDENTITY FULL comes with it)."""
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table public.{TABLE} (id bigint primary key, label text not null, qty int)")
        conn.execute(f"select realtime.enable_table('public.{TABLE}')")


def insert_one_transaction(dsn: str, n: int) -> float:
    """Rows 1..n in one statement (one transaction); returns the monotonic time the commit returned."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"insert into public.{TABLE} (id, label, qty) "
            "select g, 'row number ' || g, g %% 1000 from generate_series(1, %s) g",
            (n,),
        )
    return time.monotonic()


@dataclass
class Tally:
    """What the subscriber saw: enough to prove "every row exactly once, in order" for n rows."""

    n: int
    seen: bytearray = field(init=False)
    rows: int = 0
    duplicates: int = 0
    out_of_range: int = 0
    out_of_order: int = 0
    other_frames: int = 0
    frame_bytes: int = 0
    commit_lsns: set[str] = field(default_factory=set)
    last_position: str = ""
    first_at: float = 0.0  # monotonic time the first row came
    last_at: float = 0.0  # monotonic time the last expected row (or the deadline) came

    def __post_init__(self) -> None:
        self.seen = bytearray(self.n + 1)

    def add(self, data: bytes | str) -> None:
        """Account one text frame: rows of the table are checked (ids and positions), replies skipped.

        A full parse, not a byte search for the id and position: orjson reads a ~420-byte frame
        in about as long as two regex searches take (~1.7 us, measured), and the parse checks the
        frame's real ``event``/``table``/``type`` fields rather than bytes that look like them.
        What made the subscriber slow was the WebSocket client, not this.
        """
        msg = orjson.loads(data)
        if msg.get("event") != "postgres_changes":
            return  # join/heartbeat replies, the "Subscribed to PostgreSQL" system message
        change = msg["payload"]["data"]
        if change["table"] != TABLE or change["type"] != "INSERT":
            self.other_frames += 1
            return
        if self.rows == 0:
            self.first_at = time.monotonic()
        self.rows += 1
        self.frame_bytes += len(data)
        rid = change["record"]["id"]
        if not 1 <= rid <= self.n:
            self.out_of_range += 1
        elif self.seen[rid]:
            self.duplicates += 1
        else:
            self.seen[rid] = 1
        pos = change["position"]
        if pos <= self.last_position:
            self.out_of_order += 1
        self.last_position = pos
        self.commit_lsns.add(pos.partition(":")[0])

    @property
    def missing(self) -> int:
        return self.n - sum(self.seen)

    @property
    def complete(self) -> bool:
        """Every row exactly once, nothing else, positions increasing, one commit LSN."""
        return (
            (self.rows, self.missing, self.duplicates, self.out_of_range, self.other_frames)
            == (self.n, 0, 0, 0, 0)
            and self.out_of_order == 0
            and len(self.commit_lsns) == 1
        )


@dataclass
class Cpu:
    """CPU and run-queue wait (seconds) of one side over the delivery: which side was the limit.

    Run-queue wait is time the side was runnable but had no core (``/proc/<pid>/schedstat`` of
    its main thread): on a shared 2-core machine a low rate with a high wait measured the
    neighbours, not the code.
    """

    cpu: float = 0.0
    wait: float | None = None  # None where schedstat is not available

    def share(self, wall: float) -> str:
        """``"<cpu> s = <n> % of a core, waited <w> s"`` over ``wall`` seconds."""
        pct = 100 * self.cpu / wall if wall > 0 else float("nan")
        waited = "run-queue wait n/a" if self.wait is None else f"waited {self.wait:.1f} s for a CPU"
        return f"{self.cpu:.1f} s = {pct:.0f} % of a core, {waited}"


@dataclass
class Run:
    """One measured run: the subscriber's tally, the relay's memory and the timings."""

    tally: Tally
    baseline_kib: int
    peak_kib: int
    hwm_kib: int
    insert_started: float
    committed: float
    samples: list[tuple[float, int]]
    relay: Cpu  # the relay process (all its threads; wait: its event-loop thread)
    subscriber: Cpu  # this process's event-loop thread, which reads and checks every frame

    @property
    def delivery_s(self) -> float:
        """Commit returned -> last row received: the relay's share (Postgres decodes after commit)."""
        return self.tally.last_at - self.committed

    @property
    def rows_per_s(self) -> float:
        return self.tally.rows / self.delivery_s if self.delivery_s > 0 else float("inf")

    def curve(self, points: int = 12) -> str:
        return rss_curve(self.samples, self.insert_started, self.tally.last_at, points)

    def report(self) -> str:
        growth = (self.peak_kib - self.baseline_kib) / 1024
        return (
            f"{self.tally.rows:,} rows in one transaction: insert+commit "
            f"{self.committed - self.insert_started:.1f}s, delivery {self.delivery_s:.1f}s "
            f"({self.rows_per_s:,.0f} rows/s after commit); relay RSS baseline "
            f"{self.baseline_kib / 1024:.1f} MiB, peak {self.peak_kib / 1024:.1f} MiB "
            f"(VmHWM {self.hwm_kib / 1024:.1f} MiB), growth {growth:.1f} MiB; "
            f"{self.tally.frame_bytes / MIB:.0f} MiB of frames delivered\n"
            f"CPU from insert to last row ({self.tally.last_at - self.insert_started:.1f} s): relay "
            f"{self.relay.share(self.tally.last_at - self.insert_started)}; subscriber "
            f"{self.subscriber.share(self.tally.last_at - self.insert_started)}\n"
            f"relay RSS (MiB) over the delivery: {self.curve()}"
        )


async def heartbeats(ws: WsClient, every: float = 20.0) -> None:
    """Phoenix heartbeats, as every Realtime client sends them (supabase-js: every 25-30 s).

    The relay closes a socket that stays silent for RELAY_HEARTBEAT_TIMEOUT (60 s), however
    much it is receiving; a million-row delivery takes longer than that.
    """
    ref = 0
    while True:
        await asyncio.sleep(every)
        ref += 1
        ws.send_text(
            orjson.dumps(
                {"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": f"hb{ref}"}
            ).decode()
        )


async def subscribe_insert_count(port: int, dsn: str, n: int, timeout: float, sampler: RssSampler) -> Run:
    """Join (service_role), measure the idle baseline, insert n rows in one transaction, count them.

    Stops ``sampler`` at the end (while the relay still runs, for its VmHWM).  The relay's CPU
    (``sampler.pid``) and this thread's are taken over the same interval, insert to last row.
    Raises RuntimeError (with the relay's close code and reason) if the relay closes the socket.
    """
    tally = Tally(n)
    params = {"apikey": mint(SECRET, role="service_role"), "vsn": "1.0.0"}
    ws = await WsClient.connect("127.0.0.1", port, "/realtime/v1/websocket", params)
    try:
        join = {
            "topic": "realtime:large",
            "event": "phx_join",
            "ref": "1",
            "join_ref": "1",
            "payload": {"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": TABLE}]}},
        }
        ws.send_text(orjson.dumps(join).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply["event"] != "phx_reply" or reply["payload"].get("status") != "ok":
            raise RuntimeError(f"join refused: {reply}")
        await asyncio.sleep(0.5)  # joined and idle: this is the baseline
        baseline = sampler.now_kib()
        started = time.monotonic()
        relay_cpu0, relay_wait0 = cpu_seconds(sampler.pid), run_wait_seconds(sampler.pid)
        # thread_time: this thread reads and checks the frames; the insert runs in another
        cpu0, wait0 = time.thread_time(), run_wait_seconds()
        insert = asyncio.create_task(asyncio.to_thread(insert_one_transaction, dsn, n))
        beats = asyncio.create_task(heartbeats(ws))
        deadline = started + timeout
        try:
            while tally.rows < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if insert.done() and insert.exception() is not None:
                    break  # raised by the await below
                try:
                    batch = await asyncio.wait_for(ws.recv_batch(), min(left, 1.0))
                except TimeoutError:
                    continue
                except (ClosedError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    raise RuntimeError(f"socket closed after {tally.rows} rows: {exc}") from exc
                for data in batch:
                    tally.add(data)
            tally.last_at = time.monotonic()
            subscriber = Cpu(time.thread_time() - cpu0, _delta(run_wait_seconds(), wait0))
            relay = Cpu(
                _delta(cpu_seconds(sampler.pid), relay_cpu0) or 0.0,
                _delta(run_wait_seconds(sampler.pid), relay_wait0),
            )
        finally:
            beats.cancel()
        committed = await insert
    finally:
        ws.close()
    sampler.finish()
    return Run(
        tally,
        baseline,
        sampler.peak_kib,
        sampler.hwm_kib,
        started,
        committed,
        sampler.samples,
        relay,
        subscriber,
    )


def _delta(now: float | None, before: float | None) -> float | None:
    return None if now is None or before is None else now - before


def measure(proc: subprocess.Popen[bytes], port: int, dsn: str, n: int, timeout: float) -> Run:
    """The scenario against a running relay: sample its RSS while the subscriber counts the rows."""
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        return asyncio.run(subscribe_insert_count(port, dsn, n, timeout, sampler))
    finally:
        sampler.finish()
