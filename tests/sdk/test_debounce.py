"""The "this table changed" coalescer: the pure throttle, then the loop-driven helper (no network)."""

from __future__ import annotations

import asyncio

from relay_client.debounce import TableChangeCoalescer, TableChanged, Throttle
from relay_client.types import Change, ResyncNeeded


def test_throttle_fires_at_once_then_at_most_once_per_interval() -> None:
    th: Throttle[str] = Throttle(0.5)
    assert th.hit("a", 10.0) == 10.0  # quiet key: leading edge
    assert th.due(10.0) == ["a"]
    assert th.hit("a", 10.1) == 10.5  # within the interval: trailing edge
    assert th.hit("a", 10.2) == 10.5  # coalesced into the same signal
    assert th.due(10.4) == []
    assert th.next_due() == 10.5
    assert th.due(10.5) == ["a"]
    assert th.hit("a", 11.5) == 11.5  # quiet for an interval: leading edge again
    assert th.hit("b", 11.5) == 11.5  # keys are independent
    assert sorted(th.due(11.5)) == ["a", "b"]
    assert th.next_due() is None


def _change(table: str, n: int) -> Change:
    return Change("dash", "INSERT", "public", table, "", f"{n:016X}:00000000", {"id": n})


async def test_coalescer_signals_each_table_at_most_every_interval() -> None:
    got: list[TableChanged] = []
    co = TableChangeCoalescer(got.append, interval=0.2)
    for i in range(50):
        co(_change("orders", i))
    co(_change("items", 99))
    # leading edge: one signal per table at once
    assert [(s.table, s.changes) for s in got] == [("orders", 1), ("items", 1)]
    await asyncio.sleep(0.3)
    # trailing edge: the other 49 orders changes in one signal, the last position kept
    assert [(s.table, s.changes, s.position) for s in got[2:]] == [("orders", 49, f"{49:016X}:00000000")]
    co.resync(ResyncNeeded("dash", "resync", "P"))
    assert got[-1] == TableChanged("*", "*", 0, "P", resync=True)
    await co.aclose()


async def test_coalescer_runs_async_callbacks_and_flushes_on_close() -> None:
    got: list[TableChanged] = []

    async def refresh(sig: TableChanged) -> None:
        await asyncio.sleep(0.01)
        got.append(sig)

    async with TableChangeCoalescer(refresh, interval=10) as co:
        co(_change("orders", 1))
        co(_change("orders", 2))
        co(_change("orders", 3))
    # closing fired the pending trailing signal and waited for both callbacks
    assert [(s.changes, s.position) for s in got] == [(1, f"{1:016X}:00000000"), (2, f"{3:016X}:00000000")]
    co(_change("orders", 4))  # closed: ignored
    await asyncio.sleep(0)
    assert len(got) == 2
