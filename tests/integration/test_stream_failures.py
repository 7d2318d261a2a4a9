"""The replication stream under failures that are not a clean disconnect (issue 11, item 12).

- a half-open link to Postgres (blackholed by a TCP proxy) is noticed by the stream's receive
  deadline, and the walsender still holding the slot for it is released, so streaming resumes
  without waiting for wal_sender_timeout and without losing or repeating a change;
- a relay bug (here: a sink that raises) is logged with its traceback and counted in
  ``internal_errors``, and the pipeline retries and delivers the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from relay.core.changes import RowChange
from relay.core.wal2json import wal2json_options
from relay.pipeline import ChangesOnly, Pipeline
from relay.postgres.catalog import Catalog
from relay.postgres.migrate import apply_migrations
from relay.postgres.replication import ReplicationStream
from tests.support.tcp_proxy import FaultProxy

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _setup(dsn: str) -> None:
    apply_migrations(dsn)
    _exec(dsn, "create table public.items (id int primary key)")
    _exec(dsn, "select realtime.enable_table('public.items')")


async def _until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


class _Run:
    """A pipeline task of the test's own, with the ids its sink received."""

    def __init__(self, pipeline: Pipeline, got: list[int]) -> None:
        self.pipeline = pipeline
        self.got = got


@contextlib.asynccontextmanager
async def _running(
    dsn: str, stream_dsn: str, sink_hook: Callable[[RowChange], None] | None = None, **kw: Any
) -> AsyncIterator[_Run]:
    catalog = Catalog(dsn)
    await catalog.open()
    got: list[int] = []

    def sink(change: RowChange) -> None:
        if sink_hook is not None:
            sink_hook(change)
        assert change.record is not None  # the test writes inserts only
        got.append(int(change.record["id"]))

    pipeline = Pipeline(
        stream_dsn, catalog, ChangesOnly(sink), slot="failures", publication="supabase_realtime", **kw
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    try:
        await asyncio.wait_for(pipeline.ready.wait(), 20)
        yield _Run(pipeline, got)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await catalog.close()


async def test_half_open_link_is_noticed_and_streaming_resumes(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(_setup, pg_dsn)
    port = int(pg_dsn.rsplit(":", 1)[1].split("/", 1)[0])
    async with FaultProxy(port) as proxy:
        stream_dsn = pg_dsn.replace(f":{port}/", f":{proxy.port}/") + "?connect_timeout=2"
        async with _running(pg_dsn, stream_dsn, receive_timeout=2.0, poll_interval=0.2) as run:
            await asyncio.to_thread(_exec, pg_dsn, "insert into public.items values (1)")
            await _until(lambda: run.got == [1], 10, "first row")
            await asyncio.sleep(2.5)  # idle longer than the deadline: the stream asks and lives
            assert run.pipeline.stats.streaming and run.pipeline.stats.restarts == 0
            assert "considered dead" not in caplog.text
            assert proxy.blackhole(half_open=True) == 1  # the replication connection goes half-open
            t0 = time.monotonic()
            await asyncio.to_thread(_exec, pg_dsn, "insert into public.items values (2)")
            await _until(lambda: "considered dead" in (run.pipeline.stats.last_error or ""), 10, "deadline")
            noticed = time.monotonic() - t0
            assert noticed < 4, noticed
            proxy.blackhole(False)
            # its walsender still holds the slot (wal_sender_timeout is 60 s): it is released
            await _until(lambda: run.got == [1, 2], 20, "row written while the link was dead")
            assert "terminating walsender" in caplog.text
            await asyncio.to_thread(_exec, pg_dsn, "insert into public.items values (3)")
            await _until(lambda: len(run.got) >= 3, 10, "row after recovery")
            await asyncio.sleep(0.5)
            assert run.got == [1, 2, 3]
            assert run.pipeline.stats.internal_errors == 0


async def test_internal_error_is_logged_with_traceback_counted_and_retried(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(_setup, pg_dsn)
    failures = [ZeroDivisionError("division by zero in a sink")]

    def buggy(change: RowChange) -> None:
        if failures:
            raise failures.pop()

    caplog.set_level(logging.WARNING, logger="relay.pipeline")
    async with _running(pg_dsn, pg_dsn, sink_hook=buggy, max_backoff=0.5) as run:
        await asyncio.to_thread(_exec, pg_dsn, "insert into public.items values (1)")
        await _until(lambda: run.got == [1], 15, "the row, after the retry")
        stats = run.pipeline.stats
        assert stats.internal_errors == 1
        assert stats.as_dict()["internal_errors"] == 1  # what /health shows
        bug = [r for r in caplog.records if "internal error" in r.getMessage()]
        assert len(bug) == 1 and bug[0].levelno == logging.ERROR
        assert bug[0].exc_info is not None and bug[0].exc_info[0] is ZeroDivisionError
        await asyncio.sleep(0.5)
        assert run.got == [1]  # handed off once: the failed transaction was not confirmed


async def test_default_receive_deadline_outlasts_wal_sender_timeout(pg_dsn: str) -> None:
    """Unless given, the deadline is twice the server's wal_sender_timeout (60 s by default):
    a walsender replaying a large filtered-out transaction answers only every timeout/2."""
    await asyncio.to_thread(_setup, pg_dsn)
    stream = ReplicationStream(pg_dsn, "deadline", wal2json_options([]), temporary=True)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "select setting::int from pg_settings where name = 'wal_sender_timeout'"
        ).fetchone()
    assert row is not None
    await stream.start()
    try:
        assert stream.receive_timeout == max(30.0, 2 * row[0] / 1000)  # 120 s with the default
    finally:
        await stream.close()
