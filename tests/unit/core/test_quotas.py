"""Quotas as pure logic: the token bucket, connection counts and the change payload trim."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.config import Config, ConfigError
from relay.core.quotas import (
    CHANGE_TOO_LARGE_ERROR,
    CONNECTIONS,
    CONNECTIONS_PER_ADDRESS,
    CONNECTIONS_PER_SUB,
    ConnectionCounts,
    KeyedBuckets,
    TokenBucket,
    trim_change_data,
)


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    b = TokenBucket(rate=4, now=100.0)
    assert all(b.take(100.0) for _ in range(4))
    assert not b.take(100.0)  # the burst is spent
    assert not b.take(100.125)  # half a token
    assert b.take(100.25)  # one token after 1/rate seconds
    assert not b.take(100.25)
    assert sum(b.take(200.0) for _ in range(50)) == 4  # refills up to the burst, never beyond


def test_a_client_pacing_itself_at_the_rate_is_never_refused() -> None:
    b = TokenBucket(rate=5, now=0.0)
    assert all(b.take(0.0) for _ in range(5))  # even right after using the whole burst
    assert all(b.take(i / 5 + 1e-9) for i in range(1, 200))


def test_bucket_with_rate_zero_is_unlimited_and_a_refusal_spends_nothing() -> None:
    assert all(TokenBucket(rate=0).take(0.0) for _ in range(10_000))
    b = TokenBucket(rate=1, burst=2, now=0.0)
    assert b.take(0.0) and b.take(0.0)
    assert not b.take(0.0) and not b.take(0.5)
    assert b.take(1.0)  # the refused attempts did not push the refill back


def test_keyed_buckets_limit_each_key_on_its_own() -> None:
    kb = KeyedBuckets(rate=2, burst=5)
    assert kb.take("a", 0.0, 5) and not kb.take("a", 0.0)  # a burst of 5, then nothing
    assert kb.take("b", 0.0, 5)  # another caller's bucket is untouched
    assert not kb.take("a", 0.25) and kb.take("a", 0.5)  # refills at 2 a second
    assert not kb.take("c", 0.0, 6)  # more than the burst never passes, and spends nothing
    assert kb.take("c", 0.0, 5)
    assert all(KeyedBuckets(rate=0).take(i, 0.0, 1000) for i in range(100))  # 0: unlimited


def test_keyed_buckets_stay_bounded_and_never_refuse_a_caller_within_its_rate() -> None:
    kb = KeyedBuckets(rate=1, burst=1, max_keys=100)
    for i in range(10_000):  # a caller rotating keys cannot grow the map beyond its bound
        kb.take(("address", i), i * 0.001)
        assert len(kb) <= 100
    # a caller that keeps to its rate is never refused, whatever others do meanwhile
    for step in range(50):
        now = 20.0 + step * 1.0
        assert kb.take("steady", now)
        for j in range(30):
            kb.take(("flood", step, j), now)
    # the full buckets go first: a busy caller's spent bucket survives a prune of idle ones
    kb2 = KeyedBuckets(rate=1, burst=1, max_keys=3)
    assert kb2.take("busy", 0.0)
    for k in ("x", "y"):
        kb2.take(k, 0.0)
    assert kb2.take("z", 5.0)  # pruning at 5.0: every bucket is full again by then
    assert kb2.take("busy", 5.0) and not kb2.take("busy", 5.0)


def test_connection_counts_refuse_and_release() -> None:
    c = ConnectionCounts(total=3, per_sub=2, per_address=0)
    for _ in range(2):
        assert c.admit("alice", "10.0.0.1") is None
        c.add("alice", "10.0.0.1")
    assert c.admit("alice", "10.0.0.2") is CONNECTIONS_PER_SUB
    assert c.admit(None, "10.0.0.1") is None  # no sub: only the other limits apply
    c.add("bob", "10.0.0.1")
    assert c.admit("carol", "10.0.0.3") is CONNECTIONS
    c.remove("alice", "10.0.0.1")
    assert c.admit("alice", "10.0.0.1") is None
    c.remove("alice", "10.0.0.1")
    c.remove("bob", "10.0.0.1")
    assert c.total == 0 and not c.by_sub and not c.by_address  # nothing leaks


def test_connection_counts_per_address() -> None:
    c = ConnectionCounts(total=0, per_sub=0, per_address=1)
    c.add("a", "127.0.0.1")
    assert c.admit("b", "127.0.0.1") is CONNECTIONS_PER_ADDRESS
    assert c.admit("b", "::1") is None


def test_trim_keeps_small_values_and_says_why() -> None:
    data: dict[str, Any] = {
        "type": "UPDATE",
        "record": {"id": 7, "body": "x" * 1000, "tag": "short", "doc": {"k": "v" * 100}},
        "old_record": {"id": 7, "body": "y" * 1000},
        "errors": None,
    }
    out = trim_change_data(data)
    assert out["record"] == {"id": 7, "tag": "short"}
    assert out["old_record"] == {"id": 7}
    assert out["errors"] == [CHANGE_TOO_LARGE_ERROR] == ["Error 413: Payload Too Large"]
    assert data["record"]["body"] == "x" * 1000  # the input is not changed
    # an existing error is kept beside it
    assert trim_change_data({"errors": ["other"]})["errors"] == ["other", CHANGE_TOO_LARGE_ERROR]


def test_frame_cache_trims_only_above_the_limit() -> None:
    from relay.core.changes import Action, Column, Lsn, RowChange
    from relay.core.subscriptions import FrameCache

    change = RowChange(
        schema="public",
        table="t",
        action=Action.INSERT,
        columns=(Column("id", "int8"), Column("body", "text")),
        record={"id": 1, "body": "z" * 5000},
        old_record=None,
        commit_timestamp="2026-01-01T00:00:00Z",
        commit_lsn=Lsn(1000),
        index=0,
        pk=("id",),
    )
    small = FrameCache(change, max_data_bytes=100_000)
    assert not small.trimmed
    data = orjson.loads(small.frame("realtime:x", [1], "1.0.0"))["payload"]["data"]
    assert data["record"]["body"] == "z" * 5000 and data["errors"] is None
    big = FrameCache(change, max_data_bytes=2000)
    assert big.trimmed
    data = orjson.loads(big.frame("realtime:x", [1], "1.0.0"))["payload"]["data"]
    assert data["record"] == {"id": 1} and data["errors"] == [CHANGE_TOO_LARGE_ERROR]
    assert [c["name"] for c in data["columns"]] == ["id", "body"]  # the shape is still described
    assert not FrameCache(change).trimmed  # 0: no limit


def test_quota_settings_are_validated() -> None:
    cfg = Config.from_env({"RELAY_MAX_CHANNELS_PER_CONNECTION": "7", "RELAY_TOKEN_EXPIRY_WARNING": "5"})
    assert cfg.max_channels_per_connection == 7 and cfg.token_expiry_warning == 5.0
    assert Config().max_channels_per_connection == 100 and Config().max_change_bytes == 1024 * 1024
    with pytest.raises(ConfigError, match="RELAY_MAX_EVENTS_PER_SECOND"):
        Config.from_env({"RELAY_MAX_EVENTS_PER_SECOND": "-1"})


def test_trimmed_change_keeps_exact_numbers() -> None:
    """Re-encoding a trimmed change must not turn numerics into floats or lose big integers."""
    from decimal import Decimal

    from relay.core.changes import Action, Column, Lsn, RowChange
    from relay.core.subscriptions import FrameCache

    change = RowChange(
        schema="public",
        table="t",
        action=Action.INSERT,
        columns=(Column("id", "numeric"), Column("n", "numeric"), Column("body", "text")),
        record={"id": Decimal(2**70), "n": Decimal("12345678901234567890.123456789"), "body": "z" * 5000},
        old_record=None,
        commit_timestamp="2026-01-01T00:00:00Z",
        commit_lsn=Lsn(1000),
        index=0,
    )
    frame = FrameCache(change, max_data_bytes=2000).frame("realtime:x", [1], "1.0.0")
    assert f'"record":{{"id":{2**70},"n":12345678901234567890.123456789}}' in frame


def test_trimming_a_deeply_nested_json_value_never_raises() -> None:
    """A jsonb value 5,000 levels deep in an oversized change: trimmed, not a stopped stream.

    (The first merge of the size quota re-parsed the encoded change with the standard library,
    whose recursion limit is about 1,000 levels: one such row would have failed every retry.)
    """
    from relay.core.changes import Action, Column, Lsn, RowChange
    from relay.core.sqltypes import RawJson
    from relay.core.subscriptions import FrameCache

    deep = RawJson("[" * 5000 + "]" * 5000)
    change = RowChange(
        schema="public",
        table="t",
        action=Action.INSERT,
        columns=(Column("id", "int8"), Column("doc", "jsonb")),
        record={"id": 7, "doc": deep},
        old_record=None,
        commit_timestamp="2026-01-01T00:00:00Z",
        commit_lsn=Lsn(1000),
        index=0,
        pk=("id",),
    )
    cache = FrameCache(change, max_data_bytes=2000)
    assert cache.trimmed
    data = orjson.loads(cache.frame("realtime:x", [1], "1.0.0"))["payload"]["data"]
    assert data["record"] == {"id": 7} and data["errors"] == [CHANGE_TOO_LARGE_ERROR]
    whole = FrameCache(change, max_data_bytes=20_000).frame("realtime:x", [1], "1.0.0")
    assert "[" * 5000 in whole  # under the limit: verbatim, at any depth
