"""The official JS client (npm ``@supabase/realtime-js`` 2.109.0) against a real relay, unchanged.

Each test runs ``tests/interop/js/subscribe.mjs`` under Node: it subscribes with
``.on('postgres_changes', ...)`` and prints one JSON line per status change and per callback
payload. realtime-js speaks vsn 2.0.0 (JSON arrays) by default; vsn 1.0.0 is checked too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_resume import _alerts
from tests.interop.helpers import BOOKING_COLUMNS, delete_booking, insert_booking, set_status
from tests.support.relay import running_relay, token
from tests.support.tcp_proxy import FaultProxy

pytestmark = [pytest.mark.pg, pytest.mark.interop]

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "subscribe.mjs"
WAIT = 10.0  # upper bound for any single wait
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"realtime-js interop cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_env() -> str:
    """Path of ``node``, with ``tests/interop/js/node_modules`` installed from the lockfile."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
        raise AssertionError("unreachable")
    installed = (JS_DIR / "node_modules" / "@supabase" / "realtime-js" / "package.json").is_file() and (
        JS_DIR / "node_modules" / "ws" / "package.json"
    ).is_file()
    if not installed:
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is not installed")
            raise AssertionError("unreachable")
        try:
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=JS_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _unavailable("npm ci timed out")
            raise AssertionError("unreachable") from None
        if proc.returncode != 0:
            _unavailable(f"npm ci failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return node


class NodeSubscriber:
    """A running ``subscribe.mjs``: its parsed stdout lines, read with bounded waits."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def next_line(self, within: float = WAIT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not raw:
            raise AssertionError(
                f"node exited early (rc={await self._rc()}); lines so far: {self.lines}; "
                f"stderr: {await self._stderr()}"
            )
        obj: dict[str, Any] = json.loads(raw)
        self.lines.append(obj)
        return obj

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], within: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            line = await self.next_line(max(0.05, deadline - time.monotonic()))
            if pred(line):
                return line

    async def wait_subscribed(self) -> None:
        line = await self.wait_for(lambda m: "status" in m)
        assert line == {"status": "SUBSCRIBED"}, (line, self.lines)

    async def payloads(self, within: float = WAIT) -> list[dict[str, Any]]:
        """Every payload line up to the script's ``done`` line; asserts a clean leave and exit 0."""
        deadline = time.monotonic() + within
        out: list[dict[str, Any]] = []
        while True:
            line = await self.next_line(max(0.05, deadline - time.monotonic()))
            if "eventType" in line:
                out.append(line)
            elif line.get("done"):
                assert line["left"] == ["ok"], (line, self.lines)  # phx_leave got its ok reply
                break
            elif "heartbeat" not in line:
                raise AssertionError(f"unexpected line {line}; lines so far: {self.lines}")
        rc = await asyncio.wait_for(self.proc.wait(), max(0.05, deadline - time.monotonic()) + 2)
        assert rc == 0, (rc, self.lines)
        assert all(m.get("heartbeat") in (None, "ok") for m in self.lines), self.lines
        return out

    async def _rc(self) -> int | None:
        with contextlib.suppress(asyncio.TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), 2)
        return None

    async def _stderr(self) -> str:
        if self.proc.stderr is None:
            return ""
        with contextlib.suppress(asyncio.TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 2)).decode(errors="replace")[-2000:]
        return "<unread>"


@contextlib.asynccontextmanager
async def subscriber(
    node: str,
    url: str,
    *,
    count: int,
    table: str = "bookings",
    event: str = "*",
    filter: str = "",
    filter_builder: list[list[Any]] | None = None,
    select: list[str] | None = None,
    snapshot: bool = False,
    vsn: str = "",
    heartbeat_ms: int = 0,
    timeout_ms: int = 15000,
    tok: str | None = None,
) -> AsyncIterator[NodeSubscriber]:
    env = {
        **os.environ,
        "RT_URL": url,
        "RT_TOKEN": tok or token(),
        "RT_TABLE": table,
        "RT_EVENT": event,
        "RT_FILTER": filter,
        "RT_FILTER_BUILDER": json.dumps(filter_builder) if filter_builder else "",
        "RT_SELECT": json.dumps(select) if select else "",
        "RT_SNAPSHOT": "1" if snapshot else "",
        "RT_VSN": vsn,
        "RT_COUNT": str(count),
        "RT_TIMEOUT_MS": str(timeout_ms),
        "RT_HEARTBEAT_MS": str(heartbeat_ms),
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        cwd=JS_DIR,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeSubscriber(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)


def _check_common(p: dict[str, Any], event_type: str) -> None:
    assert p["eventType"] == event_type
    assert p["schema"] == "public" and p["table"] == "bookings"
    assert TS_RE.match(p["commit_timestamp"]), p["commit_timestamp"]
    assert p["errors"] is None
    assert set(p) == {"schema", "table", "commit_timestamp", "eventType", "new", "old", "errors"}


@pytest.mark.parametrize("vsn", ["", "1.0.0"], ids=["default-vsn2", "vsn1"])
async def test_insert_update_delete(pg_dsn: str, node_env: str, vsn: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(node_env, relay.url, count=3, vsn=vsn, heartbeat_ms=200) as sub,
    ):
        first = await sub.next_line()
        assert first["vsn"] == (vsn or "2.0.0")
        assert f"vsn={vsn or '2.0.0'}" in first["endpoint"] and "/realtime/v1/websocket?" in first["endpoint"]
        await sub.wait_subscribed()
        # Heartbeat replies are matched by ref: an unanswered one makes realtime-js drop the socket.
        await sub.wait_for(lambda m: "heartbeat" in m)

        bid = await insert_booking(pg_dsn, branch=1)
        await set_status(pg_dsn, bid, "confirmed")
        await delete_booking(pg_dsn, bid)
        ins, upd, dele = await sub.payloads()

        _check_common(ins, "INSERT")
        new = ins["new"]
        assert list(new) == BOOKING_COLUMNS
        assert new["id"] == bid and new["branch_id"] == 1 and new["status"] == "pending"
        assert new["price"] == 42.5 and new["tags"] == [] and new["details"] == {} and new["notes"] is None
        assert new["starts_at"].endswith("+00:00")
        assert ins["old"] == {}

        _check_common(upd, "UPDATE")
        assert upd["new"]["id"] == bid and upd["new"]["status"] == "confirmed"
        assert upd["old"]["id"] == bid and upd["old"]["status"] == "pending"

        _check_common(dele, "DELETE")
        assert dele["new"] == {}
        assert dele["old"]["id"] == bid


async def test_filter_receives_only_matching_rows(pg_dsn: str, node_env: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(node_env, relay.url, count=2, filter="branch_id=eq.2") as sub,
    ):
        await sub.wait_subscribed()
        b1 = await insert_booking(pg_dsn, branch=1)
        b2 = await insert_booking(pg_dsn, branch=2)
        await delete_booking(pg_dsn, b1)
        await delete_booking(pg_dsn, b2)
        ins, dele = await sub.payloads()
        _check_common(ins, "INSERT")
        assert ins["new"]["id"] == b2 and ins["new"]["branch_id"] == 2
        _check_common(dele, "DELETE")
        assert dele["old"]["id"] == b2


@pytest.mark.parametrize(
    ("filter_text", "builder"),
    [
        (
            'branch_id=gte.2,branch_id=lte.3,status=not.in.(cancelled,"no show")',
            None,
        ),
        (
            "",
            [
                ["gte", "branch_id", 2],
                ["lte", "branch_id", 3],
                ["not", "status", "in", ["cancelled", "no show"]],
                ["like", "service", "hair%"],
                ["isDistinct", "price", 1],
                ["is", "staff_id", None],
            ],
        ),
    ],
    ids=["raw-string", "postgresChangesFilter"],
)
async def test_and_filters(
    pg_dsn: str, node_env: str, filter_text: str, builder: list[list[Any]] | None
) -> None:
    """realtime-js 2.109's postgresChangesFilter() (and the same raw string): ANDed conditions,
    quoted values, not., like, isdistinct and is.  Only branches 2 and 3, not cancelled, match."""
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(
            node_env, relay.url, count=2, event="INSERT", filter=filter_text, filter_builder=builder
        ) as sub,
    ):
        if builder:
            line = await sub.wait_for(lambda m: "filter" in m)
            assert line["filter"] == (
                "branch_id=gte.2,branch_id=lte.3,status=not.in.(cancelled,no show),service=like.hair%,"
                "price=isdistinct.1,staff_id=is.null"
            )
        await sub.wait_subscribed()
        expected = []
        for branch, status in [
            (1, "pending"),
            (2, "pending"),
            (3, "cancelled"),
            (4, "pending"),
            (3, "confirmed"),
        ]:
            bid = await insert_booking(pg_dsn, branch=branch, status=status)
            if 2 <= branch <= 3 and status != "cancelled":
                expected.append(bid)
        got = await sub.payloads()
        assert [p["new"]["id"] for p in got] == expected


async def test_select(pg_dsn: str, node_env: str) -> None:
    """realtime-js 2.109's ``select``: new/old carry the chosen columns and the primary key."""
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(node_env, relay.url, count=2, filter="branch_id=eq.2", select=["status"]) as sub,
    ):
        await sub.wait_subscribed()
        await insert_booking(pg_dsn, branch=1)
        bid = await insert_booking(pg_dsn, branch=2)
        await set_status(pg_dsn, bid, "confirmed")
        ins, upd = await sub.payloads()
        assert ins["eventType"] == "INSERT" and ins["new"] == {"id": bid, "status": "pending"}
        assert upd["eventType"] == "UPDATE" and upd["new"] == {"id": bid, "status": "confirmed"}
        assert upd["old"] == {"id": bid, "status": "pending"}


async def test_snapshot_on_join_reaches_a_star_callback(pg_dsn: str, node_env: str) -> None:
    """realtime-js 2.109 passes ``snapshot: true`` on the binding object through to the join,
    ignores the ``snapshot_complete`` system frame, and hands each SNAPSHOT row to a ``'*'``
    callback as ``eventType: "SNAPSHOT"`` with ``new: {}``: it rebuilds ``new`` only for INSERT
    and UPDATE (documented in docs/protocol.md).  Live changes follow as usual."""
    async with running_relay(pg_dsn) as relay:
        first = await insert_booking(pg_dsn, branch=2)
        second = await insert_booking(pg_dsn, branch=2)
        await insert_booking(pg_dsn, branch=1)
        async with subscriber(node_env, relay.url, count=3, filter="branch_id=eq.2", snapshot=True) as sub:
            await sub.wait_subscribed()
            rows = [await sub.wait_for(lambda m: "eventType" in m) for _ in range(2)]
            assert [r["eventType"] for r in rows] == ["SNAPSHOT", "SNAPSHOT"]
            assert all(r["new"] == {} and r["old"] == {} for r in rows), rows
            assert all(r["table"] == "bookings" and TS_RE.match(r["commit_timestamp"]) for r in rows)
            bid = await insert_booking(pg_dsn, branch=2)
            (ins,) = await sub.payloads()
            assert ins["eventType"] == "INSERT" and ins["new"]["id"] == bid
            assert bid not in (first, second)


async def test_insert_only_binding(pg_dsn: str, node_env: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(node_env, relay.url, count=2, event="INSERT") as sub,
    ):
        await sub.wait_subscribed()
        bid = await insert_booking(pg_dsn)
        await set_status(pg_dsn, bid, "confirmed")
        await delete_booking(pg_dsn, bid)
        bid2 = await insert_booking(pg_dsn)  # a fence: an UPDATE/DELETE delivery would come before it
        first, second = await sub.payloads()
        assert first["eventType"] == "INSERT" and first["new"]["id"] == bid
        assert second["eventType"] == "INSERT" and second["new"]["id"] == bid2


async def test_bad_filter_reports_channel_error(pg_dsn: str, node_env: str) -> None:
    async with (
        running_relay(pg_dsn) as relay,
        subscriber(node_env, relay.url, count=1, filter="branch_id=zz.1") as sub,
    ):
        line = await sub.wait_for(lambda m: "status" in m)
        assert line["status"] == "CHANNEL_ERROR" and "unknown operator" in line["error"], line
        assert await asyncio.wait_for(sub.proc.wait(), WAIT) == 1


async def test_unchanged_realtime_js_resumes_from_the_position_on_its_binding(
    pg_dsn: str, node_env: str
) -> None:
    """Drop realtime-js's socket under a writer: every row is applied exactly once, in order."""
    total = 90
    async with running_relay(pg_dsn) as relay, FaultProxy(relay.port) as proxy:
        env = {
            **os.environ,
            "RT_URL": f"ws://127.0.0.1:{proxy.port}/realtime/v1",
            "RT_TOKEN": token(),
            "RT_COUNT": str(total),
            "RT_TIMEOUT_MS": "60000",
        }
        proc = await asyncio.create_subprocess_exec(
            node_env,
            str(JS_DIR / "resume.mjs"),
            cwd=JS_DIR,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        sub = NodeSubscriber(proc)
        written: list[int] = []
        stop = threading.Event()

        def writer() -> None:  # 30 transactions of 3 rows, one every 50 ms
            while len(written) < total and not stop.is_set():
                written.extend(_alerts(pg_dsn, 3, None))
                time.sleep(0.05)

        try:
            await sub.wait_for(lambda m: m.get("status") == "SUBSCRIBED")
            await sub.wait_for(lambda m: "system" in m)
            t = threading.Thread(target=writer)
            t.start()
            drops = 0
            for _ in range(4):  # drop the socket a few times while the writer runs
                await asyncio.sleep(0.4)
                drops += proxy.drop()
            stop_at = time.monotonic() + 30
            while time.monotonic() < stop_at:
                line = await sub.next_line(max(0.05, stop_at - time.monotonic()))
                if line.get("done"):
                    break
            await asyncio.to_thread(t.join)
            applied = [
                i
                for m in sub.lines
                if "applied" in m and isinstance(m["applied"], list)
                for i in m["applied"]
            ]
            assert drops >= 2, "the test must actually break connections"
            assert applied == written, (len(applied), len(written))
            resumed = [m["system"] for m in sub.lines if "system" in m and "resumed_from" in m["system"]]
            assert resumed, "realtime-js rejoined without the position on its binding"
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        finally:
            stop.set()
            if proc.returncode is None:
                proc.kill()
            with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)


async def test_token_expiring_system_message_leaves_realtime_js_subscribed(
    pg_dsn: str, node_env: str
) -> None:
    """realtime-js gets the relay's ``token_expiring`` warning (a system ok message) and carries on."""
    async with (
        running_relay(pg_dsn, token_expiry_warning=3.0) as relay,
        subscriber(node_env, relay.url, count=1, tok=token(ttl=9), heartbeat_ms=500) as sub,
    ):
        await sub.wait_subscribed()
        deadline = time.monotonic() + 9
        while relay.server.expiry_warnings == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert relay.server.expiry_warnings == 1
        bid = await insert_booking(pg_dsn, branch=1)
        (ins,) = await sub.payloads()
        assert ins["eventType"] == "INSERT" and ins["new"]["id"] == bid
