"""Snapshots on join in the SDK (issue 18), against a scripted relay.

What is checked is the SDK's side of docs/protocol.md "Snapshot": the join asks on the binding;
rows, marker and failures arrive as their own event types, in socket order, to the binding's
callback and to ``changes(snapshot=True)`` streams; the marker's position becomes the channel's
resume position; a join lost before its marker restarts the snapshot (never resumes past it);
``on_resync="snapshot"`` rejoins for a fresh snapshot; ``LiveTable`` keeps rows by key.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from relay_client import (
    Change,
    LiveTable,
    RelayClient,
    ResyncNeeded,
    SnapshotComplete,
    SnapshotError,
    SnapshotRow,
    SyncRelayClient,
)
from relay_client.backoff import BackoffPolicy
from relay_client.protocol import Subscribed, parse_system

from tests.sdk.helpers import until
from tests.sdk.scripted import ScriptedRelay, pos
from tests.support.relay import token

TOPIC = "realtime:dash"
FAST: dict[str, Any] = {"initial_backoff": 0.02, "max_backoff": 0.1, "timeout": 3.0, "hb_interval": 5.0}


def client_for(relay: ScriptedRelay) -> RelayClient:
    return RelayClient(relay.url, token(), **FAST)


async def _rejoin_after_drop(relay: ScriptedRelay) -> Any:
    """Drop the client's socket and return the ``phx_join`` it sends when it reconnects."""
    n = len(relay.frames)
    await relay.drop()
    return await relay.next_frame("phx_join", n)


def config(frame: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = frame.payload["config"]
    return cfg


def test_the_marker_is_not_read_as_subscribed() -> None:
    """The marker is an ok ``postgres_changes`` system message, like "Subscribed": told apart by code."""
    event = parse_system(
        "dash",
        {
            "status": "ok",
            "extension": "postgres_changes",
            "code": "snapshot_complete",
            "id": 7,
            "rows": 3,
            "position": pos(9),
            "message": "snapshot complete: 3 rows",
        },
        snapshot=2,
    )
    assert event == SnapshotComplete("dash", 7, 3, pos(9), 2, "snapshot complete: 3 rows")
    plain = parse_system("dash", {"status": "ok", "extension": "postgres_changes", "position": pos(1)})
    assert plain == Subscribed(pos(1))


async def test_rows_marker_then_changes_in_order_and_the_marker_is_the_resume_point() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        seen: list[Any] = []
        ch = client.channel("dash").on_postgres_changes("*", seen.append, table="t", snapshot=True)
        snap_stream = ch.changes(snapshot=True)
        plain_stream = ch.changes()
        await ch.subscribe(timeout=5)
        join = relay.joins()[0]
        assert config(join)["postgres_changes"] == [
            {"event": "*", "schema": "public", "table": "t", "snapshot": True}
        ]
        assert "resume_from" not in config(join)
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.row(TOPIC, 101, {"id": 1, "v": 10})
        await relay.row(TOPIC, 101, {"id": 2, "v": 20})
        await relay.complete(TOPIC, 101, 2, pos(7, 0xFFFFFFFF))
        await relay.change(TOPIC, 101, "INSERT", pos(8, 0), {"id": 3, "v": 30})
        await until(lambda: len(seen) == 4, 5, "rows, marker, change")
        assert [type(e) for e in seen] == [SnapshotRow, SnapshotRow, SnapshotComplete, Change]
        r1 = seen[0]
        assert r1.type == "SNAPSHOT" and r1.record == {"id": 1, "v": 10} and r1.ids == (101,)
        assert r1.old_record == {} and r1.snapshot == 1 and r1.table == "t"
        done = seen[2]
        assert (done.rows, done.position, done.binding_id, done.snapshot) == (2, pos(7, 0xFFFFFFFF), 101, 1)
        assert ch.position == pos(8, 0) and ch.stats.snapshot_rows == 2 and ch.stats.snapshots == 1
        got = [await asyncio.wait_for(snap_stream.__anext__(), 2) for _ in range(4)]
        assert got == seen
        # a stream that did not ask for snapshot events gets the changes only
        assert await asyncio.wait_for(plain_stream.__anext__(), 2) == seen[3]
        assert len(plain_stream) == 0
        # After the marker a reconnect resumes from the channel's position, asking nothing again.
        rejoin = await _rejoin_after_drop(relay)
        assert config(rejoin)["resume_from"] == pos(8, 0)
        assert "snapshot" not in config(rejoin)["postgres_changes"][0]
        await client.close()


async def test_marker_position_alone_is_where_a_rejoin_resumes() -> None:
    """No change after the marker yet: the rejoin resumes from the marker, not from Subscribed's
    earlier position (that would replay changes the snapshot already holds)."""
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        ch = client.channel("dash").on_postgres_changes("*", table="t", snapshot=True)
        await ch.subscribe(timeout=5)
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.complete(TOPIC, 101, 0, pos(6, 0xFFFFFFFF))
        await until(lambda: ch.stats.snapshots == 1, 5, "marker")
        assert ch.position == pos(6, 0xFFFFFFFF)
        rejoin = await _rejoin_after_drop(relay)
        assert config(rejoin)["resume_from"] == pos(6, 0xFFFFFFFF)
        await client.close()


async def test_a_join_lost_during_its_snapshot_restarts_the_snapshot() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        seen: list[Any] = []
        ch = client.channel("dash").on_postgres_changes("*", seen.append, table="t", snapshot=True)
        await ch.subscribe(timeout=5)
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.row(TOPIC, 101, {"id": 1})
        await until(lambda: len(seen) == 1, 5, "first row")
        rejoin = await _rejoin_after_drop(relay)
        # Not a resume from Subscribed's position (the rest of the snapshot would be lost): a
        # fresh join asking for the snapshot again.
        assert "resume_from" not in config(rejoin)
        assert config(rejoin)["postgres_changes"][0]["snapshot"] is True
        await until(lambda: ch.is_joined, 5, "rejoined")
        await relay.subscribed(TOPIC, pos(9, 0xFFFFFFFF))
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.row(TOPIC, 101, {"id": 2})
        await relay.complete(TOPIC, 101, 2, pos(9, 0xFFFFFFFF))
        await until(lambda: len(seen) == 4, 5, "second snapshot")
        assert [(type(e).__name__, e.snapshot) for e in seen] == [
            ("SnapshotRow", 1),
            ("SnapshotRow", 2),
            ("SnapshotRow", 2),
            ("SnapshotComplete", 2),
        ]
        assert ch.position == pos(9, 0xFFFFFFFF)
        await client.close()


async def test_a_snapshot_error_reaches_the_binding_and_live_changes_follow() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        seen: list[Any] = []
        ch = client.channel("dash").on_postgres_changes("*", seen.append, table="t", snapshot=True)
        stream = ch.changes(snapshot=True)
        await ch.subscribe(timeout=5)
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.send(
            TOPIC,
            "system",
            {
                "status": "error",
                "extension": "postgres_changes",
                "code": "snapshot_too_large",
                "message": "snapshot too large: more than 10 rows",
                "id": 101,
            },
        )
        await relay.change(TOPIC, 101, "INSERT", pos(6, 0), {"id": 3})
        await until(lambda: len(seen) == 2, 5, "error then change")
        err = seen[0]
        assert isinstance(err, SnapshotError) and err.code == "snapshot_too_large"
        assert err.binding_id == 101 and err.reason == "snapshot too large: more than 10 rows"
        assert isinstance(seen[1], Change) and ch.is_joined and ch.stats.snapshot_errors == 1
        assert await asyncio.wait_for(stream.__anext__(), 2) is err
        # not asked again: the same query would fail the same way
        rejoin = await _rejoin_after_drop(relay)
        assert config(rejoin)["resume_from"] == pos(6, 0)
        assert "snapshot" not in config(rejoin)["postgres_changes"][0]
        await client.close()


async def test_on_resync_snapshot_rejoins_with_a_snapshot_for_every_binding() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        seen: list[Any] = []
        resyncs: list[ResyncNeeded] = []
        ch = (
            client.channel("dash", on_resync="snapshot")
            .on_postgres_changes("INSERT", seen.append, table="t")
            .on_postgres_changes("DELETE", seen.append, table="u")
            .on_resync(resyncs.append)
        )
        await ch.subscribe(timeout=5)
        assert ch.resync_snapshot
        assert all("snapshot" not in b for b in config(relay.joins()[0])["postgres_changes"])
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        n = len(relay.frames)
        await relay.send(
            TOPIC,
            "system",
            {
                "status": "error",
                "extension": "postgres_changes",
                "code": "resync_needed",
                "message": "resync needed",
                "position": pos(20, 0xFFFFFFFF),
            },
        )
        rejoin = await relay.next_frame("phx_join", n)
        assert len(resyncs) == 1
        assert [b.get("snapshot") for b in config(rejoin)["postgres_changes"]] == [True, True]
        assert "resume_from" not in config(rejoin)
        await until(lambda: ch.is_joined, 5, "rejoined")
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.complete(TOPIC, 101, 1, pos(21, 0xFFFFFFFF))
        await relay.complete(TOPIC, 102, 0, pos(21, 0xFFFFFFFF))
        await until(lambda: len(seen) == 3, 5, "snapshot events")
        assert [type(e) for e in seen] == [SnapshotRow, SnapshotComplete, SnapshotComplete]
        assert ch.position == pos(21, 0xFFFFFFFF)
        await client.close()


async def test_without_on_resync_snapshot_a_resync_is_only_reported() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        resyncs: list[ResyncNeeded] = []
        ch = client.channel("dash").on_postgres_changes("*", table="t").on_resync(resyncs.append)
        await ch.subscribe(timeout=5)
        await relay.send(
            TOPIC,
            "system",
            {
                "status": "error",
                "extension": "postgres_changes",
                "code": "resync_needed",
                "message": "resync needed",
                "position": pos(20, 0xFFFFFFFF),
            },
        )
        await until(lambda: len(resyncs) == 1, 5, "resync")
        await asyncio.sleep(0.2)
        assert len(relay.joins()) == 1 and ch.is_joined
        await client.close()


async def test_a_mixed_channel_resumes_its_live_bindings_and_snapshots_the_pending_one() -> None:
    """The relay serves a join asking for a snapshot *and* resuming: the bindings without a
    snapshot continue from the channel's position, the pending one gets its rows again."""
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        resyncs: list[ResyncNeeded] = []
        ch = (
            client.channel("dash")
            .on_postgres_changes("*", table="t", snapshot=True)
            .on_postgres_changes("*", table="u")
            .on_resync(resyncs.append)
        )
        await ch.subscribe(timeout=5)
        assert [b.get("snapshot") for b in config(relay.joins()[0])["postgres_changes"]] == [True, None]
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.change(TOPIC, 102, "INSERT", pos(6, 0), {"id": 9}, table="u")
        await until(lambda: ch.position == pos(6, 0), 5, "live change of the other binding")
        rejoin = await _rejoin_after_drop(relay)
        assert config(rejoin)["resume_from"] == pos(6, 0)
        assert [b.get("snapshot") for b in config(rejoin)["postgres_changes"]] == [True, None]
        await until(lambda: ch.is_joined, 5, "rejoined")
        await relay.complete(TOPIC, 101, 0, pos(8, 0xFFFFFFFF))
        await relay.change(TOPIC, 102, "INSERT", pos(9, 0), {"id": 10}, table="u")
        await until(lambda: ch.position == pos(9, 0), 5, "the change after the marker")
        assert resyncs == [] and ch.stats.snapshots == 1
        await client.close()


async def test_live_table_follows_snapshot_changes_and_a_fresh_snapshot() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        calls: list[tuple[Any, Any, Any]] = []
        ch = client.channel("dash")
        live = LiveTable(ch, "t", on_change=lambda k, old, new: calls.append((k, old, new)))
        assert ch.resync_snapshot
        await ch.subscribe(timeout=5)
        assert config(relay.joins()[0])["postgres_changes"][0]["snapshot"] is True
        assert not live.ready
        await relay.subscribed(TOPIC, pos(5, 0xFFFFFFFF))
        await relay.row(TOPIC, 101, {"id": 1, "v": "a"})
        await relay.row(TOPIC, 101, {"id": 2, "v": "b"})
        await asyncio.sleep(0.05)
        assert live.rows == {} and not live.ready  # half a snapshot is never shown
        await relay.complete(TOPIC, 101, 2, pos(6, 0xFFFFFFFF))
        await live.wait_ready(5)
        assert live.rows == {(1,): {"id": 1, "v": "a"}, (2,): {"id": 2, "v": "b"}}
        assert calls == [((1,), None, {"id": 1, "v": "a"}), ((2,), None, {"id": 2, "v": "b"})]
        calls.clear()
        await relay.change(TOPIC, 101, "INSERT", pos(7, 0), {"id": 3, "v": "c"})
        await relay.change(TOPIC, 101, "UPDATE", pos(8, 0), {"id": 1, "v": "A"}, {"id": 1, "v": "a"})
        # the primary key itself changes
        await relay.change(TOPIC, 101, "UPDATE", pos(9, 0), {"id": 20, "v": "b"}, {"id": 2, "v": "b"})
        await relay.change(TOPIC, 101, "DELETE", pos(10, 0), None, {"id": 3, "v": "c"})
        # a row entering the view (old_record is only its key), one leaving it (moved_out)
        await relay.change(TOPIC, 101, "UPDATE", pos(11, 0), {"id": 4, "v": "d"}, {"id": 4})
        await relay.change(TOPIC, 101, "DELETE", pos(12, 0), None, {"id": 1, "v": "A"}, moved_out=True)
        # a policy error: no row to apply, skipped and counted
        await relay.change(
            TOPIC, 101, "UPDATE", pos(13, 0), {}, {}, errors=["PolicyError 42501: x (policy p)"]
        )
        await until(lambda: live.position == pos(13, 0), 5, "changes applied")
        assert live.rows == {(20,): {"id": 20, "v": "b"}, (4,): {"id": 4, "v": "d"}}
        assert live.skipped == 1 and live.ready
        assert calls == [
            ((3,), None, {"id": 3, "v": "c"}),
            ((1,), {"id": 1, "v": "a"}, {"id": 1, "v": "A"}),
            ((2,), {"id": 2, "v": "b"}, None),
            ((20,), None, {"id": 20, "v": "b"}),
            ((3,), {"id": 3, "v": "c"}, None),
            ((4,), None, {"id": 4, "v": "d"}),
            ((1,), {"id": 1, "v": "A"}, None),
        ]
        calls.clear()
        rows_object = live.rows
        # resync: not ready until the fresh snapshot, which replaces the content (diffs reported)
        n = len(relay.frames)
        await relay.send(
            TOPIC,
            "system",
            {
                "status": "error",
                "extension": "postgres_changes",
                "code": "resync_needed",
                "message": "resync needed",
                "position": pos(30, 0xFFFFFFFF),
            },
        )
        rejoin = await relay.next_frame("phx_join", n)
        assert config(rejoin)["postgres_changes"][0]["snapshot"] is True
        await until(lambda: not live.ready, 5, "not ready after the resync")
        await until(lambda: ch.is_joined, 5, "rejoined")
        await relay.row(TOPIC, 101, {"id": 4, "v": "d"})
        await relay.row(TOPIC, 101, {"id": 5, "v": "e"})
        await relay.complete(TOPIC, 101, 2, pos(31, 0xFFFFFFFF))
        await live.wait_ready(5)
        assert live.rows is rows_object
        assert live.rows == {(4,): {"id": 4, "v": "d"}, (5,): {"id": 5, "v": "e"}}
        assert sorted(calls, key=repr) == sorted(
            [((5,), None, {"id": 5, "v": "e"}), ((20,), {"id": 20, "v": "b"}, None)], key=repr
        )
        assert live.snapshots == 2 and live.position == pos(31, 0xFFFFFFFF)
        await client.close()


async def test_live_table_drops_the_rows_of_a_snapshot_cut_by_a_reconnect() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        ch = client.channel("dash")
        live = LiveTable(ch, "t", key="id")
        await ch.subscribe(timeout=5)
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.row(TOPIC, 101, {"id": 2})
        await until(lambda: ch.stats.snapshot_rows == 2, 5, "rows")
        n = len(relay.frames)
        await relay.drop()
        await relay.next_frame("phx_join", n)
        await until(lambda: ch.is_joined, 5, "rejoined")
        # row 2 was deleted meanwhile: the new snapshot has only row 1 and nothing is left over
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.complete(TOPIC, 101, 1, pos(9, 0xFFFFFFFF))
        await live.wait_ready(5)
        assert live.rows == {(1,): {"id": 1}}
        await client.close()


async def test_live_table_wait_ready_raises_the_snapshot_error_and_reload_asks_again() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        ch = client.channel("dash")
        live = LiveTable(ch, "t", retries=0)  # the application decides when to ask again
        await ch.subscribe(timeout=5)
        waiter = asyncio.create_task(live.wait_ready(5))
        await asyncio.sleep(0.05)
        await relay.send(
            TOPIC,
            "system",
            {
                "status": "error",
                "extension": "postgres_changes",
                "code": "snapshot_timeout",
                "message": "snapshot timed out after 30 s",
                "id": 101,
            },
        )
        with pytest.raises(SnapshotError) as info:
            await waiter
        assert info.value.code == "snapshot_timeout" and not live.ready
        # a timeout may pass: reload() joins again asking for the snapshot
        n = len(relay.frames)
        live.reload()
        rejoin = await relay.next_frame("phx_join", n)
        assert config(rejoin)["postgres_changes"][0]["snapshot"] is True
        await until(lambda: ch.is_joined, 5, "rejoined")
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.complete(TOPIC, 101, 1, pos(4, 0xFFFFFFFF))
        await live.wait_ready(5)
        assert live.rows == {(1,): {"id": 1}} and live.error is None
        await client.close()


async def test_the_blocking_facade_asks_for_snapshots_and_streams_their_events() -> None:
    async with ScriptedRelay() as relay:

        def run() -> list[Any]:
            with SyncRelayClient(relay.url, token(), **FAST) as client:
                ch = client.channel("dash", on_resync="snapshot").on_postgres_changes(
                    "*", table="t", snapshot=True
                )
                items = ch.changes(snapshot=True, timeout=5)
                ch.subscribe(timeout=5)
                assert ch.channel.resync_snapshot
                return [next(items), next(items)]

        got = asyncio.create_task(asyncio.to_thread(run))
        join = await relay.next_frame("phx_join")
        assert config(join)["postgres_changes"][0]["snapshot"] is True
        await relay.row(TOPIC, 101, {"id": 1})
        await relay.complete(TOPIC, 101, 1, pos(3, 0xFFFFFFFF))
        row, done = await asyncio.wait_for(got, 10)
        assert isinstance(row, SnapshotRow) and isinstance(done, SnapshotComplete) and done.rows == 1


def _snapshot_error(code: str) -> dict[str, Any]:
    return {"status": "error", "extension": "postgres_changes", "code": code, "message": code, "id": 101}


QUICK_RETRY = BackoffPolicy(initial=0.02, maximum=0.05, stable_after=0.0)


async def test_live_table_asks_again_by_itself_after_a_snapshot_failure_that_may_pass() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        ch = client.channel("dash")
        live = LiveTable(ch, "t", retries=3, retry_policy=QUICK_RETRY)
        await ch.subscribe(timeout=5)
        waiter = asyncio.create_task(live.wait_ready(5))  # does not fail while a retry is due
        for code in ("snapshot_timeout", "snapshot_failed"):
            n = len(relay.frames)
            await relay.send(TOPIC, "system", _snapshot_error(code))
            rejoin = await relay.next_frame("phx_join", n)
            assert config(rejoin)["postgres_changes"][0]["snapshot"] is True
            await until(lambda: ch.is_joined, 5, "rejoined")
        assert not waiter.done() and live.retries == 2
        await relay.row(TOPIC, 101, {"id": 7})
        await relay.complete(TOPIC, 101, 1, pos(5, 0xFFFFFFFF))
        await waiter
        assert live.rows == {(7,): {"id": 7}} and live.error is None and not live.retrying
        await client.close()


async def test_live_table_does_not_retry_a_snapshot_too_large_and_gives_up_after_its_retries() -> None:
    async with ScriptedRelay() as relay:
        client = client_for(relay)
        ch = client.channel("dash")
        live = LiveTable(ch, "t", retries=2, retry_policy=QUICK_RETRY)
        await ch.subscribe(timeout=5)
        # too large: asking again would get the same answer, so wait_ready fails at once
        waiter = asyncio.create_task(live.wait_ready(5))
        await asyncio.sleep(0.05)
        n = len(relay.frames)
        await relay.send(TOPIC, "system", _snapshot_error("snapshot_too_large"))
        with pytest.raises(SnapshotError) as info:
            await waiter
        assert info.value.code == "snapshot_too_large" and live.retries == 0
        await asyncio.sleep(0.2)
        assert not [f for f in relay.frames[n:] if f.event == "phx_join"], "no rejoin for a permanent error"
        # timeouts: two automatic reloads, then the third failure is the application's to handle
        live.reload()
        waiter = asyncio.create_task(live.wait_ready(5))
        for _ in range(2):
            n = len(relay.frames)
            await until(lambda: ch.is_joined, 5, "joined")
            await relay.send(TOPIC, "system", _snapshot_error("snapshot_timeout"))
            await relay.next_frame("phx_join", n)
        await until(lambda: ch.is_joined, 5, "joined")
        await relay.send(TOPIC, "system", _snapshot_error("snapshot_timeout"))
        with pytest.raises(SnapshotError):
            await waiter
        assert live.retries == 2 and not live.retrying
        await client.close()
