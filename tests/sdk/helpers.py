"""Shared pieces of the SDK integration tests: a numbered-row writer, waits, and leak checks.

Why a writer thread: the promise under test is "every committed row, exactly once, in order",
so rows must keep committing *while* connections are broken, from outside the event loop the
relay and the client share.  One writer, one connection, sequential commits: row ids increase in
commit order, so the expected sequence is simply the ids in the order they were returned.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from relay_client import Change, RelayClient

INSERT = "insert into alerts (branch_id, severity, kind, title) values (%s, 'info', 'sdk', %s) returning id"


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/realtime/v1"


def insert_alerts(dsn: str, n: int, one_tx: bool = False, branch: int | None = 1) -> list[int]:
    """Insert ``n`` alerts (one transaction, or one each); their ids in commit order."""
    ids: list[int] = []
    with psycopg.connect(dsn, autocommit=not one_tx) as conn:
        for i in range(n):
            row = conn.execute(INSERT, (branch, f"row {i}")).fetchone()
            assert row is not None
            ids.append(int(row[0]))
        if one_tx:
            conn.commit()
    return ids


class NumberedWriter:
    """Commits numbered alerts from a thread until stopped: mostly one per transaction, some three."""

    def __init__(self, dsn: str, pause: float = 0.005, max_seconds: float = 90.0) -> None:
        self.dsn = dsn
        self.pause = pause
        self.max_seconds = max_seconds
        self.ids: list[int] = []
        self.transactions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="numbered-writer", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            with psycopg.connect(self.dsn) as conn:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    rows = 3 if self.transactions % 7 == 6 else 1
                    batch: list[int] = []
                    for _ in range(rows):
                        row = conn.execute(INSERT, (1, f"n={len(self.ids) + len(batch)}")).fetchone()
                        assert row is not None
                        batch.append(int(row[0]))
                    conn.commit()
                    self.ids.extend(batch)
                    self.transactions += 1
                    self._stop.wait(self.pause)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> NumberedWriter:
        self._thread.start()
        return self

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)
        assert not self._thread.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error
        return list(self.ids)


async def until(pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Poll ``pred`` every 10 ms; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def until_at_least(get: Callable[[], int], n: int, timeout: float, what: str = "count") -> None:
    """Until ``get() >= n`` (a counter reaching a value), bounded like :func:`until`."""
    await until(lambda: get() >= n, timeout, f"{what} >= {n}")


def ids_of(changes: list[Any]) -> list[int]:
    return [int(c.record["id"]) for c in changes if isinstance(c, Change)]


def assert_in_order_once(changes: list[Any], expected: list[int]) -> None:
    got = ids_of(changes)
    if got != expected:
        seen = set(got)
        dup = len(got) - len(seen)
        missing = [i for i in expected if i not in seen][:10]
        extra = [i for i in seen if i not in set(expected)][:10]
        raise AssertionError(
            f"{len(got)} changes for {len(expected)} rows: {dup} duplicates, missing {missing}, "
            f"unexpected {extra}, in order: {got == sorted(got)}"
        )
    positions = [c.position for c in changes if isinstance(c, Change)]
    assert all(a < b for a, b in itertools.pairwise(positions)), "positions not increasing"


# -- leak checks ---------------------------------------------------------------------------------
def _tcp_states(port: int) -> list[str]:
    """States of this host's TCP sockets whose *remote* port is ``port`` (client sockets to it)."""
    out: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port:
                out.append(fields[3])
    return out


def open_client_sockets(port: int) -> int:
    """Client sockets to ``port`` that still hold a file descriptor (any state but TIME_WAIT)."""
    return sum(1 for st in _tcp_states(port) if st != "06")


def sdk_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of the event loop other than the running test."""
    return asyncio.all_tasks() - {t for t in [asyncio.current_task()] if t is not None}


async def assert_no_leaks(
    client: RelayClient, before: set[asyncio.Task[Any]], proxy_port: int | None, timeout: float = 5.0
) -> None:
    """After ``client.close()``: no new task survives, no socket to the proxy stays open.

    ``before`` is :func:`sdk_tasks` taken once the relay runs.  Start that relay with a long
    ``policy_poll_interval``: its policy loop creates fresh waiter tasks every interval, which
    would read as a leak here.
    """
    assert client.status.state.value == "closed"
    assert client._session is None or client._session.closed
    assert client._link is None and not client.get_channels()
    deadline = time.monotonic() + timeout
    while True:
        extra = sdk_tasks() - before
        sockets = open_client_sockets(proxy_port) if proxy_port else 0
        if not extra and not sockets:
            return
        if time.monotonic() > deadline:
            names = sorted(f"{t.get_name()}: {t.get_coro()}" for t in extra)
            raise AssertionError(f"leaked after close: {sockets} sockets, tasks {names}")
        await asyncio.sleep(0.05)
