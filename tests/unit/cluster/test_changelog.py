"""The change log's codec (pure) and its append script's fencing, against a real redis-server.

No Postgres: the leader's sink is fed :class:`RowChange` values built here, the way the pipeline
would hand them over, and the log is read back with XRANGE.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis

from relay.cluster.changelog import (
    NEW_GENERATION,
    ClusterKeys,
    LogSink,
    Meta,
    decode_entry,
    decode_message_header,
    decode_slot,
    encode_slot,
    entry_key,
    message_header,
)
from relay.cluster.follower import _id
from relay.core.changes import Action, Column, Commit, Lsn, RowChange
from relay.core.position import pack, seq_before
from relay.core.relay_messages import DatabaseBroadcast, PolicyChanged, TopicPolicyChanged
from relay.core.stream import StreamIdentity
from relay.postgres.replication import SlotInfo
from tests.support.redis_server import RedisServer

KEYS = ClusterKeys("unit_slot")


def _change(commit: int, index: int) -> RowChange:
    raw = orjson.dumps(
        {"action": "I", "schema": "public", "table": "t", "columns": [{"name": "id", "value": index}]}
    )
    return RowChange(
        "public",
        "t",
        Action.INSERT,
        (Column("id", "int4"),),
        {"id": index},
        None,
        "ts",
        Lsn(commit),
        index,
        raw=raw,
    )


def test_keys_share_one_hash_slot() -> None:
    assert KEYS.log == "relay:{unit_slot}:log"
    assert {k.split("}")[0] for k in (KEYS.log, KEYS.meta, KEYS.lease, KEYS.epoch)} == {"relay:{unit_slot"}


def test_slot_and_messages_round_trip() -> None:
    ident = StreamIdentity("7000", 1, 5, "unit_slot")
    info = SlotInfo(True, Lsn(0x10), Lsn(0x20), "lost", ident)
    back, nat = decode_slot(orjson.loads(orjson.dumps(encode_slot(info, True))))
    assert back == info and nat is True
    for msg in (
        DatabaseBroadcast({"op": "broadcast", "topic": "x"}, 42),
        PolicyChanged(),
        TopicPolicyChanged("9"),
    ):
        h = message_header(msg)
        assert h is not None and decode_message_header(orjson.loads(orjson.dumps(h))) == msg


def test_entry_keys_order_transactions_then_ordinals() -> None:
    assert entry_key(5, 0) < entry_key(5, 1) < entry_key(6, 0)
    assert _id("1700000000000-2") < _id("1700000000000-10") < _id("1700000000001-0")


async def _new_log(r: Redis, token: str, floor: int = 0) -> Meta:
    assert await r.set(KEYS.lease, token)
    ok = await r.register_script(NEW_GENERATION)(
        keys=[KEYS.lease, KEYS.log, KEYS.meta], args=[token, "gen1", seq_before(floor), floor]
    )
    assert ok == 1
    meta = Meta.parse(await r.hgetall(KEYS.meta))
    assert meta is not None
    return meta


async def _entries(r: Redis) -> list[dict[str, object]]:
    entries: Any = await r.xrange(KEYS.log)
    return [decode_entry(f).header for _, f in entries]


async def _flushed(sink: LogSink) -> None:
    for _ in range(200):
        if not sink._pending or sink.fenced:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sink did not flush")


async def test_appends_carry_predecessor_and_hold_follows_what_the_log_holds(
    redis_server: RedisServer,
) -> None:
    r = Redis.from_url(redis_server.url)
    try:
        meta = await _new_log(r, "a|1", floor=0x100)
        sink = LogSink(r, KEYS, "a|1", meta, window_s=300, max_entries=10_000)
        assert sink.hold() == Lsn(0x100)
        sink.start()
        sink.change(_change(0x200, 0))
        sink.change(_change(0x200, 1))
        sink.commit(Commit(Lsn(0x200), Lsn(0x210), "ts"))
        sink.commit(Commit(Lsn(0x300), Lsn(0x310), "ts"))  # empty: bookkeeping only
        await _flushed(sink)
        hs = await _entries(r)
        assert [h["t"] for h in hs] == ["c", "c", "x"]
        assert [h["p"] for h in hs] == [seq_before(0x100), pack(0x200, 0), pack(0x200, 1)]
        assert sink.hold() == Lsn(0x310)  # the empty transaction's end too: the slot may advance
        after = Meta.parse(await r.hgetall(KEYS.meta))
        assert after is not None and after.last_end == 0x310 and after.last_seq == pack(0x200, 1)
        await sink.close()
    finally:
        await r.aclose()


async def test_a_deposed_leader_cannot_append(redis_server: RedisServer) -> None:
    """Once the lease holds another token, every append of the old leader is refused (fenced)."""
    r = Redis.from_url(redis_server.url)
    try:
        meta = await _new_log(r, "old|1")
        old = LogSink(r, KEYS, "old|1", meta, window_s=300, max_entries=10_000)
        old.start()
        old.change(_change(0x200, 0))
        await _flushed(old)
        await r.set(KEYS.lease, "new|2")  # the lease expired and another node took it
        old.change(_change(0x300, 0))
        old.commit(Commit(Lsn(0x300), Lsn(0x310), "ts"))
        await asyncio.wait_for(old.fenced_event.wait(), 5)
        assert old.fenced is not None and "lease" in old.fenced
        assert len(await _entries(r)) == 1  # nothing after the lease changed hands
        assert old.hold() == Lsn(0)  # and the slot is not confirmed past what the log holds
        await old.close()
    finally:
        await r.aclose()


async def test_a_new_leader_skips_what_the_old_one_appended_and_a_lost_tail_is_refused(
    redis_server: RedisServer,
) -> None:
    r = Redis.from_url(redis_server.url)
    try:
        meta = await _new_log(r, "old|1")
        old = LogSink(r, KEYS, "old|1", meta, window_s=300, max_entries=10_000)
        old.start()
        old.change(_change(0x200, 0))  # died mid-transaction: index 1 and the commit never made it
        await _flushed(old)
        await old.close()
        await r.set(KEYS.lease, "new|2")
        parsed = Meta.parse(await r.hgetall(KEYS.meta))
        assert parsed is not None
        meta = parsed
        # the transaction is not "in the log" until its end is: else the next leader's pipeline
        # would skip it by commit LSN, losing the changes the old leader never appended
        assert meta.last_commit < 0x200 and meta.last_end < 0x200
        new = LogSink(r, KEYS, "new|2", meta, window_s=300, max_entries=10_000)
        new.start()
        for i in range(2):  # the slot decodes the whole transaction again
            new.change(_change(0x200, i))
        new.commit(Commit(Lsn(0x200), Lsn(0x210), "ts"))
        await _flushed(new)
        hs = await _entries(r)
        assert [(h["t"], h.get("s")) for h in hs] == [
            ("c", pack(0x200, 0)),
            ("c", pack(0x200, 1)),
            ("x", None),
        ]
        assert hs[1]["p"] == pack(0x200, 0)
        # the log loses its tail (Redis restarted from an older AOF): the leader must not go on
        tail: Any = await r.xrevrange(KEYS.log, count=1)
        await r.xdel(KEYS.log, tail[0][0])
        tail = await r.xrevrange(KEYS.log, count=1)
        await r.hset(KEYS.meta, "last_id", tail[0][0])
        new.change(_change(0x300, 0))
        await asyncio.wait_for(new.fenced_event.wait(), 5)
        assert new.fenced is not None and "lost" in new.fenced
        await new.close()
    finally:
        await r.aclose()


async def test_another_database_history_is_not_deduplicated_against_the_old_one(
    redis_server: RedisServer,
) -> None:
    """After a failover or restore the stream identity changes and LSNs start over lower: the
    sink must append them, not skip them as already in the log by key."""
    from relay.pipeline import PipelineStats

    r = Redis.from_url(redis_server.url)
    try:
        meta = await _new_log(r, "a|1")
        sink = LogSink(r, KEYS, "a|1", meta, window_s=300, max_entries=10_000)
        sink.start()
        running = PipelineStats(streaming=True)
        old, new = StreamIdentity("7000", 1, 5, "s"), StreamIdentity("8000", 1, 5, "s")
        sink.slot(SlotInfo(False, Lsn(0x400), Lsn(0x400), "", old), True)
        sink.status(running)
        sink.change(_change(0x500, 0))
        sink.commit(Commit(Lsn(0x500), Lsn(0x510), "ts"))
        sink.slot(SlotInfo(True, Lsn(0x100), Lsn(0x100), "new", new), False)
        sink.status(running)
        sink.change(_change(0x200, 0))
        sink.commit(Commit(Lsn(0x200), Lsn(0x210), "ts"))
        await _flushed(sink)
        hs = await _entries(r)
        assert [(h["t"], h.get("s")) for h in hs] == [
            ("s", None),
            ("c", pack(0x500, 0)),
            ("x", None),
            ("s", None),
            ("c", pack(0x200, 0)),
            ("x", None),
        ]
        assert hs[4]["p"] == seq_before(0x100)
        await sink.close()
    finally:
        await r.aclose()
