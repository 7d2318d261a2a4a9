"""Batch sizes of the replication stream while it drains a backlog (issue 16, drain).

Why it matters: the pipeline hands a batch over in one go and the fan-out ends it with one socket
write per subscriber, so a batch per libpq buffer (16 KiB: ~7 wide rows) made the relay pay a
write per few changes.  The stream now reads the socket again while a backlog keeps it full.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from relay.core.wal2json import wal2json_options
from relay.postgres.replication import ReplicationStream

pytestmark = pytest.mark.pg

ROWS = 600  # single-row transactions: 1,800 messages of ~160 bytes, far more than 16 KiB
LIMIT = 300


def _backlog(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.items (id int primary key)")
        conn.execute("select pg_create_logical_replication_slot('batches', 'wal2json')")
        for i in range(ROWS):
            conn.execute("insert into public.items values (%s)", (i,))


async def test_a_backlog_arrives_in_batches_of_batch_messages(pg_dsn: str) -> None:
    await asyncio.to_thread(_backlog, pg_dsn)
    stream = ReplicationStream(
        pg_dsn, "batches", wal2json_options([("public", "items")]), batch_messages=LIMIT
    )
    await stream.start()
    sizes: list[int] = []
    rows = 0
    try:
        await asyncio.sleep(1.0)  # the walsender fills the socket while nobody reads
        deadline = time.monotonic() + 30
        async for batch in stream.batches(idle_timeout=0.2):
            if batch:
                sizes.append(len(batch))
                rows += sum(1 for m in batch if m.startswith(b'{"action":"I"'))
            if rows >= ROWS or time.monotonic() > deadline:
                break
    finally:
        await stream.close()
    assert rows == ROWS
    assert max(sizes) == LIMIT, sizes  # one libpq buffer holds ~100 of these messages
    assert sum(sizes) == 3 * ROWS  # B, I, C per transaction: nothing lost or repeated


def _wide_backlog(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.docs (id int primary key, body text)")
        conn.execute("select pg_create_logical_replication_slot('wide', 'wal2json')")
        with conn.transaction():  # one transaction: rows back to back, no B/C between them
            for i in range(40):
                conn.execute("insert into public.docs values (%s, repeat('x', 10000))", (i,))


async def test_a_batch_of_wide_rows_ends_at_batch_bytes(pg_dsn: str) -> None:
    """512 rows with large values must not become one batch of their total size."""
    await asyncio.to_thread(_wide_backlog, pg_dsn)
    stream = ReplicationStream(
        pg_dsn, "wide", wal2json_options([("public", "docs")]), batch_messages=LIMIT, batch_bytes=50_000
    )
    await stream.start()
    sizes: list[int] = []
    rows = 0
    try:
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + 30
        async for batch in stream.batches(idle_timeout=0.2):
            if batch:
                sizes.append(sum(len(m) for m in batch))
                rows += sum(1 for m in batch if m.startswith(b'{"action":"I"'))
            if rows >= 40 or time.monotonic() > deadline:
                break
    finally:
        await stream.close()
    assert rows == 40
    # a batch stops at the first message that reaches the limit: at most one row past it
    assert max(sizes) < 50_000 + 11_000, sizes
    assert len(sizes) >= 8  # 40 rows of ~10 KB in batches of at most ~60 KB
