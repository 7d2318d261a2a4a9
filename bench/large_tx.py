"""One huge transaction through ``relay serve``: relay peak RSS and rows/s against Postgres itself.

Not part of CI (tests/integration/test_large_tx.py is the assertion; this prints numbers).  Run
from the repository root (the package must be importable: ``make bench``, an installed venv, or
``PYTHONPATH=.``)::

    python bench/large_tx.py [--rows 1000000] [--resume-max-bytes BYTES]

What it does, in one run on a throwaway local cluster (migrations + one three-column table):

1. creates a wal2json slot for the baseline, then starts ``relay serve`` as a subprocess (its
   RSS is then its own) with one WebSocket subscriber in this process (``service_role``);
2. inserts ``--rows`` rows in ONE transaction and times it until the commit returned
   (baseline 1: what Postgres needs to write the transaction);
3. counts every row on the socket (each id exactly once, positions increasing, one commit LSN)
   and times commit -> last row, while sampling the relay's VmRSS from ``/proc`` (and reading
   its VmHWM at the end);
4. stops the relay, then decodes the same transaction from the baseline slot with
   ``pg_logical_slot_get_changes`` and the relay's own wal2json options, counted in SQL and
   thrown away (baseline 2: Postgres + wal2json alone, with no client and no network).

Why these baselines: absolute rows/s depend on the machine; the ratios say how much of the cost
is the relay.  Decoding happens only after the commit (wal2json does not stream in-progress
transactions), so the relay's time is measured from the commit too.  The baseline decode runs
after the relay stopped, so the two never compete for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg

from relay.core.tokens import mint
from relay.core.wal2json import wal2json_options
from relay.postgres.cluster import LocalCluster, free_port
from relay.postgres.migrate import apply_migrations

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-0123456789-0123456789-abcdef"
TABLE = "large_tx"
SLOT_RELAY = "bench_large_tx_relay"
SLOT_BASELINE = "bench_large_tx_baseline"
# The relay's replication session settings (relay/postgres/replication.py), for a like-for-like decode.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"
MIB = 1024 * 1024


# -- relay memory --------------------------------------------------------------------------------
def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """VmRSS of the relay every ``interval`` seconds; VmHWM at the end catches peaks in between."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.hwm_kib = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = status_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.samples.append((time.monotonic(), rss))
            self._halt.wait(self.interval)

    def finish(self) -> None:
        if self._halt.is_set():
            return
        self.hwm_kib = status_kib(self.pid, "VmHWM") or 0
        self._halt.set()
        self.join(timeout=5)

    @property
    def peak_kib(self) -> int:
        return max([self.hwm_kib, *(rss for _, rss in self.samples)])

    def curve(self, t0: float, t1: float, points: int = 16) -> str:
        span = [kib for t, kib in self.samples if t0 <= t <= t1]
        step = max(1, len(span) // points)
        return " ".join(f"{kib / 1024:.0f}" for kib in span[::step]) or "(no samples)"


# -- setup ---------------------------------------------------------------------------------------
def prepare(dsn: str) -> None:
    """Migrations, the table (enabled for the relay), and the baseline slot before any row."""
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table public.{TABLE} (id bigint primary key, label text not null, qty int)")
        conn.execute(f"select realtime.enable_table('public.{TABLE}')")
        conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (SLOT_BASELINE,))


@contextlib.contextmanager
def relay_serve(
    dsn: str, log_path: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``relay serve --no-migrate`` on a free port, output to a file; SIGINT (then kill) by PID."""
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_DATABASE_URL": dsn,
        "RELAY_JWT_SECRET": SECRET,
        "RELAY_PORT": str(port),
        "RELAY_SLOT": SLOT_RELAY,
        "RELAY_LOG_LEVEL": "WARNING",
        **env,
    }
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--no-migrate"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def wait_streaming(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"relay serve exited ({proc.returncode}); see its log")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/health") as r:
                    if (await r.json())["status"] == "ok":
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError("relay serve did not start streaming")


# -- the transaction and its subscriber ----------------------------------------------------------
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
    """Every row exactly once, positions increasing, one commit LSN: one byte per expected row."""

    n: int
    seen: bytearray = field(init=False)
    rows: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    frame_bytes: int = 0
    commit_lsns: set[str] = field(default_factory=set)
    last_position: str = ""
    first_at: float = 0.0
    last_at: float = 0.0

    def __post_init__(self) -> None:
        self.seen = bytearray(self.n + 1)

    def add(self, data: str) -> None:
        msg = orjson.loads(data)
        if msg.get("event") != "postgres_changes":
            return
        change = msg["payload"]["data"]
        rid = change["record"]["id"]
        if self.rows == 0:
            self.first_at = time.monotonic()
        self.rows += 1
        self.frame_bytes += len(data)
        if 1 <= rid <= self.n and not self.seen[rid]:
            self.seen[rid] = 1
        else:
            self.duplicates += 1
        pos = change["position"]
        if pos <= self.last_position:
            self.out_of_order += 1
        self.last_position = pos
        self.commit_lsns.add(pos.partition(":")[0])

    @property
    def complete(self) -> bool:
        return (
            self.rows == self.n
            and sum(self.seen) == self.n
            and self.duplicates == 0
            and self.out_of_order == 0
            and len(self.commit_lsns) == 1
        )


async def heartbeats(ws: aiohttp.ClientWebSocketResponse, every: float = 20.0) -> None:
    """Phoenix heartbeats as real clients send them: the relay drops sockets silent for 60 s."""
    ref = 0
    while True:
        await asyncio.sleep(every)
        ref += 1
        await ws.send_str(
            orjson.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": f"h{ref}"}).decode()
        )


@dataclass
class RelayRun:
    tally: Tally
    baseline_kib: int
    insert_started: float
    committed: float
    subscriber_cpu: float


async def subscribe_and_insert(port: int, dsn: str, n: int, timeout: float, pid: int) -> RelayRun:
    """Join, take the idle baseline RSS, insert the transaction and count it off the socket."""
    url = f"http://127.0.0.1:{port}/realtime/v1/websocket"
    tally = Tally(n)
    params = {"apikey": mint(SECRET, role="service_role"), "vsn": "1.0.0"}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, params=params, max_msg_size=0, compress=0) as ws,
    ):
        bindings = [{"event": "*", "schema": "public", "table": TABLE}]
        join: dict[str, Any] = {"topic": "realtime:bench", "event": "phx_join", "ref": "1", "join_ref": "1"}
        join["payload"] = {"config": {"postgres_changes": bindings}}
        await ws.send_str(orjson.dumps(join).decode())
        reply = orjson.loads(await ws.receive_str(timeout=10))
        if reply["payload"].get("status") != "ok":
            raise RuntimeError(f"join refused: {reply}")
        await asyncio.sleep(0.5)
        baseline = status_kib(pid, "VmRSS") or 0
        started = time.monotonic()
        cpu0 = time.process_time()
        insert = asyncio.create_task(asyncio.to_thread(insert_one_transaction, dsn, n))
        beats = asyncio.create_task(heartbeats(ws))
        deadline = started + timeout
        try:
            while tally.rows < n and time.monotonic() < deadline:
                if insert.done() and insert.exception() is not None:
                    break
                try:
                    msg = await ws.receive(timeout=1.0)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"socket closed after {tally.rows} rows: {msg.type} {msg.extra!r}")
                tally.add(msg.data)
            tally.last_at = time.monotonic()
        finally:
            beats.cancel()
        committed = await insert
    return RelayRun(tally, baseline, started, committed, time.process_time() - cpu0)


# -- baseline 2: Postgres + wal2json alone -------------------------------------------------------
def decode_baseline(dsn: str, n: int) -> float:
    """Seconds to decode the transaction from the baseline slot with the relay's options, counted."""
    opts = wal2json_options([("public", TABLE)], ("realtime",))
    args = ", ".join("%s, %s" for _ in opts)
    params: list[str] = [SLOT_BASELINE]
    for k, v in opts.items():
        params += [k, v]
    with psycopg.connect(dsn, autocommit=True, options=SESSION_OPTIONS) as conn:
        t0 = time.perf_counter()
        row = conn.execute(
            'select count(*) filter (where data like \'{"action":"I"%%\') '
            f"from pg_logical_slot_get_changes(%s, NULL, NULL, {args})",
            params,
        ).fetchone()
        elapsed = time.perf_counter() - t0
    if row is None or row[0] != n:
        raise RuntimeError(f"baseline decoded {row} rows, expected {n}")
    return elapsed


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the one transaction")
    ap.add_argument(
        "--resume-max-bytes",
        type=int,
        default=None,
        help="RELAY_RESUME_MAX_BYTES for the relay (default: the relay's own, 64 MiB)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed for delivery")
    ap.add_argument("--aim-mib", type=float, default=300, help="peak RSS aim, reported (not enforced)")
    args = ap.parse_args(argv)
    n: int = args.rows
    env = {} if args.resume_max_bytes is None else {"RELAY_RESUME_MAX_BYTES": str(args.resume_max_bytes)}

    with LocalCluster() as pg:
        dsn = pg.dsn()
        prepare(dsn)
        assert pg.base_dir is not None
        log_path = pg.base_dir / "relay.log"
        with relay_serve(dsn, log_path, env) as (proc, port):
            asyncio.run(wait_streaming(port, proc))
            sampler = RssSampler(proc.pid)
            sampler.start()
            cpu0 = cpu_seconds(proc.pid) or 0.0
            try:
                run = asyncio.run(subscribe_and_insert(port, dsn, n, args.timeout, proc.pid))
            finally:
                sampler.finish()
            relay_cpu = (cpu_seconds(proc.pid) or 0.0) - cpu0
            alive = proc.poll() is None
        if not alive:
            print(log_path.read_text()[-4000:], file=sys.stderr)
        decode_s = decode_baseline(dsn, n)

    t = run.tally
    insert_s = run.committed - run.insert_started
    relay_s = t.last_at - run.committed
    first_s = t.first_at - run.committed if t.first_at else float("nan")
    peak, base = sampler.peak_kib / 1024, run.baseline_kib / 1024
    print(f"rows in one transaction : {n:,} ({t.frame_bytes / MIB:.0f} MiB of frames delivered)")
    print(
        f"delivery                : {'complete' if t.complete else 'INCOMPLETE'} "
        f"({t.rows:,} rows, {t.duplicates} duplicates/out of range, {t.out_of_order} out of order, "
        f"{len(t.commit_lsns)} commit LSN(s))"
    )
    print(
        f"relay RSS               : baseline {base:.1f} MiB, peak {peak:.1f} MiB "
        f"(growth {peak - base:.1f} MiB)"
    )
    print(
        f"                          VmHWM {sampler.hwm_kib / 1024:.1f} MiB; aim <= {args.aim_mib:.0f} MiB: "
        f"{'met' if peak <= args.aim_mib else 'NOT met'}"
    )
    print(f"relay RSS over delivery : {sampler.curve(run.insert_started, t.last_at)} (MiB)")
    print(f"(1) insert + commit     : {insert_s:.2f} s = {n / insert_s:,.0f} rows/s")
    print(
        f"(2) wal2json decode only: {decode_s:.2f} s = {n / decode_s:,.0f} rows/s "
        "(pg_logical_slot_get_changes, counted in SQL)"
    )
    print(
        f"(3) relay, commit->last : {relay_s:.2f} s = {t.rows / relay_s:,.0f} rows/s "
        f"(first row after {first_s:.2f} s; relay CPU {relay_cpu:.1f} s = "
        f"{relay_cpu / max(1, t.rows) * 1e6:.0f} us/row; subscriber CPU {run.subscriber_cpu:.1f} s)"
    )
    print(f"ratio relay / decode    : {decode_s / relay_s:.2f}  (1.0 = as fast as Postgres decodes)")
    print(f"ratio relay / insert    : {insert_s / relay_s:.2f}  (1.0 = delivers as fast as Postgres writes)")
    return 0 if t.complete and alive else 1


if __name__ == "__main__":
    sys.exit(main())
