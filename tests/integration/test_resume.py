"""Resume after a disconnect or a relay restart: exactly the missed changes, or "resync needed".

Real Postgres, real relay, raw WebSockets.  The alerts demo table is used because its policy
(branch members, or company-wide rows) makes authorization part of what is replayed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from relay.core.changes import Lsn, parse_position
from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg

ALERTS = [{"event": "*", "schema": "public", "table": "alerts"}]


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _alerts(dsn: str, n: int, branch: int | None = 1, one_tx: bool = True) -> list[int]:
    """Insert ``n`` alerts (one transaction, or one per row); returns their ids in commit order."""
    ids: list[int] = []
    with psycopg.connect(dsn, autocommit=not one_tx) as conn:
        for i in range(n):
            row = conn.execute(
                "insert into alerts (branch_id, severity, kind, title) values (%s, 'info', 'test', %s) "
                "returning id",
                (branch, f"alert {i}"),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
        if one_tx:
            conn.commit()
    return ids


def _changes(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["payload"]["data"] for m in frames if m["event"] == "postgres_changes"]


def _system(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["payload"] for m in frames if m["event"] == "system"]


async def _join(c: PhoenixClient, tok: str | None = None, **config: Any) -> str:
    """Join the alerts channel; returns the position the channel starts from."""
    reply = await c.join("alerts", ALERTS, access_token=tok, **config)
    assert reply["payload"]["status"] == "ok", reply
    sysmsg = await c.recv_until(lambda m: m["event"] == "system")
    assert sysmsg["payload"]["message"] == "Subscribed to PostgreSQL"
    return str(sysmsg["payload"]["position"])


async def _until_resumed(c: PhoenixClient, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Frames up to and including the "Resumed" (or resync) system event."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        m = await c.recv(max(0.1, deadline - time.monotonic()))
        frames.append(m)
        if m["event"] == "system" and (
            m["payload"].get("resumed_from") is not None or m["payload"].get("code") == "resync_needed"
        ):
            return frames


async def _resumed_changes(c: PhoenixClient, n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first ``n`` changes after a resume, and the Resumed (or resync) event.

    Changes committed just before the rejoin may not be decoded yet when the replay catches up
    with the log: they then follow the Resumed event as live changes, in order.
    """
    frames = await _until_resumed(c)
    changes = _changes(frames)
    if len(changes) < n:
        changes += await c.changes(n - len(changes))
    return changes, _system(frames)[-1]


async def test_resume_gets_exactly_the_missed_changes_it_may_see(pg_dsn: str) -> None:
    branch1 = token("authenticated", branch_id=1)
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay, branch1) as c:
            await _join(c)
            seen = await asyncio.to_thread(_alerts, pg_dsn, 2)
            got = await c.changes(2)
            assert [d["record"]["id"] for d in got] == seen
            last = got[-1]["position"]
        # away: a multi-row transaction, single-row ones, rows of another branch, company-wide
        missed = await asyncio.to_thread(_alerts, pg_dsn, 3)
        await asyncio.to_thread(_alerts, pg_dsn, 2, 2)  # not visible to branch 1
        missed += await asyncio.to_thread(_alerts, pg_dsn, 2, None, False)
        async with PhoenixClient.connect(relay, branch1) as c:
            start = await _join(c, resume_from=last)
            assert start == last
            replayed, resumed = await _resumed_changes(c, len(missed))
            assert [d["record"]["id"] for d in replayed] == missed
            positions = [d["position"] for d in replayed]
            assert positions == sorted(positions) and len(set(positions)) == len(positions)
            assert positions[0] > last
            assert resumed["status"] == "ok" and 0 < resumed["replayed"] <= len(missed)
            assert resumed["position"] >= positions[resumed["replayed"] - 1]
            # then live, once
            live = await asyncio.to_thread(_alerts, pg_dsn, 1)
            got = await c.changes(1)
            assert [d["record"]["id"] for d in got] == live
            assert _changes(await c.collect(0.5)) == []


async def test_switch_from_replay_to_live_under_writes_has_no_gap_or_duplicate(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay) as c:
            start = await _join(c)
        await asyncio.to_thread(_alerts, pg_dsn, 300)
        stop = threading.Event()
        written: list[int] = []

        def writer() -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                written.extend(_alerts(pg_dsn, 3, 1, one_tx=bool(len(written) % 2)))

        t = threading.Thread(target=writer)
        t.start()
        try:
            async with PhoenixClient.connect(relay) as c:
                await _join(c, resume_from=start)
                frames = await _until_resumed(c, 20)
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.to_thread(t.join)
                expected = [int(r[0]) for r in _exec(pg_dsn, "select id from alerts order by id")]
                got = [d["record"]["id"] for d in _changes(frames)]
                deadline = time.monotonic() + 15
                while len(got) < len(expected) and time.monotonic() < deadline:
                    got += [d["record"]["id"] for d in await c.changes(1)]
                assert got == expected
                assert _changes(await c.collect(0.5)) == []
        finally:
            stop.set()
            t.join()


async def test_resume_older_than_the_window_says_resync_needed(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, resume_max_bytes=4000) as relay:
        async with PhoenixClient.connect(relay) as c:
            start = await _join(c)
        await asyncio.to_thread(_alerts, pg_dsn, 60)  # far more than 4000 bytes
        deadline = time.monotonic() + 10
        while relay.server.log.covers(parse_position(start)):  # until the relay has decoded them
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with PhoenixClient.connect(relay) as c:
            await _join(c, resume_from=start)
            frames = await _until_resumed(c)
            assert _changes(frames) == []
            resync = _system(frames)[-1]
            assert resync["status"] == "error" and resync["code"] == "resync_needed"
            assert "resync needed" in resync["message"] and resync["resume_from"] == start
            assert resync["retained_from"] > start
            # it continues live from the position it was given
            live = await asyncio.to_thread(_alerts, pg_dsn, 1)
            got = await c.changes(1)
            assert [d["record"]["id"] for d in got] == live and got[0]["position"] > resync["position"]
        # a position inside what is still held resumes normally
        async with PhoenixClient.connect(relay) as c:
            await _join(c, resume_from=relay.server.position(relay.server.log.retained_from))
            frames = await _until_resumed(c)
            assert _system(frames)[-1]["status"] == "ok" and _changes(frames)
        health = relay.server.log.stats()
        assert int(str(health["bytes"])) <= 4000


async def test_time_window_expiry_gives_resync(pg_dsn: str) -> None:
    async with running_relay(pg_dsn, resume_window=0.5) as relay:
        async with PhoenixClient.connect(relay) as c:
            await _join(c)
            await asyncio.to_thread(_alerts, pg_dsn, 1)
            last = (await c.changes(1))[0]["position"]
        await asyncio.to_thread(_alerts, pg_dsn, 1)
        deadline = time.monotonic() + 10
        while relay.server.log.covers(parse_position(last)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # evicted on the pipeline's idle ticks
        async with PhoenixClient.connect(relay) as c:
            await _join(c, resume_from=last)
            frames = await _until_resumed(c)
            assert _system(frames)[-1]["code"] == "resync_needed"


async def test_resume_after_relay_restart_replays_from_the_slot(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay) as c:
            await _join(c)
            await asyncio.to_thread(_alerts, pg_dsn, 2)
            last = (await c.changes(2))[-1]["position"]
        after_client = await asyncio.to_thread(_alerts, pg_dsn, 2)
    # relay down: these are committed with nobody reading
    while_down = await asyncio.to_thread(_alerts, pg_dsn, 3)
    held = Lsn.parse(_exec(pg_dsn, "select confirmed_flush_lsn::text from pg_replication_slots")[0][0])
    assert held <= parse_position(last) >> 32  # the slot kept the window
    async with running_relay(pg_dsn) as relay:
        async with PhoenixClient.connect(relay) as fresh:
            await _join(fresh)
            async with PhoenixClient.connect(relay) as c:
                await _join(c, resume_from=last)
                want = after_client + while_down  # the restarted stream may still be decoding
                got, _ = await _resumed_changes(c, len(want))
                assert [d["record"]["id"] for d in got] == want
            # a fresh join after the restart does not get the replayed history
            assert _changes(await fresh.collect(0.5)) == []
            live = await asyncio.to_thread(_alerts, pg_dsn, 1)
            assert [d["record"]["id"] for d in await fresh.changes(1)] == live


async def test_tx_end_marks_each_transaction(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        start = await _join(c, tx_end=True)
        await asyncio.to_thread(_alerts, pg_dsn, 3)
        await asyncio.to_thread(_alerts, pg_dsn, 1)
        frames: list[dict[str, Any]] = []
        while sum(m["event"] == "tx_end" for m in frames) < 2:
            frames.append(await c.recv())
        kinds = [m["event"] for m in frames if m["event"] in ("postgres_changes", "tx_end")]
        assert kinds == ["postgres_changes"] * 3 + ["tx_end", "postgres_changes", "tx_end"]
        changes = _changes(frames)
        ends = [m["payload"] for m in frames if m["event"] == "tx_end"]
        assert ends[0]["changes"] == 3 and ends[0]["position"] == changes[2]["position"]
        assert ends[1]["changes"] == 1 and ends[1]["position"] == changes[3]["position"]
        assert ends[0]["commit_timestamp"] == changes[0]["commit_timestamp"]
        # a resume replays the markers too
        async with PhoenixClient.connect(relay) as c2:
            await _join(c2, resume_from=start, tx_end=True)
            frames2 = await _until_resumed(c2)
            kinds2 = [m["event"] for m in frames2 if m["event"] in ("postgres_changes", "tx_end")]
            assert kinds2 == kinds
            assert [m["payload"] for m in frames2 if m["event"] == "tx_end"] == ends


async def test_bad_resume_position_is_a_clear_join_error(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        reply = await c.join("alerts", ALERTS, resume_from="0/16B3748")
        assert reply["payload"]["status"] == "error"
        assert reply["payload"]["response"]["reason"].startswith("InvalidResume: invalid position")
        await _join(c)  # the socket is fine


async def test_lost_slot_is_recreated_and_subscribers_told_to_resync(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await _join(c)
        slot = relay.server.config.slot
        deadline = time.monotonic() + 10
        while True:  # a DBA drops the slot (terminating its walsender first)
            _exec(
                pg_dsn,
                "select pg_terminate_backend(active_pid) from pg_replication_slots "
                "where slot_name = %s and active_pid is not null",
                (slot,),
            )
            try:
                _exec(pg_dsn, "select pg_drop_replication_slot(%s)", (slot,))
                break
            except psycopg.errors.ObjectInUse:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        msg = await c.recv_until(lambda m: m["event"] == "system", timeout=20)
        assert msg["payload"]["code"] == "resync_needed" and "slot was lost" in msg["payload"]["message"]
        live = await asyncio.to_thread(_alerts, pg_dsn, 1)
        assert [d["record"]["id"] for d in await c.changes(1, timeout=20)] == live


async def test_slot_is_confirmed_only_to_the_window(pg_dsn: str) -> None:
    def confirmed() -> int:
        return Lsn.parse(_exec(pg_dsn, "select confirmed_flush_lsn::text from pg_replication_slots")[0][0])

    async with running_relay(pg_dsn) as relay, PhoenixClient.connect(relay) as c:
        await _join(c)
        await asyncio.to_thread(_alerts, pg_dsn, 1)
        first = (await c.changes(1))[0]["position"]
        await asyncio.to_thread(_alerts, pg_dsn, 1)
        await c.changes(1)
        await asyncio.sleep(1.5)  # status updates go out every second
        assert confirmed() <= parse_position(first) >> 32  # the window's oldest commit is kept
    async with running_relay(pg_dsn, resume_window=0) as relay, PhoenixClient.connect(relay) as c:
        await _join(c)
        await asyncio.to_thread(_alerts, pg_dsn, 1)
        last = (await c.changes(1))[0]["position"]
        deadline = time.monotonic() + 5
        while confirmed() <= parse_position(last) >> 32:  # no window: confirmed past it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
