"""Batches of the replication stream: a backlog is handed over in large batches (issue 16).

Each batch the pipeline hands to the fan-out ends in one write per touched socket, so the batch
size under load sets how many socket writes a delivery costs.  A batch used to be one libpq read
(~16 KiB, about ten changes of a wide row); the stream now also takes what the kernel already
holds, up to ``ReplicationStream.batch_bytes``, and still yields at once when the stream is dry.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay.core.changes import RowChange
from relay.core.wal2json import Decoder, wal2json_options
from relay.postgres.migrate import apply_migrations
from relay.postgres.replication import ReplicationStream

pytestmark = pytest.mark.pg

ROWS = 4000


def _setup(dsn: str) -> None:
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.wide (id int primary key, pad text)")
        conn.execute("select realtime.enable_table('public.wide')")


def _backlog(dsn: str, first: int, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into public.wide select g, repeat('x', 300) from generate_series(%s::int, %s::int) g",
            (first, first + n - 1),
        )


async def _batches(stream: ReplicationStream, want: int) -> tuple[list[int], list[int]]:
    """Sizes (payload bytes) of the batches that carried ``want`` row changes, and the row ids."""
    decoder = Decoder()
    sizes: list[int] = []
    ids: list[int] = []
    async for batch in stream.batches(idle_timeout=0.2):
        if not batch:
            continue
        sizes.append(sum(len(p) for p in batch))
        for payload in batch:
            event = decoder.decode(payload)
            if type(event) is RowChange:
                assert event.record is not None
                ids.append(int(event.record["id"]))
        if len(ids) >= want:
            break
    return sizes, ids


async def test_backlog_is_handed_over_in_batches_larger_than_one_read(pg_dsn: str) -> None:
    await asyncio.to_thread(_setup, pg_dsn)
    stream = ReplicationStream(pg_dsn, "batches", wal2json_options([("public", "wide")]), temporary=True)
    await stream.start()
    try:
        await asyncio.to_thread(_backlog, pg_dsn, 1, ROWS)
        await asyncio.sleep(1.0)  # the walsender fills the socket while the relay is "busy"
        sizes, ids = await _batches(stream, ROWS)
    finally:
        await stream.close()
    assert ids == list(range(1, ROWS + 1))  # every change once, in order
    # one read is ~16 KiB; the backlog (about 1.5 MB) comes in batches of up to batch_bytes
    assert max(sizes) >= 128 * 1024, sizes
    assert max(sizes) <= stream.batch_bytes + 1024 * 1024, sizes


async def test_interrupt_ends_an_idle_wait_at_once(pg_dsn: str) -> None:
    """A stop must not wait for the next idle tick: ``interrupt`` makes the wait yield ``[]``."""
    await asyncio.to_thread(_setup, pg_dsn)
    stream = ReplicationStream(pg_dsn, "interrupt", wal2json_options([("public", "wide")]), temporary=True)
    await stream.start()
    try:
        batches = stream.batches(idle_timeout=60)  # without an interrupt: a minute per tick

        async def next_batch() -> list[bytes]:
            return await anext(batches)

        first = asyncio.get_running_loop().create_task(next_batch())
        await asyncio.sleep(0.3)  # (a dry stream: its wait is armed)
        assert not first.done()
        stream.interrupt()
        assert await asyncio.wait_for(first, 10) == []
        stream.interrupt()  # nothing waits now: no effect, no error
    finally:
        await stream.close()
