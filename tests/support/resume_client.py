"""A resuming subscriber, and the chaos scenario that crashes the relay under it.

Why a subscriber of its own: :class:`tests.support.relay.PhoenixClient` drives the protocol one
frame at a time, which is what protocol tests need.  A crash test needs the opposite: a
subscriber that behaves like a well-written dashboard on its own (remembers the last position it
processed, reconnects when the socket dies, rejoins with ``resume_from``) while the test breaks
things around it, and that keeps a record of everything it was sent so the test can judge the
relay.  Each of its sockets is a PhoenixClient, so the wire format is written once.

Why the scenario lives here too: the CI test (tests/integration/test_chaos.py) and the long run
(bench/chaos.py) must exercise exactly the same thing, only for longer; one definition keeps a
green CI run meaning what the long run means.

Everything here is bounded: reconnects give up after an outage longer than ``give_up_s``, every
wait has a timeout, and :meth:`ResumeClient.stop` leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from relay.postgres.cluster import free_port
from relay.postgres.migrate import apply_demo_schema, apply_migrations
from tests.support.relay import SECRET, PhoenixClient, token
from tests.support.relay_process import health, log_tail, relay_env, spawn_relay, wait_streaming

__all__ = [
    "AUDITOR_POLICY",
    "TABLES",
    "ChaosResult",
    "Received",
    "RelayProcess",
    "ResumeClient",
    "SubscriberReport",
    "SubscriberSpec",
    "Writer",
    "chaos_seed",
    "default_subscribers",
    "expected_rows",
    "install_auditor_policy",
    "run_chaos",
]

# The demo tables the writer fills: inserts need only a branch (and a staff row for
# attendance), and each has a branch-scoped row policy, so branch members see different subsets.
TABLES = ("alerts", "attendance", "payments")


# ---------------------------------------------------------------------------------------------
# The resuming subscriber
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Received:
    """One change as the subscriber got it: enough to check order, gaps and duplicates."""

    position: str
    table: str
    id: int


class _Rejoin(Exception):
    """The relay closed or refused our channel: start over on a new socket."""

    def __init__(self, reason: str, joined: bool) -> None:
        super().__init__(reason)
        self.joined = joined


class ResumeClient:
    """Subscribes one channel and keeps it subscribed across relay crashes and dropped sockets.

    The resume position is the position of the last change processed; before the first change it
    is the ``position`` of the Subscribed / Resumed system event (where the relay started this
    channel), so even a subscriber that has seen nothing yet can resume without a gap.  A
    ``resync_needed`` moves it to where the relay says delivery continues (and is recorded: in a
    healthy run there is none).
    """

    def __init__(
        self,
        name: str,
        port: int,
        tok: str,
        bindings: list[dict[str, Any]],
        *,
        heartbeat_s: float = 2.0,
        give_up_s: float = 60.0,
        seed: int = 0,
        vsn: str = "1.0.0",
    ) -> None:
        self.name = name
        self.vsn = vsn
        self.port = port
        self.token = tok
        self.bindings = bindings
        self.topic = f"realtime:chaos-{name}"
        self.heartbeat_s = heartbeat_s
        self.give_up_s = give_up_s
        self._rng = random.Random(seed)
        self.changes: list[Received] = []
        self.resyncs: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.events: list[str] = []  # a short diary (connects, resumes, drops) for failure reports
        self.position: str | None = None
        self.connects = 0
        self.joins = 0
        self.resumes = 0
        self.replayed = 0
        self.drops = 0
        self.gave_up: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop = asyncio.Event()
        self._positioned = asyncio.Event()
        self._away_until = 0.0
        self._attempt = 0  # failed connects since the last successful join
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"resume-client {self.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the socket and wait for the run loop; cancel it only if it does not end in time."""
        self._stop.set()
        await self._close_socket(abrupt=False)
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            self.errors.append(f"run loop did not stop within {timeout}s; cancelled")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_positioned(self, timeout: float) -> None:
        """Until the first join told us where the channel starts (before that nothing can resume)."""
        await asyncio.wait_for(self._positioned.wait(), timeout)

    async def disconnect(self, abrupt: bool = False, away: float = 0.0) -> bool:
        """Drop the current socket (as a network failure would); the run loop reconnects.

        ``away`` keeps the client offline that long first, so the resume has a long replay to
        serve: replays that outlast one socket write are where live changes meet the replay.
        """
        if self._ws is None:
            return False
        self.drops += 1
        self._away_until = time.monotonic() + away
        how = "abrupt" if abrupt else "close frame"
        self._note(f"forced disconnect ({how}{f', away {away:.1f}s' if away else ''})")
        await self._close_socket(abrupt)
        return True

    async def _close_socket(self, abrupt: bool) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        if abrupt:
            # A dead network, not a goodbye: no close frame, both ends just see the TCP stream end.
            sock = ws.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3.0)

    # -- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        """Connect, join, read until the socket ends; again, with backoff, until stopped or given up."""
        failing_since: float | None = None
        attempt = self._attempt = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=3.0, sock_connect=3.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                joined = False
                try:
                    joined = await self._session(session)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    if attempt == 0:  # the first of a series is enough for the diary
                        self._note(f"connection failed: {type(exc).__name__}: {exc}")
                except _Rejoin as exc:
                    joined = exc.joined  # a refused join counts towards giving up
                    self._note(f"rejoin: {exc}")
                except Exception as exc:  # a frame we cannot read: a finding, not a reason to retry
                    self.errors.append(f"client failed: {type(exc).__name__}: {exc}")
                    self._note(self.errors[-1])
                    break
                if self._stop.is_set():
                    break
                now = time.monotonic()
                if joined:
                    failing_since, attempt = None, 0
                else:
                    failing_since = failing_since or now
                    attempt += 1
                    if now - failing_since > self.give_up_s:
                        self.gave_up = f"no successful join for {now - failing_since:.1f}s"
                        self._note("giving up: " + self.gave_up)
                        break
                self._attempt = attempt
                delay = min(0.5, 0.02 * 2**attempt) * self._rng.uniform(0.5, 1.0)
                delay = max(delay, self._away_until - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, session: aiohttp.ClientSession) -> bool:
        """One socket: join (resuming when we have a position), then read; True once joined."""
        url = f"http://127.0.0.1:{self.port}/realtime/v1/websocket"
        params = {"apikey": self.token, "vsn": self.vsn}
        async with session.ws_connect(
            url, params=params, autoping=True, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
        ) as ws:
            self._ws = ws
            client = PhoenixClient(ws, session, self.vsn, keep=False)
            try:
                if self._stop.is_set():
                    return False
                self.connects += 1
                join_ref = await self._join(client)
                return await self._read(client, join_ref)
            finally:
                self._ws = None

    async def _join(self, client: PhoenixClient) -> str:
        extra = {} if self.position is None else {"resume_from": self.position}
        payload = PhoenixClient.join_payload(self.bindings, self.token, **extra)
        ref = client.next_ref()
        await client.send(self.topic, "phx_join", payload, join_ref=ref, ref=ref)
        self._note(f"join (resume_from={self.position})")
        return ref

    async def _read(self, client: PhoenixClient, join_ref: str) -> bool:
        """Handle frames until the socket ends; heartbeats keep the relay from closing us as silent.

        The relay answers every heartbeat, so three intervals without any frame means the peer is
        gone without the TCP stream saying so: treated like a closed socket.
        """
        joined = False
        next_beat = time.monotonic() + self.heartbeat_s
        last_frame = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_frame > 3 * self.heartbeat_s:
                self._note("relay silent; dropping the socket")
                return joined
            try:
                m = await client.next_frame(max(0.01, next_beat - now))
            except TimeoutError:
                with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                    await client.send("phoenix", "heartbeat", {})
                next_beat = time.monotonic() + self.heartbeat_s
                continue
            if m is None:
                self._note(f"socket ended (close code {client.ws.close_code})")
                return joined
            last_frame = time.monotonic()
            joined = self._handle(m, join_ref) or joined
        return joined

    def _handle(self, m: dict[str, Any], join_ref: str) -> bool:
        """Process one frame; True when it is the ok reply to our join."""
        event, payload = m.get("event"), m.get("payload") or {}
        if m.get("topic") != self.topic:
            return False  # heartbeat replies
        if event == "postgres_changes":
            data = payload["data"]
            row = data.get("record") or data.get("old_record") or {}
            pos = str(data["position"])
            self.changes.append(Received(pos, str(data["table"]), int(row["id"])))
            if self.position is None or pos > self.position:
                self.position = pos
            return False
        if event == "system":
            self._system(payload)
            return False
        if event == "phx_reply" and m.get("ref") == join_ref:
            if payload.get("status") != "ok":
                self.errors.append(f"join refused: {payload}")
                raise _Rejoin(f"join refused: {payload}", joined=False)
            self.joins += 1
            self._note(f"joined{f' after {self._attempt} failed attempts' if self._attempt else ''}")
            return True
        if event in ("phx_close", "phx_error"):
            raise _Rejoin(f"relay sent {event}", joined=True)
        return False

    def _system(self, p: dict[str, Any]) -> None:
        pos = p.get("position")
        if p.get("status") == "error":
            if p.get("code") == "resync_needed":
                self.resyncs.append(p)
                self._note(f"resync_needed: {p.get('message')}")
                if isinstance(pos, str):
                    self.position = pos
                    self._positioned.set()
            else:
                self.errors.append(f"system error: {p}")
            return
        message = str(p.get("message", ""))
        if message.startswith("Resumed"):
            self.resumes += 1
            self.replayed += int(p.get("replayed", 0))
            self._note(f"resumed: replayed {p.get('replayed')} after {p.get('resumed_from')}, now {pos}")
        if isinstance(pos, str) and not self.changes:
            # Nothing processed yet: where the relay started this channel is where we resume from.
            self.position = pos
        if self.position is not None:
            self._positioned.set()

    def _note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self._t0:7.2f}s {self.name}: {what}")
        del self.events[:-200]


# ---------------------------------------------------------------------------------------------
# The relay as a process the scenario can SIGKILL
# ---------------------------------------------------------------------------------------------
class RelayProcess:
    """``relay serve`` in a subprocess: only a process of its own can be killed without warning."""

    def __init__(self, dsn: str, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.port = port
        self.log_path = log_path
        self.env = relay_env(
            dsn,
            port,
            SECRET,
            "chaos_relay",
            {
                "RELAY_HOST": "127.0.0.1",
                "RELAY_PUBLICATION_POLL": "0.5",
                "RELAY_LOG_LEVEL": "INFO",
                **(env or {}),
            },
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int] = []  # exit codes of relays that ended before we killed them

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "relay already running"
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== relay start #{self.starts} =====\n".encode())
            logf.flush()
            self.proc = spawn_relay(self.env, logf)

    def kill(self) -> None:
        """SIGKILL the relay we started (by its pid) and reap it; note it if it had died by itself."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        else:
            self.exits.append(proc.returncode)

    def terminate(self) -> None:
        """Orderly stop (SIGTERM), SIGKILL if it does not go within 10 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        return await health(session, self.port)

    async def wait_streaming(self, timeout: float = 30.0) -> dict[str, Any]:
        """Until /health says the replication stream runs; fails early if the process died."""
        return await wait_streaming(self.port, self.proc, self.log_tail, timeout)

    async def stats(self) -> dict[str, Any] | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            return await self.health(session)

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


# ---------------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------------
class Writer(threading.Thread):
    """Commits numbered rows into :data:`TABLES` until stopped, one connection, one at a time.

    Why one connection: its commits are serial, so the row number (kept in a text column of
    every row) is also the commit order, and the expected delivery order can be read back from
    the database at the end instead of being recorded here.  Transactions mix sizes (mostly one
    row, some a few rows across tables, a few large) because a crash in the middle of a
    multi-row transaction is the interesting case for resume positions.
    """

    def __init__(self, dsn: str, seed: int, pause: tuple[float, float] = (0.005, 0.03)) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.pause = pause
        self.stopping = threading.Event()
        self.transactions = 0
        self.rows = 0
        self.error: BaseException | None = None

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by the scenario, not lost in a thread
            self.error = exc

    def _write(self) -> None:
        rng = self.rng
        with psycopg.connect(self.dsn) as conn:
            staff = conn.execute("select id, user_id, branch_id from staff order by id").fetchall()
            conn.commit()
            n = 0
            while not self.stopping.wait(rng.uniform(*self.pause)):
                r = rng.random()
                size = 1 if r < 0.55 else rng.randint(2, 6) if r < 0.93 else rng.randint(15, 40)
                with conn.transaction():
                    for _ in range(size):
                        n += 1
                        table = rng.choice(TABLES)
                        if table == "alerts":
                            conn.execute(
                                "insert into alerts (branch_id, severity, kind, title) "
                                "values (%s, 'info', 'chaos', %s)",
                                (rng.choice((1, 2, 3, 4, None)), str(n)),
                            )
                        elif table == "attendance":
                            sid, uid, bid = rng.choice(staff)
                            conn.execute(
                                "insert into attendance (staff_id, user_id, branch_id, notes) "
                                "values (%s, %s, %s, %s)",
                                (sid, uid, bid, str(n)),
                            )
                        else:
                            conn.execute(
                                "insert into payments (branch_id, amount, method, provider_ref) "
                                "values (%s, %s, 'card', %s)",
                                (rng.randint(1, 4), rng.randint(1, 50_000) / 100, str(n)),
                            )
                self.transactions += 1
                self.rows += size


# ---------------------------------------------------------------------------------------------
# Subscribers and what each may see
# ---------------------------------------------------------------------------------------------
# Each table's numbered rows and where the writer put the number (its commit order).
_ROWS = {
    "alerts": ("title", "kind = 'chaos'"),
    "attendance": ("notes", "notes ~ '^[0-9]+$'"),
    "payments": ("provider_ref", "provider_ref ~ '^[0-9]+$'"),
}
_BRANCH = "branch_id = {b}"
_BRANCH_OR_COMPANY = "(branch_id = {b} or branch_id is null)"

# A policy the in-process evaluator leaves to Postgres (a function call): the auditor's every
# change is decided by a round trip, so its replays yield to the event loop between changes and
# live changes arrive in the middle of them, which is the hand-over the cursor must get right.
AUDITOR_POLICY = "claims->>'user_role' = 'auditor' and abs(branch_id) in (2, 3)"


@dataclass(frozen=True)
class SubscriberSpec:
    """A subscriber: identity, bindings, and (for the check) what the row policies grant it.

    ``visible`` maps each bound table to the SQL predicate that the demo policies (plus
    :data:`AUDITOR_POLICY`) amount to for these claims, and the binding filter if any; it is how
    the expected rows are read back from the database.
    """

    name: str
    role: str
    claims: dict[str, Any]
    event: str
    visible: dict[str, str]
    filter: str | None = None
    vsn: str = "1.0.0"

    def bindings(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in self.visible:
            b: dict[str, Any] = {"event": self.event, "schema": "public", "table": t}
            if self.filter is not None:
                b["filter"] = self.filter
            out.append(b)
        return out

    def token(self) -> str:
        return token(role=self.role, ttl=6 * 3600, **self.claims)


def default_subscribers() -> list[SubscriberSpec]:
    """service_role, an admin, two branch members, a filtered subscriber and a slow-path one.

    Bindings mix ``*`` and ``INSERT``, and protocol versions 1.0.0 and 2.0.0, because replay
    and live delivery encode frames per version and route per binding.  service_role bypasses
    policies; admins have an "admins" policy on each table; branch members see their branch
    and company-wide (null-branch) alerts; a ``branch_id=eq.3`` filter never matches a null.
    """

    def member(b: int) -> dict[str, str]:
        return {
            "alerts": _BRANCH_OR_COMPANY.format(b=b),
            "attendance": _BRANCH.format(b=b),
            "payments": _BRANCH.format(b=b),
        }

    every = dict.fromkeys(TABLES, "true")
    return [
        SubscriberSpec("service", "service_role", {}, "*", every),
        SubscriberSpec(
            "admin",
            "authenticated",
            {"sub": str(uuid.uuid4()), "user_role": "admin"},
            "INSERT",
            every,
            vsn="2.0.0",
        ),
        SubscriberSpec(
            "branch1", "authenticated", {"sub": str(uuid.uuid4()), "branch_id": 1}, "*", member(1)
        ),
        SubscriberSpec(
            "branch2",
            "authenticated",
            {"sub": str(uuid.uuid4()), "branch_id": 2},
            "INSERT",
            member(2),
            vsn="2.0.0",
        ),
        SubscriberSpec(
            "filter3",
            "service_role",
            {},
            "*",
            dict.fromkeys(TABLES, "branch_id = 3"),
            filter="branch_id=eq.3",
        ),
        SubscriberSpec(
            "auditor",
            "authenticated",
            {"sub": str(uuid.uuid4()), "user_role": "auditor"},
            "*",
            {"payments": "branch_id in (2, 3)"},
        ),
    ]


def install_auditor_policy(dsn: str) -> None:
    """Add :data:`AUDITOR_POLICY` to the payments table (before the relay starts)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select realtime.create_policy('public.payments', 'chaos auditors', %s)", (AUDITOR_POLICY,)
        )


def expected_rows(dsn: str, spec: SubscriberSpec) -> list[tuple[str, int]]:
    """The rows ``spec`` may see, in commit order (the writer's row number), read from the database."""
    parts = []
    for table, predicate in spec.visible.items():
        number, numbered = _ROWS[table]
        parts.append(
            f"select '{table}', id, {number}::bigint from public.{table} where {numbered} and ({predicate})"
        )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(" union all ".join(parts) + " order by 3").fetchall()
    return [(str(t), int(i)) for t, i, _ in rows]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class SubscriberReport:
    """What one subscriber got compared with what it was entitled to."""

    name: str
    expected: int
    received: int
    missing: list[tuple[str, int]]
    unexpected: list[tuple[str, int]]
    duplicates: int
    position_regressions: list[tuple[str, str]]  # (previous, next) where next <= previous
    in_commit_order: bool
    resyncs: list[dict[str, Any]]
    connects: int
    resumes: int
    replayed: int
    drops: int
    gave_up: str | None
    errors: list[str]
    events: list[str]

    @property
    def ok(self) -> bool:
        return (
            not self.missing
            and not self.unexpected
            and not self.duplicates
            and not self.position_regressions
            and self.in_commit_order
            and not self.resyncs
            and self.gave_up is None
            and not self.errors
        )

    def line(self) -> str:
        return (
            f"{self.name:<8} expected {self.expected:>6}  delivered {self.received:>6}  "
            f"missing(gaps) {len(self.missing)}  unexpected {len(self.unexpected)}  dup {self.duplicates}  "
            f"pos-regressions {len(self.position_regressions)}  "
            f"order {'ok' if self.in_commit_order else 'BAD'}  "
            f"resyncs {len(self.resyncs)}  connects {self.connects}  resumes {self.resumes} "
            f"(replayed {self.replayed})  drops {self.drops}"
            + (f"  GAVE UP: {self.gave_up}" if self.gave_up else "")
        )

    def details(self) -> str:
        out = [self.line()]
        if self.missing:
            out.append(f"  missing (first 20): {self.missing[:20]}")
        if self.unexpected:
            out.append(f"  unexpected (first 20): {self.unexpected[:20]}")
        if self.position_regressions:
            out.append(f"  position regressions (first 10): {self.position_regressions[:10]}")
        for r in self.resyncs[:5]:
            out.append(f"  resync: {r}")
        for e in self.errors[:10]:
            out.append(f"  error: {e}")
        out.append("  last events:")
        out.extend("    " + e for e in self.events[-40:])
        return "\n".join(out)


@dataclass
class ChaosResult:
    """The run's outcome: per-subscriber reports plus what was done to the relay."""

    seed: int
    kills: int
    disconnects: int
    transactions: int
    rows: int
    seconds: float
    caught_up: bool
    subscribers: list[SubscriberReport]
    relay_stats: dict[str, Any] | None
    relay_log: str
    writer_error: str | None = None
    relay_exits: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.writer_error is None and not self.relay_exits and all(s.ok for s in self.subscribers)

    def summary(self) -> str:
        lines = [
            f"chaos seed={self.seed}: {self.kills} relay SIGKILLs, {self.disconnects} forced disconnects, "
            f"{self.transactions} transactions / {self.rows} rows written in {self.seconds:.1f}s; "
            f"caught up: {self.caught_up}",
        ]
        lines += ["  " + s.line() for s in self.subscribers]
        if self.relay_stats is not None:
            lines.append(f"  relay resume stats: {self.relay_stats.get('resume')}")
        if self.writer_error:
            lines.append(f"  writer error: {self.writer_error}")
        if self.relay_exits:
            lines.append(f"  relay exited by itself (before a kill) with codes {self.relay_exits}")
        lines += ["  " + n for n in self.notes]
        return "\n".join(lines)

    def failure_report(self) -> str:
        parts = [self.summary()]
        parts += [s.details() for s in self.subscribers if not s.ok]
        parts.append("relay log (tail):\n" + self.relay_log)
        return "\n\n".join(parts)


def _report(spec: SubscriberSpec, client: ResumeClient, expected: list[tuple[str, int]]) -> SubscriberReport:
    got = [(c.table, c.id) for c in client.changes]
    got_set, exp_set = set(got), set(expected)
    regressions = [
        (a.position, b.position) for a, b in itertools.pairwise(client.changes) if b.position <= a.position
    ]
    return SubscriberReport(
        name=spec.name,
        expected=len(expected),
        received=len(got),
        missing=[r for r in expected if r not in got_set],
        unexpected=sorted(got_set - exp_set),
        duplicates=len(got) - len(got_set),
        position_regressions=regressions,
        in_commit_order=got == expected,
        resyncs=list(client.resyncs),
        connects=client.connects,
        resumes=client.resumes,
        replayed=client.replayed,
        drops=client.drops,
        gave_up=client.gave_up,
        errors=list(client.errors),
        events=list(client.events),
    )


# ---------------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------------
def chaos_seed(seed: int | None = None) -> int:
    """``seed``, else ``RELAY_CHAOS_SEED``, else a fresh random one (printed by the callers)."""
    if seed is not None:
        return seed
    env = os.environ.get("RELAY_CHAOS_SEED")
    if env:
        return int(env)
    return random.SystemRandom().randrange(1, 2**31)


async def run_chaos(
    dsn: str,
    *,
    kills: int = 5,
    seconds: float = 20.0,
    seed: int | None = None,
    subscribers: Sequence[SubscriberSpec] | None = None,
    catch_up_timeout: float = 30.0,
    resume_window: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ChaosResult:
    """Write, crash the relay ``kills`` times and drop sockets for about ``seconds``, then judge.

    ``dsn`` is a database of its own (the scenario applies migrations and the demo schema).  The
    relay runs as ``relay serve`` so it can be SIGKILLed; it is restarted on the same port, as a
    supervisor would, and the subscribers find it again by themselves.  Kills land at random
    moments, some while the relay is still starting or serving resumes.  A ``resume_window``
    (RELAY_RESUME_WINDOW, seconds) shorter than the relay stays up between kills makes it evict
    and advance its slot during the run, which the default 300 s never does in a short run.
    """
    seed = chaos_seed(seed)
    say = log or (lambda _s: None)
    say(f"chaos seed={seed} (set RELAY_CHAOS_SEED={seed} to repeat)")
    specs = list(subscribers or default_subscribers())
    rng = random.Random(seed)
    drop_rng = random.Random(seed + 1)
    await asyncio.to_thread(apply_migrations, dsn)
    await asyncio.to_thread(apply_demo_schema, dsn)
    await asyncio.to_thread(install_auditor_policy, dsn)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relay-chaos-") as tmp:
        env = {"RELAY_RESUME_WINDOW": str(resume_window)} if resume_window is not None else None
        relay = RelayProcess(dsn, free_port(), Path(tmp) / "relay.log", env)
        clients = [
            ResumeClient(s.name, relay.port, s.token(), s.bindings(), seed=seed + 10 + i, vsn=s.vsn)
            for i, s in enumerate(specs)
        ]
        writer = Writer(dsn, seed + 2)
        killed = 0
        disconnects = 0
        notes: list[str] = []
        expected: dict[str, list[tuple[str, int]]] = {}
        caught_up = False
        stats: dict[str, Any] | None = None
        try:
            relay.start()
            last_start = time.monotonic()
            await relay.wait_streaming()
            for c in clients:
                c.start()
            for c in clients:
                await c.wait_positioned(15.0)
            writer.start()
            say(f"relay on port {relay.port}; {len(clients)} subscribers joined; writer started")
            # A subscriber whose only position is its Subscribed one gets resync_needed after a
            # restart (see test_resume_from_subscribed_position_after_restart, a relay bug); the
            # chaos phase starts once every subscriber has processed a change, so that known
            # bug is tested there and cannot make this run flaky.
            await _wait_first_change(clients, 15.0)

            chaos_over = asyncio.Event()

            async def dropper() -> None:
                """Force random subscribers off their sockets until the kills are over."""
                nonlocal disconnects
                while not chaos_over.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(chaos_over.wait(), drop_rng.uniform(0.2, 1.5))
                        return
                    victim = drop_rng.choice(clients)
                    away = drop_rng.uniform(0.5, 3.0) if drop_rng.random() < 0.3 else 0.0
                    if await victim.disconnect(abrupt=drop_rng.random() < 0.5, away=away):
                        disconnects += 1

            drop_task = asyncio.create_task(dropper(), name="chaos-dropper")
            try:
                # Kill moments are uniform over the chaos phase, so gaps vary from "still starting
                # up" to several seconds of live traffic; each restart follows after 0-1 s of
                # downtime during which the writer keeps committing.
                started = time.monotonic()
                moments = sorted(rng.uniform(0.0, seconds) for _ in range(kills))
                for i, at in enumerate(moments):
                    await asyncio.sleep(max(0.02, started + at - time.monotonic()))
                    up = time.monotonic() - last_start
                    relay.kill()
                    killed += 1
                    down = rng.uniform(0.0, 1.0)
                    say(f"kill {i + 1}/{kills} at {at:.2f}s, {up:.2f}s after start; down {down:.2f}s")
                    await asyncio.sleep(down)
                    relay.start()
                    last_start = time.monotonic()
                await relay.wait_streaming()
                await asyncio.sleep(max(0.5, started + seconds - time.monotonic()))
            finally:
                chaos_over.set()
                await drop_task
            await asyncio.to_thread(writer.stop)
            if writer.is_alive():
                notes.append("writer did not stop within 10s")
            say(f"writer stopped: {writer.transactions} transactions, {writer.rows} rows")

            expected = {s.name: await asyncio.to_thread(expected_rows, dsn, s) for s in specs}
            caught_up = await _wait_caught_up(clients, expected, catch_up_timeout)
            if not caught_up:
                notes.append(f"subscribers did not catch up within {catch_up_timeout}s")
            await asyncio.sleep(0.3)  # a late duplicate would arrive now
            stats = await relay.stats()
        finally:
            writer.stopping.set()
            for c in clients:
                await c.stop()
            relay.terminate()
            if writer.is_alive():
                writer.join(10)
        reports = [_report(s, c, expected[s.name]) for s, c in zip(specs, clients, strict=True)]
        return ChaosResult(
            seed=seed,
            kills=killed,
            disconnects=disconnects,
            transactions=writer.transactions,
            rows=writer.rows,
            seconds=time.monotonic() - t0,
            caught_up=caught_up,
            subscribers=reports,
            relay_stats=stats,
            relay_log=relay.log_tail(80),
            writer_error=repr(writer.error) if writer.error is not None else None,
            relay_exits=list(relay.exits),
            notes=notes,
        )


async def _wait_first_change(clients: Sequence[ResumeClient], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(not c.changes for c in clients):
        if time.monotonic() >= deadline:
            quiet = [c.name for c in clients if not c.changes]
            raise TimeoutError(f"no change reached {quiet} within {timeout}s")
        await asyncio.sleep(0.02)


async def _wait_caught_up(
    clients: Sequence[ResumeClient], expected: dict[str, list[tuple[str, int]]], timeout: float
) -> bool:
    """Until every subscriber holds every row it is owed (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        behind = [
            c
            for c in clients
            if c.gave_up is None and not set(expected[c.name]) <= {(r.table, r.id) for r in c.changes}
        ]
        if not behind:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
