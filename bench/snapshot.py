"""Snapshot on join: rows/s to one WebSocket client against Postgres reading the same rows.

Not part of CI (tests/integration/test_snapshot.py holds the assertions; this prints numbers).
Run from the repository root (``PYTHONPATH=.`` or an installed venv)::

    python bench/snapshot.py [--rows 100000]

On a throwaway local cluster with the demo schema: ``--rows`` alerts, then, alternating twice,

1. baseline: the relay's own snapshot query (``relay.core.snapshot.snapshot_query``: every
   column as its output function's text) fetched through a server-side cursor in pages of 500,
   in one ``REPEATABLE READ`` transaction, over asyncpg — what reading the rows costs Postgres
   and the driver alone;
2. the relay: a client joins with ``snapshot: true`` and reads until the marker (every row
   decoded like a wal2json INSERT, filtered, authorized, encoded, paced by the socket).

The ratio (relay rows/s over baseline rows/s) is what the relay's per-row work costs; absolute
numbers depend on the machine.  The client checks every id arrives once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
from tablerow import emit  # noqa: E402

from relay.core.snapshot import SnapshotColumn, snapshot_query  # noqa: E402
from relay.postgres.cluster import LocalCluster  # noqa: E402
from relay.service import RunningRelay  # noqa: E402
from tests.support.relay import PhoenixClient, running_relay  # noqa: E402


async def baseline(dsn: str, n: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select a.attname::text, a.atttypid::int8 from pg_attribute a "
            "where a.attrelid = 'public.alerts'::regclass and a.attnum > 0 and not a.attisdropped "
            "order by a.attnum"
        )
        columns = [SnapshotColumn(r[0], r[1], "") for r in rows]
        sql, args = snapshot_query("public", "alerts", columns, None)
        started = time.perf_counter()
        got = 0
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cur = await conn.cursor(sql, *args)
            while page := await cur.fetch(500):
                got += len(page)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    assert got == n, (got, n)
    return n / elapsed


async def relay_rate(relay: RunningRelay, n: int, ids: set[int]) -> float:
    binding = {"event": "*", "schema": "public", "table": "alerts", "snapshot": True}
    async with PhoenixClient.connect(relay) as c:
        c.keep = False  # 100,000 frames are not kept
        started = time.perf_counter()
        reply = await c.join("bench", [binding])
        assert reply["payload"]["status"] == "ok", reply
        seen: set[int] = set()
        while True:
            m = await c.recv(60)
            if m["event"] == "postgres_changes":
                seen.add(m["payload"]["data"]["record"]["id"])
            elif m["payload"].get("code") == "snapshot_complete":
                break
            elif str(m["payload"].get("code", "")).startswith("snapshot_"):
                raise AssertionError(m)
        elapsed = time.perf_counter() - started
    assert seen == ids and m["payload"]["rows"] == n, (len(seen), n)
    return n / elapsed


async def run(n: int) -> None:
    cluster = LocalCluster().start()
    try:
        dsn = cluster.dsn()
        async with running_relay(dsn, snapshot_max_rows=max(n, 1)) as relay:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    "insert into alerts (branch_id, severity, kind, title, details) "
                    "select 1 + g %% 3, 'info', 'bench', 'alert ' || g, '{\"n\": 1}' "
                    "from generate_series(1, %s) g",
                    (n,),
                )
                ids = {int(r[0]) for r in conn.execute("select id from alerts").fetchall()}
            await asyncio.sleep(1.0)  # let the stream decode the inserts first
            base, mine = [], []
            for _ in range(2):
                base.append(await baseline(dsn, n))
                mine.append(await relay_rate(relay, n, ids))
            b, r = max(base), max(mine)
            print(f"baseline (cursor fetch, output-function text): {b:,.0f} rows/s (runs: {base})")
            print(f"relay snapshot to one client:                 {r:,.0f} rows/s (runs: {mine})")
            emit("snapshot", f"{r:,.0f} rows/s", f"cursor fetch {b:,.0f} rows/s", r / b, "-", rows=n)
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows in the table")
    args = ap.parse_args(argv)
    asyncio.run(run(args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
