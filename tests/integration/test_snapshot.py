"""Snapshot on join (issue 18): a binding's rows at one consistent point, then its live changes.

Real Postgres, real relay, raw WebSockets (the PhoenixClient).  The alerts demo table is used
where policies matter (branch members, or company-wide rows).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.support.relay import PhoenixClient, running_relay, token

pytestmark = pytest.mark.pg


def _exec(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _alerts(dsn: str, n: int, branch: int | None = 1) -> list[int]:
    rows = _exec(
        dsn,
        "insert into alerts (branch_id, severity, kind, title) "
        "select %s, 'info', 'test', 'alert ' || g from generate_series(1, %s) g returning id",
        (branch, n),
    )
    return [int(r[0]) for r in rows]


def _binding(table: str = "alerts", **extra: Any) -> dict[str, Any]:
    return {"event": "*", "schema": "public", "table": table, "snapshot": True, **extra}


async def _snapshot(
    c: PhoenixClient, channel: str, bindings: list[dict[str, Any]], tok: str | None = None, **config: Any
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Join with snapshot bindings: (join reply, frames up to the last marker or error, markers)."""
    reply = await c.join(channel, bindings, access_token=tok, **config)
    assert reply["payload"]["status"] == "ok", reply
    wanted = sum(1 for b in bindings if b.get("snapshot"))
    frames: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    while len(ends) < wanted:
        m = await c.recv(15)
        frames.append(m)
        p = m["payload"]
        if m["event"] == "system" and str(p.get("code", "")).startswith("snapshot_"):
            ends.append(p)
    return reply, frames, ends


def _rows(frames: list[dict[str, Any]], kind: str = "SNAPSHOT") -> list[dict[str, Any]]:
    return [
        m["payload"]["data"]
        for m in frames
        if m["event"] == "postgres_changes" and m["payload"]["data"]["type"] == kind
    ]


async def test_rows_then_marker_then_live(pg_dsn: str) -> None:
    async with running_relay(pg_dsn) as relay:
        ids = await asyncio.to_thread(_alerts, pg_dsn, 5)
        async with PhoenixClient.connect(relay) as c:
            reply, frames, ends = await _snapshot(c, "snap", [_binding()])
            bid = reply["payload"]["response"]["postgres_changes"][0]["id"]
            rows = _rows(frames)
            assert sorted(r["record"]["id"] for r in rows) == ids
            assert all(r["commit_timestamp"] == rows[0]["commit_timestamp"] for r in rows)
            assert "position" not in rows[0] and "old_record" not in rows[0]
            end = ends[0]
            assert end["status"] == "ok" and end["code"] == "snapshot_complete"
            assert end["id"] == bid and end["rows"] == 5 and end["message"] == "snapshot complete: 5 rows"
            new = await asyncio.to_thread(_alerts, pg_dsn, 1)
            live = await c.recv_until(lambda m: m["event"] == "postgres_changes")
            data = live["payload"]["data"]
            assert data["type"] == "INSERT" and data["record"]["id"] == new[0]
            assert data["position"] > end["position"]
