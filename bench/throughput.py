"""Relay throughput and latency against ``pg_recvlogical`` on the same slot backlog.

Not part of CI.  Run from the repository root (the package must be importable: ``make bench``,
an installed venv, or ``PYTHONPATH=.``)::

    python bench/throughput.py [--changes 50000] [--rate 1000] [--seconds 10]

What it does, in one run on a throwaway local cluster (migrations + demo schema):

1. creates two wal2json slots and starts the relay in-process on slot 2 with one **live**
   WebSocket subscriber (a separate process, ``service_role`` token, binding ``*`` on
   ``public.bookings``, joined without ``resume_from``);
2. takes slot 2 away from the relay (ends its walsender, holds the slot) and writes a backlog of
   ``--changes`` single-row INSERT transactions (several connections, ``BEGIN; INSERT; COMMIT;``
   batches), so both slots hold the same backlog; the flushed WAL insert position is the end;
3. (a) drains slot 1 with ``pg_recvlogical --start ... -f /dev/null --endpos <lsn>`` using the
   relay's own wal2json options (``wal2json_options`` of the published tables) and times it;
4. (b) gives slot 2 back: the relay drains the backlog through the live fan-out path; the clock
   runs from its stream being up until the subscriber read every change (ids checked: exactly
   the backlog, once each);
5. (b2) a second subscriber joins with ``resume_from`` = the slot's position before the backlog:
   it is fed by the replay task from the window; timed from its join to the last change (ids
   checked), as a ratio to the live drain rate of (b);
6. (c) with the relay streaming, a writer process commits ``--rate`` single-row transactions/s
   for ``--seconds``; each row carries ``time.time()`` taken just before the INSERT (autocommit:
   the statement and its commit are one round trip).  Prints p50/p99/max of receive - send, and
   of receive - commit acknowledgement (the writer's clock right after the commit returned).

Relay settings raised for the bench (printed): ``RELAY_SOCKET_QUEUE_FRAMES`` (a backlog is not a
slow client) and ``RELAY_RESUME_MAX_BYTES`` (the window must hold the whole backlog for (b2)).
A phase that delivers less or other than the backlog exits non-zero instead of printing a rate.

The subscriber and the writer run in their own processes so the relay's event loop is measured
alone; on a 2-core machine they still compete with Postgres for CPU, as a real client would.
CPU seconds of each side (pg_recvlogical or relay, subscriber, walsender) are printed too: they
show which process is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import re
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import orjson
import psycopg
from psycopg import sql
from tablerow import emit
from wsload import run_wait_seconds

from relay.config import Config
from relay.core.changes import Lsn, format_position, seq_before
from relay.core.tokens import mint
from relay.core.wal2json import wal2json_options
from relay.postgres.cluster import LocalCluster, find_pg_bin
from relay.postgres.identity import read_identity
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from relay.service import RunningRelay, start_relay

SECRET = "bench-secret-0123456789-0123456789-abcdef"
SLOT_RECVLOGICAL = "bench_recvlogical"
SLOT_RELAY = "bench_relay"
MESSAGE_PREFIXES = ("realtime",)  # what the relay passes as add-msg-prefixes
# The relay's replication session settings (relay/postgres/replication.py), for a like-for-like run.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres"
SERVICES = ("Haircut", "Colouring", "Manicure", "Massage", "Consultation", "Device repair")
END_MARKER = "END"


# -- backlog -----------------------------------------------------------------------------------
def _insert_sql(i: int, branch_ids: list[int], client_ids: list[int], notes: str) -> str:
    """One realistic booking row as a literal INSERT (all values are generated here, never input)."""
    branch = branch_ids[i % len(branch_ids)]
    client = client_ids[i % len(client_ids)]
    service = SERVICES[i % len(SERVICES)]
    minutes = i % 100_000
    price = 10 + (i % 20_000) / 100
    return (
        "insert into public.bookings (branch_id, client_id, service, status, starts_at, ends_at, price, "
        "tags, details, notes) values "
        f"({branch}, {client}, '{service}', 'pending', "
        f"timestamptz '2025-01-06 09:00+00' + interval '{minutes} minutes', "
        f"timestamptz '2025-01-06 10:00+00' + interval '{minutes} minutes', {price:.2f}, "
        f"'{{bench,backlog}}', '{{\"seq\": {i}, \"source\": \"bench\"}}', '{notes}')"
    )


def _backlog_worker(
    dsn: str,
    ids: range,
    branch_ids: list[int],
    client_ids: list[int],
    errors: list[BaseException],
    batch: int = 250,
) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The WAL (and so what the slots decode) is the same; only the writer waits less.
            conn.execute("set synchronous_commit = off")
            for lo in range(ids.start, ids.stop, batch):
                # Simple-query protocol: explicit BEGIN/COMMIT pairs make each row its own transaction.
                text = "".join(
                    f"begin; {_insert_sql(i, branch_ids, client_ids, 'backlog')}; commit;"
                    for i in range(lo, min(lo + batch, ids.stop))
                )
                conn.execute(text.encode())
    except BaseException as exc:  # reported by the caller
        errors.append(exc)


def make_backlog(dsn: str, n: int, workers: int = 4) -> float:
    """Insert ``n`` one-row transactions from ``workers`` connections; returns seconds taken."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        branch_ids = [r[0] for r in conn.execute("select id from public.branches order by id")]
        client_ids = [r[0] for r in conn.execute("select id from public.clients order by id")]
    step = -(-n // workers)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_backlog_worker, args=(dsn, range(k, min(k + step, n)), branch_ids, client_ids, errors)
        )
        for k in range(0, n, step)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    elapsed = time.perf_counter() - t0
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"backlog creation failed: {errors[:1] or 'timed out'}")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select count(*), count(distinct xmin::text) from public.bookings where notes = 'backlog'"
        ).fetchone()
    assert row is not None
    if row[0] != n or row[1] != n:
        raise RuntimeError(f"backlog has {row[0]} rows in {row[1]} transactions, expected {n}")
    return elapsed


def _end_of_wal(dsn: str, timeout: float = 30.0) -> str:
    """The WAL insert position once it is flushed (the backlog committed asynchronously)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        end = str(conn.execute("select pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = conn.execute("select pg_current_wal_flush_lsn() >= %s::pg_lsn", (end,)).fetchone()
            if row is not None and row[0]:
                return end
            time.sleep(0.05)
    raise RuntimeError(f"WAL not flushed up to {end} within {timeout}s")


def _proc_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by a local process, from /proc; None if gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _slot_pid(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select active_pid from pg_replication_slots where slot_name = %s", (slot,)
        ).fetchone()
    return int(row[0]) if row and row[0] else None


class _WalsenderWatch(threading.Thread):
    """Samples the CPU time of the walsender serving ``slot`` until it exits (or ``stop``)."""

    def __init__(self, dsn: str, slot: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.slot, self.deadline = dsn, slot, deadline
        self.cpu: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        pid = None
        while not self.done.is_set() and time.monotonic() < self.deadline:
            if pid is None:
                pid = _slot_pid(self.dsn, self.slot)
            else:
                cpu = _proc_cpu(pid)
                if cpu is None:
                    break
                self.cpu = cpu
            self.done.wait(0.02)


# -- (a) pg_recvlogical ---------------------------------------------------------------------------
def run_pg_recvlogical(
    dsn: str, options: dict[str, str], endpos: str, timeout: float
) -> tuple[float, float, float | None]:
    """Returns (seconds, pg_recvlogical CPU seconds, walsender CPU seconds)."""
    cmd = [
        str(find_pg_bin() / "pg_recvlogical"),
        "-d",
        dsn,
        "--start",
        "-S",
        SLOT_RECVLOGICAL,
        "--no-loop",
        "-f",
        "/dev/null",
        "--endpos",
        endpos,
    ]
    for k, v in options.items():
        cmd += ["-o", f"{k}={v}"]
    env = dict(os.environ, PGOPTIONS=SESSION_OPTIONS)
    watch = _WalsenderWatch(dsn, SLOT_RECVLOGICAL, time.monotonic() + timeout)
    watch.start()
    c0 = os.times()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - t0
    c1 = os.times()
    watch.done.set()
    watch.join(timeout=5)
    client_cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    if res.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
    with psycopg.connect(dsn) as conn:  # drained: nothing of the backlog is left in the slot
        row = conn.execute(
            "select count(*) from pg_logical_slot_peek_changes(%s, NULL, NULL, 'format-version', '2', "
            "'add-tables', 'public.bookings') where data like '{\"action\":\"I\"%%'",
            (SLOT_RECVLOGICAL,),
        ).fetchone()
    if row is None or row[0] != 0:
        raise RuntimeError(f"pg_recvlogical left {row} changes in the slot: {res.stderr!r}")
    return elapsed, client_cpu, watch.cpu


# -- subscriber (own process) ---------------------------------------------------------------------
# The record's first column is ``id``: taken with a regex, so the client stays cheap (no JSON parse)
# and still proves that every change of the backlog arrived exactly once.
_RECORD_ID = re.compile(r'"record":\{"id":(\d+)')


def subscriber_main(
    url: str, tok: str, n_backlog: int, pipe: Connection, resume_from: str | None, latency: bool
) -> None:
    try:
        asyncio.run(_subscriber(url, tok, n_backlog, pipe, resume_from, latency))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


async def _subscriber(
    url: str, tok: str, n_backlog: int, pipe: Connection, resume_from: str | None, latency: bool
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, params={"apikey": tok, "vsn": "1.0.0"}, max_msg_size=0, compress=0) as ws,
    ):
        config: dict[str, Any] = {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": ""},
            "postgres_changes": [{"event": "*", "schema": "public", "table": "bookings"}],
        }
        if resume_from is not None:  # catch-up: everything after this position, through replay
            config["resume_from"] = resume_from
        join = {
            "topic": "realtime:bench",
            "event": "phx_join",
            "ref": "1",
            "join_ref": "1",
            "payload": {"config": config},
        }
        t_join = time.time()
        await ws.send_str(orjson.dumps(join).decode())
        for _ in range(100):
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket closed while joining: {msg.type} {msg.data!r}")
            m = orjson.loads(msg.data)
            if m["event"] == "phx_reply" and m["ref"] == "1":
                if m["payload"].get("status") != "ok":
                    raise RuntimeError(f"join refused: {m['payload']}")
                break
        else:
            raise RuntimeError("no join reply")
        pipe.send(("joined", t_join))

        # (b) backlog: count frames cheaply (no JSON parsing) so the client costs little CPU.
        cpu0 = time.process_time()
        count = 0
        t_first = 0.0
        ids: set[int] = set()
        while count < n_backlog:
            msg = await ws.receive(timeout=120)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(
                    f"socket closed after {count} changes: {msg.type} {msg.data!r}"
                    f" {ws.close_code} {getattr(ws, 'close_reason', '')}"
                )
            if '"event":"postgres_changes"' in msg.data:
                count += 1
                found = _RECORD_ID.search(msg.data)
                if found:
                    ids.add(int(found.group(1)))
                if count == 1:
                    t_first = time.time()
        pipe.send(("backlog", t_first, time.time(), count, time.process_time() - cpu0, sorted(ids)))
        if not latency:
            return

        # (c) latency: parse every change; stop at the writer's end marker.
        got: list[tuple[int, float, float]] = []  # (id, receive time, send time written in the row)
        for _ in range(10_000_000):
            msg = await ws.receive(timeout=60)
            t = time.time()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket closed during the latency run: {msg.type} {msg.data!r}")
            m = orjson.loads(msg.data)
            if m["event"] != "postgres_changes":
                continue
            rec = m["payload"]["data"]["record"]
            notes = rec["notes"]
            if notes == END_MARKER:
                break
            if notes[:1].isdigit():  # skip the writer's warm-up row
                got.append((int(rec["id"]), t, float(notes)))
        pipe.send(("latency", got))


# -- steady writer (own process) ------------------------------------------------------------------
def writer_main(dsn: str, rate: float, seconds: float, pipe: Connection) -> None:
    try:
        pipe.send(("written", *_write_steady(dsn, rate, seconds)))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))


def _write_steady(dsn: str, rate: float, seconds: float) -> tuple[dict[int, float], float]:
    query = (
        "insert into public.bookings (branch_id, client_id, service, status, starts_at, ends_at, price, "
        "tags, details, notes) values (%s, %s, 'Haircut', 'pending', now(), now() + interval '45 minutes', "
        "35.00, '{bench,live}', '{\"source\": \"bench\"}', %s) returning id"
    )
    acks: dict[int, float] = {}
    n = int(rate * seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        branch, client = conn.execute(
            "select branch_id, id from public.clients order by id limit 1"
        ).fetchone() or (1, 1)
        conn.execute(query, (branch, client, "warm-up"), prepare=True)  # prepare the statement
        start = time.monotonic() + 0.1
        hard_stop = start + 3 * seconds  # bounded even if the database cannot keep the pace
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif time.monotonic() > hard_stop:
                break
            sent = time.time()
            row = conn.execute(query, (branch, client, repr(sent)), prepare=True).fetchone()
            acks[int(row[0])] = time.time()  # type: ignore[index]
        achieved = len(acks) / (time.monotonic() - start)
        conn.execute(query, (branch, client, END_MARKER))
    return acks, achieved


# -- orchestration --------------------------------------------------------------------------------
async def _recv(pipe: Connection, proc: BaseProcess, limit: float, what: str) -> tuple[Any, ...]:
    """Wait for the next message from a child process without blocking the relay's loop."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if pipe.poll():
            msg = pipe.recv()
            if msg[0] == "error":
                raise RuntimeError(f"{what}: {msg[1]}")
            return tuple(msg)
        if not proc.is_alive() and not pipe.poll():
            raise RuntimeError(f"{what}: the child process exited ({proc.exitcode})")
        await asyncio.sleep(0.005)
    raise TimeoutError(f"timed out waiting for {what}")


def _take_slot(dsn: str, options: dict[str, str]) -> psycopg.Connection[Any]:
    """End the relay's walsender and occupy its slot (active, never confirmed) ourselves.

    The relay retries until the slot is free again, so the backlog written meanwhile reaches its
    *live* subscriber through the live fan-out path when the bench lets go (as in bench/authz.py).
    """
    opts = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options.items()
    )
    deadline = time.monotonic() + 30
    while True:  # bounded: the relay may win the slot back a few times before we get it
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = %s and active_pid is not null",
                (SLOT_RELAY,),
            )
        conn = psycopg.connect(dsn, replication="database", autocommit=True)
        try:
            conn.cursor().execute(
                sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0 ({})").format(sql.Identifier(SLOT_RELAY), opts)
            )
            return conn
        except psycopg.Error:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _backlog_ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0] for r in conn.execute("select id from public.bookings where notes = 'backlog' order by id")
        ]


class _ExpectedNoise(logging.Filter):
    """Hide the relay's retry warnings while the bench deliberately holds its slot."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "is active for PID" not in msg and "server shutting down" not in msg


def _fmt_cpu(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}s"


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _check_ids(who: str, count: int, got: list[int], expected: list[int]) -> None:
    """A bench that delivered nothing, or not exactly the backlog, fails instead of printing a rate."""
    if count != len(expected) or got != expected:
        missing = len(set(expected) - set(got))
        raise SystemExit(
            f"bench invalid: {who} received {count} change frames with {len(got)} distinct backlog ids, "
            f"expected exactly the {len(expected)} backlog rows ({missing} missing): not printing a rate"
        )


async def run_relay_phases(dsn: str, options: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """(a), (b) live drain, (b2) catch-up through replay, (c) latency; one relay, one backlog."""
    n: int = args.changes
    ctx = mp.get_context("spawn")
    for name in ("relay.pipeline", "relay.socket"):
        logging.getLogger(name).addFilter(_ExpectedNoise())
    cfg = Config(
        database_url=dsn,
        jwt_secret=SECRET,
        host="127.0.0.1",
        port=0,
        slot=SLOT_RELAY,
        log_level="WARNING",
        socket_queue_frames=args.queue_frames,
        # the catch-up phase replays the whole backlog from the window: it must fit (the default
        # 64 MiB holds about 45,000 bookings rows)
        resume_max_bytes=args.resume_max_bytes,
    )
    relay: RunningRelay = await start_relay(cfg)
    url = f"http://127.0.0.1:{relay.port}/realtime/v1/websocket"
    tok = mint(SECRET, role="service_role", ttl=3600, claims={})
    live_pipe, live_child = ctx.Pipe()
    live = ctx.Process(target=subscriber_main, args=(url, tok, n, live_child, None, True), daemon=True)
    live.start()
    catch: BaseProcess | None = None
    writer: BaseProcess | None = None
    blocker: psycopg.Connection[Any] | None = None
    out: dict[str, Any] = {}
    try:
        await _recv(live_pipe, live, 60, "the live subscriber to join")
        blocker = await asyncio.to_thread(_take_slot, dsn, options)
        row = await asyncio.to_thread(
            _query_one, dsn, "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s"
        )
        # positions carry the stream identity; a position without it would get resync_needed
        stream = await read_identity(dsn, SLOT_RELAY)
        resume_from = format_position(seq_before(Lsn.parse(row)), stream.id)

        backlog_s = await asyncio.to_thread(make_backlog, dsn, n, args.workers)
        endpos = await asyncio.to_thread(_end_of_wal, dsn)
        expected = await asyncio.to_thread(_backlog_ids, dsn)
        out.update(backlog_s=backlog_s, endpos=endpos)

        # (a) the slot's limit, with the relay cut off (it only retries, about once a second)
        recv_s, recv_cpu, recv_ws_cpu = await asyncio.to_thread(run_pg_recvlogical, dsn, options, endpos, 600)
        out.update(recv_s=recv_s, recv_rate=n / recv_s, recv_cpu=recv_cpu, recv_ws_cpu=recv_ws_cpu)
        await asyncio.to_thread(
            _query_one, dsn, "select pg_drop_replication_slot(%s)::text", SLOT_RECVLOGICAL
        )

        # (b) live drain: give the slot back; the clock runs from the relay's stream being up
        assert not relay.pipeline.stats.streaming, "the relay still streams while the bench holds its slot"
        blocker.close()
        deadline = time.monotonic() + 60
        while not relay.pipeline.stats.streaming:
            assert time.monotonic() < deadline, "the relay did not take its slot back"
            await asyncio.sleep(0.001)
        t0, cpu0, wait0 = time.time(), time.process_time(), run_wait_seconds() or 0.0
        walsender = await asyncio.to_thread(_slot_pid, dsn, SLOT_RELAY)
        ws_cpu0 = _proc_cpu(walsender)
        _, t_first, t_last, count, sub_cpu, ids = await _recv(live_pipe, live, 600, f"{n} changes, live")
        relay_cpu = time.process_time() - cpu0
        relay_wait = (run_wait_seconds() or 0.0) - wait0
        ws_cpu1 = _proc_cpu(walsender)
        _check_ids("the live subscriber", count, ids, expected)
        out.update(
            relay_s=t_last - t0,
            relay_rate=count / (t_last - t0),
            first_change_after_s=t_first - t0,
            relay_cpu=relay_cpu,
            relay_wait=relay_wait,
            subscriber_cpu=sub_cpu,
            walsender_cpu=ws_cpu1 - ws_cpu0 if ws_cpu0 is not None and ws_cpu1 is not None else None,
        )

        # (b2) catch-up: a client resuming from before the backlog is fed by the replay task
        c_pipe, c_child = ctx.Pipe()
        catch = ctx.Process(
            target=subscriber_main, args=(url, tok, n, c_child, resume_from, False), daemon=True
        )
        cpu0 = time.process_time()  # before the join: the replay starts with the join's reply
        catch.start()
        _, t_join = await _recv(c_pipe, catch, 60, "the resuming subscriber to join")
        _, _, c_last, c_count, c_cpu, c_ids = await _recv(c_pipe, catch, 600, f"{n} changes, resumed")
        _check_ids("the resuming subscriber", c_count, c_ids, expected)
        out.update(
            catchup_s=c_last - t_join,
            catchup_rate=c_count / (c_last - t_join),
            catchup_relay_cpu=time.process_time() - cpu0,
            catchup_sub_cpu=c_cpu,
        )

        # (c) latency at a steady rate, to the live subscriber
        w_pipe, w_child = ctx.Pipe()
        writer = ctx.Process(target=writer_main, args=(dsn, args.rate, args.seconds, w_child), daemon=True)
        writer.start()
        _, acks, achieved = await _recv(w_pipe, writer, 4 * args.seconds + 60, "the writer")
        _, got = await _recv(live_pipe, live, 60, "the subscriber's latency samples")
        from_send = [(t - sent) * 1000 for _, t, sent in got]
        from_ack = [(t - acks[i]) * 1000 for i, t, _ in got if i in acks]
        out.update(
            written=len(acks), received=len(got), achieved_rate=achieved, lat_send=from_send, lat_ack=from_ack
        )
        return out
    finally:
        if blocker is not None and not blocker.closed:
            blocker.close()
        for p in (live, catch, writer):
            if p is not None:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
        await relay.stop()


def _query_one(dsn: str, query: str, slot: str = SLOT_RELAY) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode(), (slot,)).fetchone()
    assert row is not None
    return row[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=50_000, help="backlog size (single-row transactions)")
    ap.add_argument("--rate", type=float, default=1000.0, help="latency run: transactions per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="latency run: duration")
    ap.add_argument("--workers", type=int, default=4, help="connections creating the backlog")
    ap.add_argument(
        "--queue-frames",
        type=int,
        default=1_000_000,
        help="relay per-socket queue bound (RELAY_SOCKET_QUEUE_FRAMES; raised so a backlog is not cut)",
    )
    ap.add_argument(
        "--resume-max-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="RELAY_RESUME_MAX_BYTES (raised from 64 MiB so the catch-up replays the whole backlog)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.changes < 1 or args.rate <= 0 or not 0 < args.seconds <= 120:
        ap.error("need --changes >= 1, --rate > 0 and 0 < --seconds <= 120")

    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
    print(
        f"relay config raised for the bench: RELAY_SOCKET_QUEUE_FRAMES={args.queue_frames}, "
        f"RELAY_RESUME_MAX_BYTES={args.resume_max_bytes}"
    )
    cluster = LocalCluster().start()
    try:
        dsn = cluster.dsn()
        apply_migrations(dsn)
        apply_demo_schema(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("show server_version").fetchone()
            for slot in (SLOT_RECVLOGICAL, SLOT_RELAY):
                conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
            tables = [
                (str(s), str(t))
                for s, t in conn.execute(
                    "select schemaname, tablename from pg_publication_tables "
                    "where pubname = 'supabase_realtime' order by 1, 2"
                )
            ]
        options = wal2json_options(tables, MESSAGE_PREFIXES)
        print(f"postgres {version[0] if version else '?'}; published tables: {len(tables)}")

        n = args.changes
        r = asyncio.run(run_relay_phases(dsn, options, args))
        print(
            f"backlog: {n} single-row INSERT transactions in {r['backlog_s']:.1f}s "
            f"({n / r['backlog_s']:,.0f} TPS, {args.workers} connections), written while the bench "
            f"held the relay's slot; end LSN {r['endpos']}"
        )
        recv_rate = r["recv_rate"]
        print(f"(a) pg_recvlogical: {n} changes in {r['recv_s']:.2f}s = {recv_rate:,.0f} changes/s")
        print(f"    CPU: pg_recvlogical {r['recv_cpu']:.2f}s, walsender {_fmt_cpu(r['recv_ws_cpu'])}")
        print(
            f"(b) relay -> 1 live WebSocket subscriber: {n} changes in {r['relay_s']:.2f}s = "
            f"{r['relay_rate']:,.0f} changes/s "
            f"(first change after {r['first_change_after_s'] * 1000:.0f} ms; "
            "every backlog id received exactly once)"
        )
        print(
            f"    CPU: relay process {r['relay_cpu']:.2f}s ({r['relay_cpu'] / n * 1e6:.0f} us/change), "
            f"subscriber {r['subscriber_cpu']:.2f}s, walsender {_fmt_cpu(r['walsender_cpu'])}; relay waited "
            f"{r['relay_wait']:.2f}s for a CPU (run queue)"
        )
        drain = r["relay_rate"] / recv_rate
        print(f"    ratio relay / pg_recvlogical = {drain:.2f}x (aim >= 0.9x)")
        catchup = r["catchup_rate"] / r["relay_rate"]
        print(
            f"(b2) resuming subscriber (replay path): {n} changes in {r['catchup_s']:.2f}s = "
            f"{r['catchup_rate']:,.0f} changes/s from its join; CPU relay {r['catchup_relay_cpu']:.2f}s, "
            f"subscriber {r['catchup_sub_cpu']:.2f}s"
        )
        print(f"    ratio catch-up / live drain = {catchup:.2f}x (aim >= 0.9x)")
        ls, la = r["lat_send"], r["lat_ack"]
        print(
            f"(c) latency at {args.rate:,.0f} TPS target for {args.seconds:.0f}s, 1 subscriber: "
            "writer achieved "
            f"{r['achieved_rate']:,.0f} TPS; {r['received']}/{r['written']} changes received"
        )
        if ls:
            print(
                f"    commit->client (send stamp before INSERT+COMMIT): p50 {_pct(ls, 0.5):.2f} ms, "
                f"p99 {_pct(ls, 0.99):.2f} ms, max {max(ls):.2f} ms"
            )
        if la:
            print(
                f"    commit ack->client (lower bound):                 p50 {_pct(la, 0.5):.2f} ms, "
                f"p99 {_pct(la, 0.99):.2f} ms, max {max(la):.2f} ms"
            )
        if r["received"] != r["written"]:
            print(f"bench invalid: the latency run delivered {r['received']} of {r['written']} changes")
            return 1
        emit(
            "drain",
            f"{r['relay_rate']:,.0f} changes/s",
            f"pg_recvlogical {recv_rate:,.0f} changes/s",
            round(drain, 3),
            ">= 0.9x",
            changes=n,
            relay_cpu_us_per_change=round(r["relay_cpu"] / n * 1e6),
        )
        emit(
            "catchup",
            f"{r['catchup_rate']:,.0f} changes/s",
            f"live drain {r['relay_rate']:,.0f} changes/s",
            round(catchup, 3),
            ">= 0.9x",
            changes=n,
        )
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
